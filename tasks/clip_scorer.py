"""``ClipScorer``: an open_clip model used as an image-text similarity scorer (data curation's CLIP score).

The model is open_clip's own ``CLIP`` class, either a named architecture with a small custom config trained here
(``configs/easyvqa_clip.yaml``, :class:`~omnifuse.tasks.contrastive.ContrastiveTask`) or a named architecture with a
user's local weights file (``ClipScorer.from_open_clip("ViT-B-32", "/path/open_clip_model.bin")``); nothing is ever
downloaded. Images go through the eval transform open_clip applies to that model (shortest side resized to the
model's input size with bicubic antialiasing, centre crop, mean/std normalisation), written here on tensors so that
uint8 images from the safe loader (``omnifuse.data.loaders.decode_image``) need no round trip through PIL.

A scorer folder (``omnifuse export`` of a contrastive checkpoint) holds ``scorer.json`` (the open_clip model name,
config overrides and image statistics) and ``model.safetensors`` (the full CLIP state dict): no pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from omnifuse.encoders.open_clip_utils import create_open_clip, with_tower_cfg

SCORER_CONFIG = "scorer.json"
SCORER_WEIGHTS = "model.safetensors"
SCORER_FORMAT = 1


@dataclass
class ScorerConfig:
    """What rebuilds a scorer's architecture: an open_clip model name plus overrides of its config (``embed_dim``,
    ``vision_cfg``, ``text_cfg``: only the given keys change, the rest stay the named model's), and the image
    statistics its inputs are normalised with."""

    model_name: str = "ViT-B-32"
    embed_dim: int | None = None
    vision_cfg: dict[str, Any] | None = None
    text_cfg: dict[str, Any] | None = None
    image_mean: tuple[float, float, float] = tuple(open_clip.OPENAI_DATASET_MEAN)
    image_std: tuple[float, float, float] = tuple(open_clip.OPENAI_DATASET_STD)
    # How an image reaches the input size: "crop" (open_clip's eval transform: shortest side resized, centre crop; what
    # CLIP weights expect) or "square" (resized to a square, as omnifuse's data module does; what a scorer trained by
    # ContrastiveTask saw).
    resize: str = "crop"
    extra: dict[str, Any] = field(default_factory=dict)  # further open_clip.create_model keyword arguments

    def __post_init__(self) -> None:
        if self.resize not in ("crop", "square"):
            raise ValueError(f"resize must be 'crop' or 'square', got {self.resize!r}")

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.extra)
        if self.embed_dim is not None:
            kwargs["embed_dim"] = self.embed_dim
        return with_tower_cfg(self.model_name, kwargs, vision_cfg=self.vision_cfg, text_cfg=self.text_cfg)


class ClipScorer(nn.Module):
    """Unit-norm image and text embeddings and their cosine similarity (the CLIP score), from an open_clip model."""

    def __init__(self, config: ScorerConfig | dict | None = None, pretrained: str | None = None) -> None:
        super().__init__()
        config = ScorerConfig(**config) if isinstance(config, dict) else (config or ScorerConfig())
        self.config = config
        self.clip = create_open_clip(config.model_name, pretrained, **config.model_kwargs())
        size = self.clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.context_length = int(self.clip.context_length)
        self.tokenizer = open_clip.get_tokenizer(config.model_name, context_length=self.context_length)
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ inputs

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """One ``(3, H, W)`` uint8 (or [0, 1] float) image -> ``(3, S, S)`` float at the model's input size ``S``:
        open_clip's eval transform (shortest side to ``S``, bicubic with antialiasing, centre crop), or with
        ``resize="square"`` the data module's (bilinear to ``S x S``)."""
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        size = [self.image_size, self.image_size]
        if self.config.resize == "square":
            if tuple(image.shape[-2:]) != tuple(size):
                image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
            return image.clamp_(0.0, 1.0)
        if min(image.shape[-2:]) != self.image_size:
            image = TF.resize(image, [self.image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            image = TF.center_crop(image, [self.image_size, self.image_size])
        return image.clamp_(0.0, 1.0)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` [0, 1] -> the model's input statistics."""
        return (images - self.mean) / self.std

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.mean.device)  # (B, context_length) long

    # ------------------------------------------------------------------ embeddings

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` preprocessed [0, 1] images -> ``(B, embed_dim)`` unit-norm embeddings."""
        return F.normalize(self.clip.encode_image(self.normalize(images.to(self.mean.device))), dim=-1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts -> ``(B, embed_dim)`` unit-norm embeddings (open_clip's tokenizer; cut to the context length)."""
        return F.normalize(self.clip.encode_text(self.tokenize(texts)), dim=-1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of each image with its text: ``(B,)`` in [-1, 1] (higher: a better match)."""
        return (self.embed_images(images) * self.embed_texts(texts)).sum(-1)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path) -> Path:
        """``scorer.json`` + ``model.safetensors`` (the full CLIP state dict) into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": SCORER_FORMAT, **asdict(self.config)}
        (directory / SCORER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.clip.state_dict().items()}
        save_file(state, str(directory / SCORER_WEIGHTS))
        return directory

    @classmethod
    def from_pretrained(cls, source: str | Path) -> ClipScorer:
        """A scorer folder (``omnifuse export`` of a contrastive checkpoint) or a contrastive checkpoint (``.ckpt``)."""
        source = Path(source)
        if source.is_dir():
            meta_path = source / SCORER_CONFIG
            if not meta_path.is_file():
                raise FileNotFoundError(
                    f"{source} is not a scorer folder: no {SCORER_CONFIG} (omnifuse export writes it)"
                )
            meta = json.loads(meta_path.read_text())
            if meta.pop("format_version", None) != SCORER_FORMAT:
                raise ValueError(f"{meta_path}: unsupported scorer format (expected version {SCORER_FORMAT})")
            scorer = cls(ScorerConfig(**meta))
            from safetensors.torch import load_file

            scorer.clip.load_state_dict(load_file(str(source / SCORER_WEIGHTS)))
            return scorer.eval()
        from omnifuse.finetune.safe_load import load_checkpoint

        return cls.from_checkpoint(load_checkpoint(source), source=str(source))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], source: str = "checkpoint") -> ClipScorer:
        """The scorer of an already loaded ``ContrastiveTask`` checkpoint (``source`` names it in errors)."""
        config = checkpoint.get("omnifuse_scorer_config")
        if config is None:
            raise ValueError(f"{source} is not a contrastive scorer checkpoint (no omnifuse_scorer_config)")
        scorer = cls(ScorerConfig(**config))
        prefix = "scorer.clip."
        scorer.clip.load_state_dict(
            {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        )
        return scorer.eval()

    @classmethod
    def from_open_clip(cls, model_name: str, weights: str | None = None, **config) -> ClipScorer:
        """A named open_clip architecture with a local full-CLIP weights file (None: random init, for tests)."""
        return cls(ScorerConfig(model_name=model_name, **config), pretrained=weights).eval()
