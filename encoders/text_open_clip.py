"""Text encoder over the text tower of an open_clip model; byte ids are decoded and re-tokenised with its BPE."""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from omnifuse.encoders.base import Encoder, TokenSequence
from omnifuse.encoders.open_clip_utils import create_open_clip, with_tower_cfg
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.utils import freeze_, safe_key_mask, zero_masked

_TOWER_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final")


def decode_bytes(ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Byte-tokenizer ids (B, T) -> strings: ids < 256 under the mask are UTF-8 bytes; others (specials) are skipped."""
    keep = mask & (ids >= 0) & (ids < 256)
    return [bytes(row[k].tolist()).decode("utf-8", errors="replace") for row, k in zip(ids.cpu(), keep.cpu())]


@register_encoder("open_clip_text")
class OpenClipTextEncoder(Encoder):
    """Byte ids (B, T) + mask -> the open_clip text tower's per-token features (after ``ln_final``, no projection).

    The byte ids are decoded to text and re-tokenised with the model's own tokenizer (CLIP BPE, shipped inside
    open_clip, so offline; models whose tokenizer lives on the HF hub are not supported offline). Output tokens are
    ``[SOT] text [EOT]`` (cut to ``context_length``), trimmed to the longest sequence in the batch; a sample with an
    empty mask (no text) gets no valid token. With the causal CLIP tower, a token never sees later positions, so
    trimming is exact and tokens are independent of the batch.

    Args:
        model_name: any ``open_clip.list_models()`` name with a standard ``TextTransformer`` tower.
        pretrained: None or a local full-CLIP checkpoint file; only the text tower is kept.
        freeze: no gradients to the tower (kept in eval mode).
        text_cfg: overrides of the text tower's config (``width``, ``layers``, ``heads``, ``context_length`` ...), e.g.
            a small random-init tower; a plain dict so that YAML configs can set it.
        model_kwargs: forwarded to ``open_clip.create_model``.
    """

    modality = "text"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        freeze: bool = False,
        text_cfg: dict | None = None,
        **model_kwargs,
    ) -> None:
        super().__init__()
        model = create_open_clip(model_name, pretrained, **with_tower_cfg(model_name, model_kwargs, text_cfg=text_cfg))
        tower = getattr(model, "text", model)  # CustomTextCLIP keeps the tower in .text; CLIP holds its parts
        if type(tower).__name__ not in ("TextTransformer", "CLIP") or getattr(tower, "cls_emb", None) is not None:
            raise NotImplementedError(f"{model_name}: only standard open_clip TextTransformer towers are supported")
        self.tower = nn.Module()  # token_embedding, positional_embedding, transformer, ln_final
        for name in _TOWER_PARTS:
            setattr(self.tower, name, getattr(tower, name))
        self.register_buffer("causal_mask", getattr(tower, "attn_mask", None), persistent=False)  # (ctx, ctx) or None
        self.n_heads = int(self.tower.transformer.resblocks[0].attn.num_heads)
        self.context_length = int(self.tower.positional_embedding.shape[0])
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=self.context_length)
        self.eot_id = int(self.tokenizer.eot_token_id)
        self.out_dim = int(self.tower.positional_embedding.shape[1])
        del model, tower
        self.frozen = freeze
        if freeze:
            freeze_(self.tower)

    def train(self, mode: bool = True) -> OpenClipTextEncoder:
        super().train(mode)
        if self.frozen:
            self.tower.eval()
        return self

    def num_tokens(self, text: str | None = None) -> int:
        """Tokens for ``text``: its BPE length + 2 (SOT/EOT), at most ``context_length``; without text, the maximum."""
        if text is None:
            return self.context_length
        ids = self.tokenizer([text])[0]
        return int((ids == self.eot_id).int().argmax()) + 1

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TokenSequence:
        """Byte ids (B, T) + mask (B, T) -> TokenSequence (B, L, out_dim), L = longest re-tokenised text in the batch."""
        device = self.tower.positional_embedding.device
        bpe = self.tokenizer(decode_bytes(ids, mask)).to(device)  # (B, ctx), [SOT] ... [EOT] 0 0 ...
        lengths = (bpe == self.eot_id).int().argmax(dim=-1) + 1  # (B,) up to and including EOT
        lengths = torch.where(mask.any(dim=-1).to(device), lengths, 0)  # no text -> no valid token
        L = max(int(lengths.max()), 1) if len(lengths) else 1
        bpe = bpe[:, :L]  # (B, L)
        out_mask = torch.arange(L, device=device)[None, :] < lengths[:, None]  # (B, L)
        x = self.tower.token_embedding(bpe) + self.tower.positional_embedding[:L]  # (B, L, D)
        if self.causal_mask is not None:
            attn_mask = self.causal_mask[:L, :L].to(x.dtype)  # (L, L) additive; causal => padding never seen
        else:
            keys = safe_key_mask(out_mask)  # (B, L)
            attn_mask = torch.zeros(keys.shape, dtype=x.dtype, device=device).masked_fill(~keys, -torch.inf)
            attn_mask = attn_mask[:, None, :].expand(-1, L, -1).repeat_interleave(self.n_heads, 0)  # (B*h, L, L)
        x = self.tower.transformer(x, attn_mask=attn_mask)
        x = self.tower.ln_final(x)  # (B, L, D)
        return TokenSequence(zero_masked(x, out_mask), out_mask)
