"""Image encoder over any timm model: CNN feature maps or ViT patch tokens, flattened to a token sequence."""

from __future__ import annotations

import torch

from omnifuse.encoders.base import Encoder, FilmParams, TokenSequence
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.timm_backbone import TimmBackbone
from omnifuse.encoders.utils import ImageNormalizer, as_2tuple, freeze_


@register_encoder("timm_image")
class TimmImageEncoder(Encoder):
    """Images (B, 3, H, W) in [0, 1] -> one token per feature-map cell (CNN) or per patch (ViT).

    Args:
        model_name: any timm model name, e.g. ``"resnet18"``, ``"convnext_tiny"``, ``"vit_small_patch16_224"``.
        pretrained: False for random init or a local weights file path (never downloads).
        freeze: no gradients to the backbone, which also stays in eval mode (frozen BatchNorm statistics).
        img_size: resize every image to this size first; also passed to models with a fixed input size (ViTs),
            which otherwise get their data-config size. ``None`` with a CNN keeps the incoming size.
        feature_level: ``forward_intermediates`` level to take (-1 = last). On 64x64 images a ResNet's last stage
            is 2x2; ``feature_level=-3`` gives its 8x8 stage (positional detail for small images).
        film_levels: ``feature_info`` levels whose output a ``film`` argument modulates (forward hooks on those
            modules, so any timm CNN works); default: every stage after the stem up to the returned one. Their
            channel counts are ``film_channels``.
        channels_last: run the backbone in channels-last memory format (faster for some CNNs on CPU; measure).
        model_kwargs: forwarded to ``timm.create_model`` (e.g. ``channels``, ``stem_width``, ``layers`` of a ResNet,
            to size a tower for small images).

    The normalisation (mean/std, and the input size for fixed-size models) is resolved from the model's timm data
    config, exposed as ``data_config``. Images carry no padding, so every token is valid (mask all True).
    """

    modality = "image"

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool | str | None = False,
        freeze: bool = False,
        img_size: int | tuple[int, int] | None = None,
        feature_level: int = -1,
        film_levels: list[int] | None = None,
        channels_last: bool = False,
        **model_kwargs,
    ) -> None:
        super().__init__()
        self.backbone = TimmBackbone(
            model_name, pretrained=pretrained, feature_level=feature_level, img_size=img_size, **model_kwargs
        )
        self.data_config = self.backbone.data_config
        size = as_2tuple(img_size) if img_size is not None else None
        if size is None and self.backbone.fixed_input_size:
            size = self.backbone.default_size
        self.normalize = ImageNormalizer(self.data_config["mean"], self.data_config["std"], size)
        self.out_dim = self.backbone.out_dim
        stages = self.backbone.film_stages(film_levels)
        self.film_modules = tuple(name for name, _ in stages)
        self.film_channels = tuple(channels for _, channels in stages)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.frozen = freeze
        if freeze:
            freeze_(self.backbone)

    def train(self, mode: bool = True) -> TimmImageEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def num_tokens(self, image_size: int | tuple[int, int] = 64) -> int:
        """Tokens per image for inputs of ``image_size`` (H, W): h * w of the chosen feature map."""
        h, w = self.backbone.feature_shape(self.normalize.output_size(as_2tuple(image_size)))
        return h * w

    def forward(self, images: torch.Tensor, film: FilmParams | None = None) -> TokenSequence:
        """``images`` (B, 3, H, W) float in [0, 1] -> tokens (B, h*w, out_dim), mask (B, h*w) all True.

        ``film``: per-sample FiLM of the ``film_modules`` outputs (see ``FilmParams``); None: unconditioned."""
        if film is not None and not self.film_channels:
            raise ValueError(f"{self.backbone.model_name} has no stages to modulate (film_channels is empty)")
        x = self.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.backbone.film_hooks(self.film_modules, film):
            feats = self.backbone(x)  # (B, D, h, w)
        tokens = feats.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major over the grid
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenSequence(tokens, mask)
