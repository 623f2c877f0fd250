"""Build an open_clip model offline: random init or a local CLIP checkpoint, never a hub download."""

from __future__ import annotations

import logging

import open_clip
from torch import nn

from omnifuse.encoders.utils import resolve_local_weights


def create_open_clip(model_name: str, pretrained: str | None = None, **model_kwargs) -> nn.Module:
    """``open_clip.create_model`` with downloads disabled.

    ``pretrained`` is None (random init) or a local file holding the *full* CLIP state dict (both towers; a
    ``{"state_dict": ...}`` wrapper and ``.safetensors`` are accepted). Base tower weights (timm / HF) are never
    fetched: ``pretrained_image=False, pretrained_text=False``. ``model_kwargs`` override the model config, e.g.
    ``vision_cfg=dict(...)`` / ``text_cfg=dict(...)`` / ``embed_dim`` for tiny test models, or
    ``force_image_size`` / ``force_context_length``.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; known models: {', '.join(open_clip.list_models())}")
    weights = resolve_local_weights(pretrained)
    root = logging.getLogger()
    root.addFilter(_expected_random_init)  # open_clip warns on the root logger when it loads no weights
    try:
        return open_clip.create_model(
            model_name, pretrained=weights, pretrained_image=False, pretrained_text=False, **model_kwargs
        )
    finally:
        root.removeFilter(_expected_random_init)


def with_tower_cfg(model_name: str, model_kwargs: dict, **tower_cfgs: dict | None) -> dict:
    """``model_kwargs`` plus each given tower config (``vision_cfg`` / ``text_cfg``) merged over the named model's own,
    so that ``{"width": 128}`` changes the width and keeps every other setting of ``model_name``'s tower."""
    out = dict(model_kwargs)
    base = open_clip.get_model_config(model_name) or {}
    for key, cfg in tower_cfgs.items():
        if cfg is not None:
            out[key] = {**base.get(key, {}), **out.get(key, {}), **cfg}
    return out


def _expected_random_init(record: logging.LogRecord) -> bool:
    """Logging filter: drop open_clip's "No pretrained weights loaded" warning (random init is intended here)."""
    return not record.getMessage().startswith("No pretrained weights loaded")
