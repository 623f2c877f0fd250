"""Cross-modal attention and dynamic modality weighting -> FusedMemory.

:class:`ModalityFusion` projects each modality to ``d_model`` (learned modality-type and position embeddings), runs
cross-modal attention blocks (each modality attends to the others, then to itself), gates the modalities per sample
(:class:`ModalityGate`, weight exactly 0 for an absent modality) and returns
``FusedMemory(tokens, mask, modality_weights)``. With ``vision_film``, its :class:`QuestionFilm` also computes
per-stage FiLM parameters from the question's tokens (text or speech) for the image encoder, which is then run
conditioned on them (question-conditioned vision; ``OmniModel.encode_modalities`` does the ordering).
"""

from omnifuse.fusion.attention import CrossModalBlock, MaskedAttention, build_attention_masks
from omnifuse.fusion.embedding import ModalityEmbedding
from omnifuse.fusion.film import QuestionFilm
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
    "QuestionFilm",
    "build_attention_masks",
    "modality_dropout",
]
