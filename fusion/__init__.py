"""Cross-modal attention and dynamic modality weighting -> FusedMemory.

:class:`ModalityFusion` projects each modality to ``d_model`` (learned modality-type and position embeddings), runs
cross-modal attention blocks (each modality attends to the others, then to itself), gates the modalities per sample
(:class:`ModalityGate`, weight exactly 0 for an absent modality) and returns
``FusedMemory(tokens, mask, modality_weights)``.
"""

from omnifuse.fusion.attention import CrossModalBlock, MaskedAttention, build_attention_masks
from omnifuse.fusion.embedding import ModalityEmbedding
from omnifuse.fusion.fusion import ModalityFusion
from omnifuse.fusion.gate import ModalityGate, modality_dropout
from omnifuse.fusion.types import FusedMemory

__all__ = [
    "CrossModalBlock",
    "FusedMemory",
    "MaskedAttention",
    "ModalityEmbedding",
    "ModalityFusion",
    "ModalityGate",
    "build_attention_masks",
    "modality_dropout",
]
