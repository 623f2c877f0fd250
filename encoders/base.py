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


class Encoder(nn.Module):
    """Base class of every encoder: records its own constructor arguments as a ``spec``.

    ``spec`` is ``{"class_path": ..., "init_args": {...}}`` — the same shape LightningCLI uses — so a model can write
    its encoders into ``config.json`` and rebuild them later without pickling, whoever constructed them (YAML, CLI or
    plain Python). Subclasses set ``modality`` and ``out_dim``.
    """

    modality: str = ""
    out_dim: int = 0

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
