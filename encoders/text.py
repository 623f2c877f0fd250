"""Native text encoder: a bidirectional transformer over byte-tokenizer ids."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from omnifuse.encoders.base import Encoder, TokenSequence
from omnifuse.encoders.layers import TransformerBlock
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.utils import safe_key_mask, zero_masked


@register_encoder("text")
class TextEncoder(Encoder):
    """Ids (B, T) + mask (B, T) -> tokens (B, min(T, max_len), d_model), one token per input id.

    Defaults match the byte tokenizer (ids 0..255 = UTF-8 bytes, then ``<pad> <bos> <eos>`` and task tokens:
    vocab 262, pad 256). Ids under the mask are replaced by ``pad_id`` before the embedding, so padding may hold
    anything. Sequences longer than ``max_len`` are cut to their first ``max_len`` ids (with a warning).
    """

    modality = "text"

    def __init__(
        self,
        vocab_size: int = 262,
        d_model: int = 192,
        n_layers: int = 2,
        n_heads: int = 4,
        max_len: int = 512,
        pad_id: int = 256,
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([TransformerBlock(d_model, n_heads, ffn_mult, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def num_tokens(self, seq_len: int) -> int:
        """Tokens for inputs of ``seq_len`` ids: ``min(seq_len, max_len)``."""
        return min(seq_len, self.max_len)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TokenSequence:
        """``ids`` (B, T) long, ``mask`` (B, T) bool -> TokenSequence (B, T, out_dim), tokens 0 under the mask."""
        if ids.shape[1] > self.max_len:
            warnings.warn(f"text of {ids.shape[1]} ids cut to max_len={self.max_len}", stacklevel=2)
            ids, mask = ids[:, : self.max_len], mask[:, : self.max_len]
        ids = torch.where(mask, ids, self.pad_id)  # (B, T)
        x = self.drop(self.embed(ids) + self.pos[: ids.shape[1]])  # (B, T, D)
        key_mask = safe_key_mask(mask)
        for block in self.blocks:
            x = block(x, key_mask)
        return TokenSequence(zero_masked(self.norm(x), mask), mask)
