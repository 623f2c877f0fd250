"""One encoder per modality; each returns a TokenSequence.

Every encoder is an ``Encoder`` (``nn.Module``) with ``modality`` (``"image"`` | ``"audio"`` | ``"text"``),
``out_dim``, ``num_tokens(...)`` and a registry name (``build_encoder(name, **kwargs)``; ``list_encoders()``):

- ``timm_image`` :class:`TimmImageEncoder`, ``conv_image`` :class:`ConvImageEncoder`, ``open_clip_image``
  :class:`OpenClipImageEncoder`: ``forward(images (B, 3, H, W) in [0, 1])``; the first two also take
  ``film=FilmParams(...)``, per-sample scale and shift for each of their ``film_channels`` stages (question-conditioned
  vision; the parameters come from outside, so the encoder depends on no other modality)
- ``audio`` :class:`AudioEncoder`, ``timm_audio`` :class:`TimmAudioEncoder`: ``forward(wave (B, S), wave_mask (B, S))``
- ``text`` :class:`TextEncoder`, ``open_clip_text`` :class:`OpenClipTextEncoder`: ``forward(ids (B, T), mask (B, T))``

The encoder classes are imported lazily (first attribute access or ``build_encoder``), so importing this package
does not import timm, open_clip or torchaudio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from omnifuse.encoders.base import Encoder, FilmParams, TokenSequence, apply_film
from omnifuse.encoders.registry import build_encoder, get_encoder_class, list_encoders, register_encoder

if TYPE_CHECKING:
    from omnifuse.encoders.audio import AudioEncoder
    from omnifuse.encoders.audio_frontend import LogMelFrontend, SpecAugment, SpeedPerturb
    from omnifuse.encoders.audio_timm import TimmAudioEncoder
    from omnifuse.encoders.image_conv import ConvImageEncoder
    from omnifuse.encoders.image_open_clip import OpenClipImageEncoder
    from omnifuse.encoders.image_timm import TimmImageEncoder
    from omnifuse.encoders.text import TextEncoder
    from omnifuse.encoders.text_open_clip import OpenClipTextEncoder

_LAZY = {
    "AudioEncoder": "omnifuse.encoders.audio",
    "ConvImageEncoder": "omnifuse.encoders.image_conv",
    "LogMelFrontend": "omnifuse.encoders.audio_frontend",
    "OpenClipImageEncoder": "omnifuse.encoders.image_open_clip",
    "OpenClipTextEncoder": "omnifuse.encoders.text_open_clip",
    "SpecAugment": "omnifuse.encoders.audio_frontend",
    "SpeedPerturb": "omnifuse.encoders.audio_frontend",
    "TextEncoder": "omnifuse.encoders.text",
    "TimmAudioEncoder": "omnifuse.encoders.audio_timm",
    "TimmImageEncoder": "omnifuse.encoders.image_timm",
}

__all__ = [
    "AudioEncoder",
    "ConvImageEncoder",
    "Encoder",
    "FilmParams",
    "LogMelFrontend",
    "OpenClipImageEncoder",
    "OpenClipTextEncoder",
    "SpecAugment",
    "SpeedPerturb",
    "TextEncoder",
    "TimmAudioEncoder",
    "TimmImageEncoder",
    "TokenSequence",
    "apply_film",
    "build_encoder",
    "get_encoder_class",
    "list_encoders",
    "register_encoder",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnifuse.encoders' has no attribute {name!r}")
