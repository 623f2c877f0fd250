"""A small native CNN image tower sized for small images (easy-VQA's 64x64), with FiLM inside its residual blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.encoders.base import Encoder, FilmParams, TokenSequence, apply_film
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.utils import ImageNormalizer, as_2tuple


class FilmResBlock(nn.Module):
    """The FiLM paper's residual block (Perez et al. 2018): ``x + ReLU(FiLM(BN(conv3x3(ReLU(conv1x1(x))))))``.

    The BatchNorm has no affine parameters of its own: the FiLM scale and shift take their place (an unconditioned
    pass uses scale 1, shift 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels, affine=False)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
        h = self.norm(self.conv2(F.relu(self.conv1(x))))  # (B, C, H, W)
        if scale is not None:
            h = apply_film(h, scale, shift)
        return x + F.relu(h)


@register_encoder("conv_image")
class ConvImageEncoder(Encoder):
    """Images (B, 3, H, W) in [0, 1] -> one token per cell of an (H / 4 / token_pool)-sized grid.

    Stem: ``n_stem`` 3x3 convs (the first two with stride 2: H/4), each with BatchNorm and ReLU (``stem="patch"``: one
    4x4 conv of stride 4 takes the place of the two stride-2 convs, the patch embedding of a ViT); then ``n_blocks``
    ``FilmResBlock`` of ``channels`` channels, each accepting a per-sample FiLM (``film_channels``); then, with
    ``out_channels``, a 1x1 conv + BatchNorm + ReLU head to that width (the FiLM paper's classifier has one before
    its global max pool); then a ``token_pool`` x ``token_pool`` max pool (1 = none) that sets how many tokens the
    fusion sees.

    Args:
        channels: width of the stem and of every block.
        n_blocks: residual blocks; each is one FiLM stage.
        n_stem: stem convolutions (at least 2; with ``stem="patch"`` the patch conv counts as two).
        stem: ``"conv"``, two 3x3 convs of stride 2 (the FiLM paper's), or ``"patch"``, one 4x4 conv of stride 4 over
            non-overlapping patches: the same H/4 grid without the full-width H/2 stage (BatchNorm, ReLU and their
            backward over a map four times the final one), which took about 40 % of the tower's time on easy-VQA's
            64x64 images (benchmarks/step_profile.py).
        film_stem: the stem's output is a FiLM stage too (the first of ``film_channels``): the question can then
            select low-level features such as colour before any block mixes them.
        out_channels: width of the 1x1 head (``out_dim``); None: no head, ``out_dim = channels``.
        token_pool: max-pool kernel and stride over the final map (64x64 images, ``token_pool=2``: 8x8 tokens).
        img_size: resize every image to this size first (None: keep the incoming size).
        channels_last: run the convolutions in channels-last memory format (measure: faster for some shapes on CPU).
    """

    modality = "image"

    def __init__(
        self,
        channels: int = 32,
        n_blocks: int = 3,
        n_stem: int = 2,
        token_pool: int = 2,
        out_channels: int | None = None,
        film_stem: bool = False,
        img_size: int | tuple[int, int] | None = None,
        channels_last: bool = False,
        stem: str = "conv",
    ) -> None:
        super().__init__()
        if stem not in ("conv", "patch"):
            raise ValueError(f"stem must be 'conv' or 'patch', got {stem!r}")
        if n_stem < 2:
            raise ValueError(f"n_stem must be >= 2 (two stride-2 convolutions), got {n_stem}")
        if token_pool < 1:
            raise ValueError(f"token_pool must be >= 1, got {token_pool}")
        size = as_2tuple(img_size) if img_size is not None else None
        self.normalize = ImageNormalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), size)  # [0, 1] -> [-1, 1]
        self.stem_kind = stem
        if stem == "patch":  # one conv for the first two: 4x4 patches, stride 4
            convs = [nn.Conv2d(3, channels, 4, stride=4, bias=False)]
        else:
            convs = [
                nn.Conv2d(3 if i == 0 else channels, channels, 3, stride=2, padding=1, bias=False) for i in range(2)
            ]
        convs += [nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(n_stem - 2)]
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)
        self.blocks = nn.ModuleList([FilmResBlock(channels) for _ in range(n_blocks)])
        self.head = (
            nn.Sequential(nn.Conv2d(channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())
            if out_channels
            else None
        )
        self.token_pool = token_pool
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.out_dim = out_channels or channels
        self.film_stem = film_stem
        self.film_channels = (channels,) * (n_blocks + int(film_stem))

    def num_tokens(self, image_size: int | tuple[int, int] = 64) -> int:
        """Tokens per image for inputs of ``image_size``: the grid after the stem's downsampling and the token pool."""
        h, w = self.normalize.output_size(as_2tuple(image_size))
        if self.stem_kind == "patch":  # 4x4, stride 4, no padding
            h, w = h // 4, w // 4
        else:
            for _ in range(2):  # 3x3, stride 2, padding 1
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return (h // self.token_pool) * (w // self.token_pool)

    def forward(self, images: torch.Tensor, film: FilmParams | None = None) -> TokenSequence:
        """``images`` (B, 3, H, W) float in [0, 1] -> tokens (B, h*w, channels), mask all True.

        ``film``: per-sample scale and shift (B, channels) for each block (see ``FilmParams``); None: unconditioned."""
        n = len(self.film_channels)
        if film is not None and (len(film.scale) != n or len(film.shift) != n):
            raise ValueError(f"film has {len(film.scale)} stages, the encoder modulates {n}")
        x = self.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)  # (B, C, H/4, W/4)
        first = int(self.film_stem)
        if film is not None and self.film_stem:
            x = apply_film(x, film.scale[0], film.shift[0])
        for i, block in enumerate(self.blocks):
            x = block(x, *((film.scale[first + i], film.shift[first + i]) if film is not None else (None, None)))
        if self.head is not None:
            x = self.head(x)  # (B, out_channels, H/4, W/4)
        if self.token_pool > 1:
            x = F.max_pool2d(x, self.token_pool)  # (B, C, h, w)
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major over the grid
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenSequence(tokens, mask)
