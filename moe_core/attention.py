"""Attention: RoPE, causal self-attention with a KV cache, cross-attention to the encoder memory.

Both attentions go through ``F.scaled_dot_product_attention``. Boolean masks follow SDPA: ``True`` = this
query may attend to this key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SequenceTooLongError(ValueError):
    """A sequence longer than the decoder holds (positions past ``max_seq_len``, a full KV cache): a size limit of the
    model, which the batch job reports for the record instead of stopping."""


class RotaryEmbedding(nn.Module):
    """Rotary position embedding tables (``cos``/``sin``, fp32) for positions ``0 .. max_seq_len-1``."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hs/2,)
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (L, hs/2)
        self.register_buffer("cos", freqs.cos().float(), persistent=False)
        self.register_buffer("sin", freqs.sin().float(), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # keep the tables in fp32 under .half()/.bfloat16()
        self.cos.data, self.sin.data = self.cos.data.float(), self.sin.data.float()
        return self

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``positions: (B, T)`` long -> ``cos, sin: (B, 1, T, hs/2)``."""
        if positions.numel() and int(positions.max()) >= self.max_seq_len:
            raise SequenceTooLongError(f"position {int(positions.max())} exceeds max_seq_len={self.max_seq_len}")
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x: (B, H, T, hs)`` (half-split convention) by the angles in ``cos, sin: (B, 1, T, hs/2)``."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, hs/2) each
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, hs)
    return out.to(x.dtype)


class KVCache:
    """Self-attention keys/values of every layer, preallocated to ``max_len`` slots.

    All rows advance together (prompts of different lengths are left-padded), so one ``length`` counts
    the filled slots; ``key_valid: (B, max_len)`` says which slots hold real tokens. The K/V buffers are
    allocated on the first append, in the dtype the attention produces (e.g. bf16 under autocast).
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int, device) -> None:
        self.shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k: Tensor | None = None  # (L, B, H, max_len, hs)
        self.v: Tensor | None = None
        self.key_valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.max_len = max_len

    def append(
        self, layer: int, k: Tensor, v: Tensor, rows: Tensor | None = None, fetch: bool = True
    ) -> tuple[Tensor, Tensor] | None:
        """Write ``k, v: (B, H, T, hs)`` after the filled slots; return all keys/values ``(B, H, length+T, hs)``.
        ``rows`` (early exit): ``k, v`` hold only those rows of the batch, and only theirs are written and returned
        (``fetch=False``: written only, for a layer those rows skip; gathering their keys would be a wasted copy)."""
        t = k.size(2)
        end = self.length + t
        if end > self.max_len:
            raise SequenceTooLongError(f"KV cache full: {end} > {self.max_len} slots")
        if self.k is None:
            self.k = k.new_zeros(self.shape)
            self.v = v.new_zeros(self.shape)
        if rows is not None:
            self.k[layer][rows, :, self.length : end] = k
            self.v[layer][rows, :, self.length : end] = v
            return (self.k[layer][rows, :, :end], self.v[layer][rows, :, :end]) if fetch else None
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        """Mark ``t`` more slots as filled (after every layer has appended)."""
        self.length += t

    def reorder(self, rows: Tensor) -> None:
        """Keep rows ``rows: (B,)`` (beam search: each new beam continues a parent beam)."""
        if self.k is not None:
            self.k = self.k.index_select(1, rows)
            self.v = self.v.index_select(1, rows)
        self.key_valid = self.key_valid.index_select(0, rows)


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE; appends to a :class:`KVCache` when one is given."""

    def __init__(self, d_model: int, n_heads: int, layer_idx: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.layer_idx = n_heads, d_model // n_heads, layer_idx
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        cache: KVCache | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """``x: (B, T, d)``; ``mask: (B, 1, T, S)`` bool or ``None`` for plain causal attention over ``T``; ``rows``:
        the cache rows ``x`` holds (early exit), None for all."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, hs) each
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(self.layer_idx, k, v, rows)  # (B, H, S, hs), S = cached + T
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, d)

    def fill_cache(self, x: Tensor, rope: tuple[Tensor, Tensor], cache: KVCache, rows: Tensor) -> None:
        """Early exit: write the keys/values of ``x: (R, T, d)`` (the exited tokens' states, normed) into this layer's
        cache slots of ``rows``, without attending (those tokens skip the layer)."""
        r, t, d = x.shape
        _, k, v = self.qkv(x).view(r, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (R, H, T, hs)
        cache.append(self.layer_idx, apply_rope(k, *rope), v, rows, fetch=False)


class CrossAttention(nn.Module):
    """Multi-head attention from the decoder stream to the encoder memory (no positions, no causality)."""

    def __init__(self, d_model: int, d_memory: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_memory, 2 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """``memory: (B, N, d_memory)`` -> ``k, v: (B, H, N, hs)``; computed once per generation."""
        b, n, _ = memory.shape
        k, v = self.kv(memory).view(b, n, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor, has_memory: Tensor) -> Tensor:
        """``x: (B, T, d)``; ``mask: (B, 1, 1, N)`` bool; ``has_memory: (B, 1, 1)`` zeroes rows without memory."""
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, dropout_p=p)  # (B, H, T, hs)
        return self.proj(y.transpose(1, 2).reshape(b, t, d)) * has_memory.to(x.dtype)  # (B, T, d)


def memory_masks(memory_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``memory_mask: (B, N)`` (True = attend) -> SDPA mask ``(B, 1, 1, N)`` and ``has_memory: (B, 1, 1)`` bool.

    A sample without any valid memory token would give an all-masked softmax (NaN); it attends to all
    slots instead and its cross-attention output is multiplied by ``has_memory = 0``.
    """
    has = memory_mask.any(dim=-1)  # (B,)
    mask = memory_mask | ~has.unsqueeze(-1)  # (B, N)
    return mask[:, None, None, :], has[:, None, None]


def self_attention_mask(key_valid: Tensor, t: int) -> Tensor:
    """Causal mask for the last ``t`` of ``S`` slots: ``key_valid: (B, S)`` -> ``(B, 1, t, S)`` bool.

    Query ``i`` sits in slot ``S - t + i`` and sees the valid slots up to its own; it always sees itself,
    so a padding query never has an all-masked row (its output is junk that no real token attends to).
    """
    s = key_valid.size(1)
    q_slot = torch.arange(s - t, s, device=key_valid.device).unsqueeze(-1)  # (t, 1)
    k_slot = torch.arange(s, device=key_valid.device).unsqueeze(0)  # (1, S)
    causal = k_slot <= q_slot  # (t, S)
    mask = (causal & key_valid.unsqueeze(1)) | (k_slot == q_slot)  # (B, t, S)
    return mask.unsqueeze(1)
