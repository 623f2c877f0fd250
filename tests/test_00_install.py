"""Collected first (file name order): the install itself. A PyTorch trio that does not match its pins, or a
torchaudio whose compiled library does not load against the installed torch, fails here with a clear message instead
of as an import error in every other test module."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    """``name -> version`` for the exact (``==``) pins of pyproject.toml's dependencies."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)==([0-9][^"*;]*)"', text))


def test_pytorch_trio_is_pinned_exactly_and_installed_as_pinned() -> None:
    pins = _pins()
    assert {"torch", "torchvision", "torchaudio"} <= set(pins), f"pyproject.toml must pin the trio exactly: {pins}"
    for name in ("torch", "torchvision", "torchaudio"):
        installed = metadata.version(name).split("+")[0]  # local build tags (+cu130, +cpu) do not change the release
        assert installed == pins[name], f"{name} {installed} is installed, pyproject.toml pins {pins[name]}"


def test_lock_file_agrees_with_the_pins() -> None:
    lock = dict(
        line.split("==", 1) for line in (ROOT / "requirements-lock.txt").read_text().split() if "==" in line
    )
    for name, version in _pins().items():
        assert lock.get(name) == version, f"requirements-lock.txt has {name}=={lock.get(name)}, pyproject {version}"


def test_torchaudio_kernels_load() -> None:
    torch = pytest.importorskip("torch")
    import torchaudio

    # A mel spectrogram runs torchaudio's own code on top of torch; a mismatched build fails at import or here.
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_mels=8)(torch.zeros(1, 1600))
    assert mel.shape[:2] == (1, 8)


def test_every_registered_encoder_imports() -> None:
    from omnifuse.encoders import get_encoder_class, list_encoders

    names = list_encoders()
    assert {"audio", "text", "timm_image"} <= set(names)
    for name in names:
        assert get_encoder_class(name).registry_name == name
