"""Tasks: OmniModel (encoders + fusion + MoE decoder) and the LightningModules that train it per task (VQA,
captioning, structured JSON), their metrics, inference rows and scale-out strategies."""

from omnifuse.tasks.caption import CaptionTask
from omnifuse.tasks.config import GenerationConfig, OptimizerConfig
from omnifuse.tasks.model import FusionConfig, OmniModel
from omnifuse.tasks.module import OmniTask
from omnifuse.tasks.speech_ctc import SpeechCTCConfig
from omnifuse.tasks.structured_task import StructuredTask
from omnifuse.tasks.vqa import VQATask

__all__ = ["CaptionTask", "FusionConfig", "GenerationConfig", "OmniModel", "OmniTask", "OptimizerConfig",
    "SpeechCTCConfig", "StructuredTask", "VQATask"]
