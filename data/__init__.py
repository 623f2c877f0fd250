"""Data layer: records (JSONL manifests) -> validated samples -> MultimodalBatch. Imports no model code."""

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.tokenizer import TASKS, ByteTokenizer

__all__ = ["MODALITIES", "TASKS", "ByteTokenizer", "MultimodalBatch"]
