"""Data layer: records (JSONL manifests) -> validated samples -> MultimodalBatch. Imports no model code."""

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.collate import Collator, serialize_target
from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.loaders import LoadError, decode_image, load_audio, load_image
from omnifuse.data.records import Record, RecordError, parse_record, read_manifest
from omnifuse.data.sample import Sample
from omnifuse.data.tokenizer import TASKS, ByteTokenizer

__all__ = [
    "MODALITIES",
    "TASKS",
    "ByteTokenizer",
    "Collator",
    "LoadError",
    "ManifestDataset",
    "MultimodalBatch",
    "MultimodalDataModule",
    "Record",
    "RecordError",
    "Sample",
    "decode_image",
    "load_audio",
    "load_image",
    "parse_record",
    "read_manifest",
    "serialize_target",
]
