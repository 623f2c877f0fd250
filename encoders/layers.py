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

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, window: int | None = None, n_global: int = 0
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if window is not None and window < 1:
            raise ValueError(f"window must be None or >= 1, got {window}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.window, self.n_global = window, n_global  # local + global attention (local_global_attention)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, D); ``mask`` (B, N) key mask or (B, 1, N, N) bool -> (B, N, D)."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, hs)
        dropout = self.dropout if self.training else 0.0
        if self.window is not None:
            if mask.dim() != 2:
                raise ValueError("windowed attention takes a key mask (B, N), not a full attention mask")
            y = local_global_attention(q, k, v, mask, self.window, self.n_global, dropout)
        else:
            if mask.dim() == 2:
                mask = mask[:, None, None, :]  # (B, 1, 1, N): broadcast over heads and queries
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, h, N, hs)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


def local_global_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    window: int,
    n_global: int = 0,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Sliding-window attention with global tokens, in memory linear in the sequence length.

    ``q, k, v`` (B, h, N, hs); ``key_mask`` (B, N) bool (True: a real token). The first ``n_global`` positions are
    global: they attend to every key and every query attends to them. Every other query ``i`` attends to the
    non-global keys ``j`` with ``|i - j| <= window``. Padded keys are never attended to; a query with no real key
    in reach attends to all of its reach (finite garbage: callers zero padded rows, as for full attention).

    The non-global part is cut into chunks of ``window`` queries; chunk ``c`` sees the globals and chunks
    ``c - 1, c, c + 1`` (which hold every key within ``window``), masked to the exact band: (B, h, C, w, g + 3w)
    scores instead of (B, h, N, N). A window that covers the sequence gives full attention's result exactly
    (tested), as does a plain per-query loop for small windows.
    """
    B, h, N, hs = q.shape
    g = min(n_global, N)
    out = torch.empty_like(q)
    if g:  # global queries: full rows
        gmask = key_mask[:, None, None, :]  # (B, 1, 1, N)
        gmask = gmask | ~gmask.any(dim=-1, keepdim=True)
        out[:, :, :g] = F.scaled_dot_product_attention(q[:, :, :g], k, v, attn_mask=gmask, dropout_p=dropout)
    L = N - g
    if L == 0:
        return out
    w = min(window, L)  # chunk size: a window wider than the sequence needs one chunk
    C = -(-L // w)  # chunks
    pad = C * w - L

    def chunks(t: torch.Tensor) -> torch.Tensor:  # (B, h, L, hs) -> (B, h, C, w, hs), zero-padded at the end
        return F.pad(t, (0, 0, 0, pad)).view(B, h, C, w, hs)

    def neighbours(t: torch.Tensor) -> torch.Tensor:  # (B, h, C, w, ...) -> (B, h, C, 3w, ...): chunks c-1, c, c+1
        padded = F.pad(t, (0, 0) * (t.dim() - 4) + (0, 0, 1, 1))  # one empty chunk on each side
        return torch.cat([padded[:, :, :-2], padded[:, :, 1:-1], padded[:, :, 2:]], dim=3)

    ql, kl, vl = chunks(q[:, :, g:]), chunks(k[:, :, g:]), chunks(v[:, :, g:])
    keys = neighbours(kl)  # (B, h, C, 3w, hs)
    values = neighbours(vl)
    local_valid = F.pad(key_mask[:, g:], (0, pad)).view(B, 1, C, w, 1)  # (B, 1, C, w, 1) key validity per chunk
    valid = neighbours(local_valid).transpose(-1, -2)  # (B, 1, C, 1, 3w)
    qi = torch.arange(w, device=q.device)[:, None]  # query offset inside its chunk
    kj = torch.arange(3 * w, device=q.device)[None, :] - w  # key offset relative to the chunk start
    band = (kj - qi).abs() <= window  # (w, 3w)
    mask = band & valid  # (B, 1, C, w, 3w)
    if g:
        keys = torch.cat([k[:, :, None, :g].expand(B, h, C, g, hs), keys], dim=3)
        values = torch.cat([v[:, :, None, :g].expand(B, h, C, g, hs), values], dim=3)
        gvalid = key_mask[:, None, None, None, :g].expand(B, 1, C, w, g)
        mask = torch.cat([gvalid, mask.expand(B, 1, C, w, 3 * w)], dim=-1)
    mask = mask | ~mask.any(dim=-1, keepdim=True)  # a query with nothing in reach: finite garbage, zeroed later
    y = F.scaled_dot_product_attention(ql, keys, values, attn_mask=mask, dropout_p=dropout)  # (B, h, C, w, hs)
    out[:, :, g:] = y.reshape(B, h, C * w, hs)[:, :, :L]
    return out


class FeedForward(nn.Sequential):
    """The blocks' FFN: ``Linear(d, mult*d) -> GELU -> Dropout -> Linear(mult*d, d)`` (state-dict names ``0``, ``3``)."""

    def __init__(self, d_model: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * d_model, d_model)
        )


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + FFN(LN(x))`` with GELU."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ffn_mult: int = 4,
        dropout: float = 0.0,
        window: int | None = None,
        n_global: int = 0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MaskedAttention(d_model, n_heads, dropout, window, n_global)
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
