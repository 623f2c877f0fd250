"""Per-modality input embedding: project encoder tokens to d_model, add learned modality-type and position embeddings."""

from __future__ import annotations

import torch
from torch import nn


class TooManyTokensError(ValueError):
    """More tokens of one modality than the fusion has learned positions for: a size limit of the model, which the
    batch job reports for the record instead of stopping."""


class ModalityEmbedding(nn.Module):
    """Tokens (B, N, in_dim) of one modality -> (B, N, d_model): ``Linear(LN(x)) + type + pos[:N]``.

    The input LayerNorm evens out the very different scales of encoder outputs (CNN maps vs transformer tokens).
    Positions are learned per modality (an image grid and a time axis mean different things), up to
    ``max_positions`` tokens. ``input_norm=False``: ``Linear(x)`` without the LayerNorm, for tokens whose size is
    the message (see ``ModalityFusion(raw_modalities=...)``).
    """

    def __init__(self, in_dim: int, d_model: int, max_positions: int = 1024, input_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if input_norm else nn.Identity()
        self.proj = nn.Linear(in_dim, d_model)
        self.type_embedding = nn.Parameter(torch.randn(d_model) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(max_positions, d_model) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.pos_embedding.shape[0]:
            raise TooManyTokensError(
                f"{n} tokens exceed max_positions={self.pos_embedding.shape[0]}; raise max_positions"
            )
        return self.proj(self.norm(tokens)) + self.type_embedding + self.pos_embedding[:n]  # (B, N, d_model)
