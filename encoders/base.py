"""The one type every encoder returns."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenSequence(NamedTuple):
    """Encoder output: ``tokens`` (B, N, D) and ``mask`` (B, N) bool, True = real token."""

    tokens: torch.Tensor
    mask: torch.Tensor
