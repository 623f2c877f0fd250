"""Cross-modal attention block: tokens attend to the other modalities, then to their own modality, then an FFN.

All modalities live in one concatenated sequence; which key each query may see is decided by a boolean mask
(B, 1, N, N), so one SDPA call serves every modality pair. Masked keys get exactly zero weight, so padding and
absent modalities cannot change any valid output. The attention and FFN modules are the encoders' (``MaskedAttention``, ``FeedForward``).

With ``window`` (long inputs, e.g. minutes of audio), no (N, N) mask is built: each modality block attends to the
*other* blocks' keys in one SDPA call per block (linear in a long block when the others are short), and to its *own*
block within ``window`` positions plus the null token (``local_global_attention``, linear); the null token's rows
are computed as in the dense form. The same keys as the dense masks, restricted to the band: a window that covers
every block gives the dense result (tested), and a plain per-query loop does for small windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.encoders.layers import FeedForward, MaskedAttention, local_global_attention


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

    def forward(
        self,
        x: torch.Tensor,
        cross_mask: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
        *,
        lengths: list[int] | None = None,
        valid: torch.Tensor | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """``x`` (B, N, D); masks (B, 1, N, N) bool (see ``build_attention_masks``). Or, with ``window``, the same block
        without (N, N) masks: ``x`` is the null token followed by one block per modality of ``lengths`` tokens,
        ``valid`` (B, N) bool, own-block attention limited to ``window`` positions. (One ``forward`` for both, so
        wrappers such as FSDP units and activation checkpointing see every call.)"""
        if window is None:
            x = x + self.drop(self.cross_attn(self.norm_cross(x), cross_mask))
            x = x + self.drop(self.self_attn(self.norm_self(x), self_mask))
        else:
            x = x + self.drop(_blockwise(self.cross_attn, self.norm_cross(x), lengths, valid, own=False))
            x = x + self.drop(_blockwise(self.self_attn, self.norm_self(x), lengths, valid, own=True, window=window))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


def _blockwise(
    attn: MaskedAttention, x: torch.Tensor, lengths: list[int], valid: torch.Tensor, own: bool, window: int = 0
) -> torch.Tensor:
    """``attn`` (its projections) with the keys of ``build_attention_masks`` taken block by block: ``own=False``, the
    cross mask (other blocks + null); ``own=True``, the self mask (own block within ``window`` + null)."""
    B, N, D = x.shape
    h = attn.n_heads
    q, k, v = attn.qkv(x).view(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, hs)
    dropout = attn.dropout if attn.training else 0.0
    y = torch.empty_like(q)
    # The null token (position 0): its own block is itself; the other blocks are every other (valid) key.
    if own:  # one key: its value (with the dense form's attention dropout in training)
        y[:, :, :1] = F.scaled_dot_product_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], dropout_p=dropout)
    else:
        y[:, :, :1] = F.scaled_dot_product_attention(
            q[:, :, :1], k, v, attn_mask=valid[:, None, None], dropout_p=dropout
        )
    start = 1
    for n in lengths:
        if n == 0:
            continue
        block = slice(start, start + n)
        if own:  # [null, block] with the null token global: every query sees it, and its own block in the band
            kk, vv = torch.cat([k[:, :, :1], k[:, :, block]], 2), torch.cat([v[:, :, :1], v[:, :, block]], 2)
            qq = torch.cat([q[:, :, :1], q[:, :, block]], 2)
            key_mask = torch.cat([valid[:, :1], valid[:, block]], 1)  # (B, 1 + n)
            y[:, :, block] = local_global_attention(qq, kk, vv, key_mask, window, n_global=1, dropout=dropout)[:, :, 1:]
        else:  # every key outside the block (the null token included), gathered: (n, N - n) scores, not (n, N)
            kk = torch.cat([k[:, :, :start], k[:, :, start + n :]], 2)
            vv = torch.cat([v[:, :, :start], v[:, :, start + n :]], 2)
            mask = torch.cat([valid[:, :start], valid[:, start + n :]], 1)[:, None, None]  # (B, 1, 1, N - n)
            y[:, :, block] = F.scaled_dot_product_attention(q[:, :, block], kk, vv, attn_mask=mask, dropout_p=dropout)
        start += n
    return attn.out(y.transpose(1, 2).reshape(B, N, D))


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
