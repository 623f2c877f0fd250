"""Image encoder over the visual tower of an open_clip model (ViT, ModifiedResNet or timm trunk), tokens out."""

from __future__ import annotations

import torch
from torch import nn

from omnifuse.encoders.base import Encoder, TokenSequence
from omnifuse.encoders.open_clip_utils import create_open_clip, with_tower_cfg
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.utils import ImageNormalizer, as_2tuple, freeze_


def _strip_unused(visual: nn.Module, feature_level: int) -> bool:
    """Remove the parts of ``visual`` the token path never runs (pooling, projection, later stages).

    Returns whether ``forward_intermediates`` should apply the tower's final norm to the tokens.
    """
    kind = type(visual).__name__
    if kind == "VisionTransformer":
        visual.prune_intermediate_layers(indices=[feature_level], prune_norm=False, prune_head=True)
        has_attn_pool = visual.attn_pool is not None
        visual.attn_pool = None
        visual.attn_pool_contrastive = None
        return not has_attn_pool  # with an attention pooler, ln_post has the pooler's width, not the tokens'
    if kind == "ModifiedResNet":
        stages = ["stem", "layer1", "layer2", "layer3", "layer4"]
        last = stages[feature_level]
        for name in stages[stages.index(last) + 1 :]:
            setattr(visual, name, nn.Identity())
        visual.attnpool = None
        return False
    if kind == "TimmModel":
        visual.trunk.prune_intermediate_layers(indices=[feature_level], prune_norm=False, prune_head=True)
        visual.head = nn.Identity()
        return True
    raise NotImplementedError(f"unsupported open_clip visual tower {kind}")


@register_encoder("open_clip_image")
class OpenClipImageEncoder(Encoder):
    """Images (B, 3, H, W) in [0, 1] -> the visual tower's patch / feature-map tokens (before pooling/projection).

    Args:
        model_name: any ``open_clip.list_models()`` name.
        pretrained: None (random init) or a local full-CLIP checkpoint file; only the visual tower is kept.
        freeze: no gradients to the tower, which stays in eval mode.
        img_size: build the tower for this input size (``force_image_size``); default: the model config's size.
        feature_level: ``forward_intermediates`` level (-1 = last block / stage).
        vision_cfg: overrides of the visual tower's config (``width``, ``layers``, ``patch_size`` ...), e.g. a small
            random-init tower; a plain dict so that YAML configs can set it.
        model_kwargs: forwarded to ``open_clip.create_model``.

    Images are resized to the tower's input size and normalised with its preprocess config's mean/std.
    """

    modality = "image"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        freeze: bool = False,
        img_size: int | tuple[int, int] | None = None,
        feature_level: int = -1,
        vision_cfg: dict | None = None,
        **model_kwargs,
    ) -> None:
        super().__init__()
        model_kwargs = with_tower_cfg(model_name, model_kwargs, vision_cfg=vision_cfg)
        if img_size is not None:
            model_kwargs = {**model_kwargs, "force_image_size": img_size}
        model = create_open_clip(model_name, pretrained, **model_kwargs)
        visual = model.visual
        del model  # drop the text tower
        cfg = dict(visual.preprocess_cfg)
        self.normalize = ImageNormalizer(cfg["mean"], cfg["std"], as_2tuple(cfg["size"]))
        self.feature_level = feature_level
        self._norm_tokens = _strip_unused(visual, feature_level)
        self.visual = visual
        self.frozen = freeze
        visual.eval()
        with torch.no_grad():
            p = next(visual.parameters())
            probe = self._features(torch.zeros(1, 3, *self.normalize.size, dtype=p.dtype, device=p.device))
        visual.train()
        self.out_dim = int(probe.shape[1])
        self._num_tokens = int(probe.shape[2] * probe.shape[3])
        if freeze:
            freeze_(self.visual)

    def train(self, mode: bool = True) -> OpenClipImageEncoder:
        super().train(mode)
        if self.frozen:
            self.visual.eval()
        return self

    def num_tokens(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Tokens per image: constant, since every image is resized to the tower's input size first."""
        return self._num_tokens

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> feature map (B, D, h, w)."""
        out = self.visual.forward_intermediates(
            x,
            indices=[self.feature_level],
            intermediates_only=True,
            normalize_intermediates=self._norm_tokens,
            output_fmt="NCHW",
        )
        return out["image_intermediates"][0]

    def forward(self, images: torch.Tensor) -> TokenSequence:
        """``images`` (B, 3, H, W) float in [0, 1] -> tokens (B, h*w, out_dim), mask (B, h*w) all True."""
        feats = self._features(self.normalize(images))  # (B, D, h, w)
        tokens = feats.flatten(2).transpose(1, 2)  # (B, h*w, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenSequence(tokens, mask)
