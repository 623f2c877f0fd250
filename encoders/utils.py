"""Small helpers shared by the encoders: masking, freezing, local-weights checks, image normalisation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N, ...) with every position where ``mask`` (B, N) is False set to exactly 0.

    Uses ``torch.where`` (not a multiply), so whatever sits under the mask (even NaN/inf) cannot leak through.
    """
    m = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def safe_key_mask(mask: torch.Tensor) -> torch.Tensor:
    """Key mask for attention that never masks a whole row.

    A row (sample) with no valid key would make softmax return NaN; such a row is allowed to attend to every key.
    Its outputs are garbage but finite, and the callers zero them through ``zero_masked`` afterwards.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


def resolve_local_weights(pretrained: bool | str | os.PathLike | None) -> str | None:
    """Return the local weights path, or None for random init. Hub downloads are refused (no network at run time)."""
    if pretrained is None or pretrained is False or pretrained == "":
        return None
    if pretrained is True:
        raise ValueError("pretrained=True would download weights; pass a local weights file path instead")
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path!r} (only local files are supported)")
    return path


def freeze_(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of ``module`` and put it in eval mode (frozen BatchNorm statistics)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class ImageNormalizer(nn.Module):
    """Images in [0, 1] -> optional resize to a fixed ``size`` -> ``(x - mean) / std`` per channel.

    ``mean``/``std`` come from the backbone's data config; they are non-persistent buffers (not in checkpoints).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.size = tuple(size) if size is not None else None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size the backbone sees for an input of ``size`` (H, W)."""
        return self.size if self.size is not None else tuple(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
        if self.size is not None and tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)


def as_2tuple(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``64`` -> ``(64, 64)``; ``(h, w)`` -> ``(h, w)``; None stays None."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))
