"""Cross-modal attention block: tokens attend to the other modalities, then to their own modality, then an FFN.

All modalities live in one concatenated sequence; which key each query may see is decided by a boolean mask
(B, 1, N, N), so one SDPA call serves every modality pair. Masked keys get exactly zero weight, so padding and
absent modalities cannot change any valid output. The attention and FFN modules are the encoders' (``MaskedAttention``, ``FeedForward``).
"""

from __future__ import annotations

import torch
from torch import nn

from omnifuse.encoders.layers import FeedForward, MaskedAttention


class CrossModalBlock(nn.Module):
    """Pre-LN: ``x += cross_attn(LN(x))`` (other modalities) ``x += self_attn(LN(x))`` (own modality) ``x += FFN``."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_attn = MaskedAttention(d_model, n_heads, dropout)
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = MaskedAttention(d_model, n_heads, dropout)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cross_mask: torch.Tensor, self_mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, D); masks (B, 1, N, N) bool (see ``build_attention_masks``)."""
        x = x + self.drop(self.cross_attn(self.norm_cross(x), cross_mask))
        x = x + self.drop(self.self_attn(self.norm_self(x), self_mask))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


def build_attention_masks(segment: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross- and self-attention masks (B, 1, N, N) for a concatenated multimodal sequence.

    ``segment`` (N,) long: modality index of each position, -1 for the null token(s); ``valid`` (B, N) bool: key
    may be attended (real token of a present modality; null tokens always True). Cross: keys of *other* modalities.
    Self: keys of the *same* modality. Null keys are visible to every query in both, so no row is ever empty (no
    NaN from a softmax over nothing) and a modality with no partner still has a learned "nothing here" to attend to.
    """
    null_key = (segment < 0)[None, None, :]  # (1, 1, N)
    same = segment[:, None] == segment[None, :]  # (N, N) query x key
    keys = valid[:, None, :]  # (B, 1, N)
    cross = ((~same)[None] & keys) | null_key  # (B, N, N)
    self_ = (same[None] & keys) | null_key  # (B, N, N)
    return cross[:, None], self_[:, None]  # (B, 1, N, N)
