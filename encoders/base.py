"""The one type every encoder returns."""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch
from torch import nn


class TokenSequence(NamedTuple):
    """Encoder output: ``tokens`` (B, N, D) and ``mask`` (B, N) bool, True = real token."""

    tokens: torch.Tensor
    mask: torch.Tensor


class FilmParams(NamedTuple):
    """Per-stage FiLM conditioning (Perez et al. 2018) handed to an encoder that accepts it (``film_channels``).

    Stage ``s`` of the encoder has its feature map ``x`` (B, C_s, ...) replaced by ``x * scale[s] + shift[s]``, per
    sample and channel; ``scale[s]`` and ``shift[s]`` are (B, C_s) with ``C_s = encoder.film_channels[s]``. A row with
    scale exactly 1 and shift exactly 0 is the identity, bit for bit (``x * 1 + 0 == x`` in IEEE arithmetic): that is
    how a sample without conditioning (no question) shares a batch with conditioned ones. The encoder does not know
    where the parameters come from; it depends on no other modality.
    """

    scale: tuple[torch.Tensor, ...]
    shift: tuple[torch.Tensor, ...]


def apply_film(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, *spatial) (or (B, N, C) token maps) -> ``x * scale + shift`` per sample and channel.

    ``scale``/``shift`` (B, C). Exact identity for rows with scale 1 and shift 0."""
    if x.dim() == 3:  # (B, N, C): channels last, e.g. a ViT block's tokens
        return x * scale[:, None, :].to(x.dtype) + shift[:, None, :].to(x.dtype)
    shape = scale.shape + (1,) * (x.dim() - 2)  # (B, C, 1, 1)
    return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)


class Encoder(nn.Module):
    """Base class of every encoder: records its own constructor arguments as a ``spec``.

    ``spec`` is ``{"class_path": ..., "init_args": {...}}`` — the same shape LightningCLI uses — so a model can write
    its encoders into ``config.json`` and rebuild them later without pickling, whoever constructed them (YAML, CLI or
    plain Python). Subclasses set ``modality`` and ``out_dim``.

    An encoder that can be conditioned (question-conditioned vision, see ``omnifuse.fusion.QuestionFilm``) lists the
    channel count of each stage it modulates in ``film_channels`` and takes ``film: FilmParams | None = None`` as a
    keyword argument of ``forward``; ``film=None`` is the plain, unconditioned encoder. ``film_channels == ()``: the
    encoder takes no conditioning.
    """

    modality: str = ""
    out_dim: int = 0
    film_channels: tuple[int, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            # Only the outermost constructor records: a subclass calling super().__init__ must not overwrite it.
            outermost = not getattr(self, "_recording_spec", False)
            if outermost:
                object.__setattr__(self, "_recording_spec", True)
            try:
                init(self, *args, **kw)
            finally:
                if outermost:
                    bound = signature.bind(self, *args, **kw)
                    bound.apply_defaults()
                    init_args = {k: v for k, v in bound.arguments.items() if k != "self"}
                    extra = init_args.pop(_var_keyword_name(signature) or "", None) or {}
                    init_args.update(extra)
                    self.spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
                    object.__setattr__(self, "_recording_spec", False)

        cls.__init__ = recording_init


def _var_keyword_name(signature: inspect.Signature) -> str | None:
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return p.name
    return None
