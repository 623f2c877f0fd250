"""Cross-modal attention and dynamic modality weighting -> FusedMemory."""

from omnifuse.fusion.types import FusedMemory

__all__ = ["FusedMemory"]
