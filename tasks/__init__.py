"""Tasks: OmniModel, LightningModules, metrics, constrained decoding, prediction writer, the omnifuse CLI."""

from omnifuse.tasks.caption import CaptionTask
from omnifuse.tasks.model import FusionConfig, OmniModel
from omnifuse.tasks.module import GenerationConfig, OmniTask, OptimizerConfig
from omnifuse.tasks.vqa import VQATask

__all__ = ["CaptionTask", "FusionConfig", "GenerationConfig", "OmniModel", "OmniTask", "OptimizerConfig", "VQATask"]
