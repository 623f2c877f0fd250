"""Encoder registry: names -> classes, so configs can name an encoder and unknown names fail helpfully."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}

# Built-in encoders register themselves when their module is imported; the module is imported on first use, so
# ``import omnifuse.encoders`` does not pay for timm / open_clip until an encoder that needs them is built.
_BUILTIN_MODULES: dict[str, str] = {
    "audio": "omnifuse.encoders.audio",
    "conv_image": "omnifuse.encoders.image_conv",
    "open_clip_image": "omnifuse.encoders.image_open_clip",
    "open_clip_text": "omnifuse.encoders.text_open_clip",
    "text": "omnifuse.encoders.text",
    "timm_audio": "omnifuse.encoders.audio_timm",
    "timm_image": "omnifuse.encoders.image_timm",
}


def register_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls`` buildable as ``build_encoder(name, **kwargs)``; sets ``cls.registry_name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"encoder name {name!r} is already registered to {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def list_encoders() -> list[str]:
    """Sorted names of every registered encoder (built-in ones included before their module is imported)."""
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def get_encoder_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(list_encoders())}") from None


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Instantiate the encoder registered as ``name`` with ``kwargs``."""
    return get_encoder_class(name)(**kwargs)
