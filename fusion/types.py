"""Output type of the fusion layer: the memory the decoder cross-attends to."""

from __future__ import annotations

from typing import NamedTuple

import torch


class FusedMemory(NamedTuple):
    """``tokens`` (B, N, d_model), ``mask`` (B, N) bool (True = attendable), ``modality_weights`` (B, M).

    Column m of ``modality_weights`` is ``omnifuse.data.MODALITIES[m]``; an absent modality has weight exactly 0 and
    each row sums to 1 over the modalities the sample has.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    modality_weights: torch.Tensor
