"""Transformer building blocks for the native encoders (pre-LayerNorm, SDPA with key padding masks)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MaskedAttention(nn.Module):
    """Multi-head attention over one sequence with a boolean mask (True = the query may attend to the key).

    The mask is either a key mask (B, N), the same for every query (padding), or a full mask broadcastable to
    (B, heads, N, N), e.g. the fusion's cross-/self-modality masks. Every query row needs at least one True key
    (see ``utils.safe_key_mask``), or SDPA returns NaN for it. The encoders' blocks and the fusion's blocks share
    this one module, so their state-dict names (``qkv``, ``out``) are the same.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, D); ``mask`` (B, N) key mask or (B, 1, N, N) bool -> (B, N, D)."""
        B, N, D = x.shape
        if mask.dim() == 2:
            mask = mask[:, None, None, :]  # (B, 1, 1, N): broadcast over heads and queries
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, N, hs)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class FeedForward(nn.Sequential):
    """The blocks' FFN: ``Linear(d, mult*d) -> GELU -> Dropout -> Linear(mult*d, d)`` (state-dict names ``0``, ``3``)."""

    def __init__(self, d_model: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * d_model, d_model)
        )


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + FFN(LN(x))`` with GELU."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MaskedAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, D); ``key_mask`` (B, N) bool with at least one True per row (see ``utils.safe_key_mask``)."""
        x = x + self.drop(self.attn(self.norm1(x), key_mask))
        return x + self.drop(self.ffn(self.norm2(x)))


def sinusoidal_positions(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed sine/cosine position table (n, dim) as in "Attention Is All You Need" (any length, no parameters)."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]  # (n, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table
