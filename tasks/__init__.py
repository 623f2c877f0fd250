"""Tasks: OmniModel, LightningModules, metrics, constrained decoding, prediction writer, the omnifuse CLI."""

from omnifuse.tasks.caption import CaptionTask
from omnifuse.tasks.config import GenerationConfig, OptimizerConfig
from omnifuse.tasks.model import FusionConfig, OmniModel
from omnifuse.tasks.module import OmniTask
from omnifuse.tasks.predict import Predictor
from omnifuse.tasks.speech_ctc import SpeechCTCConfig
from omnifuse.tasks.structured_task import StructuredTask
from omnifuse.tasks.vqa import VQATask

__all__ = ["CaptionTask", "FusionConfig", "GenerationConfig", "OmniModel", "OmniTask", "OptimizerConfig", "Predictor",
    "SpeechCTCConfig", "StructuredTask", "VQATask"]
