"""Image and audio loaders against files whose content the test writes (so the expected values are known)."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omnifuse.data.loaders import LoadError, load_audio, load_image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid signature and IHDR chunk declaring ``width x height`` RGB, and no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


# --------------------------------------------------------------------------------------------------------- images


def test_image_pixels_and_range(tmp_path: Path):
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[:, :4] = (255, 0, 0)
    pixels[:, 4:] = (0, 51, 102)
    image = load_image(save_png(tmp_path / "a.png", pixels))
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    assert torch.equal(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(image[:, 5, 7], torch.tensor([0.0, 0.2, 0.4]))


def test_image_resize_to_square(tmp_path: Path):
    pixels = np.full((30, 50, 3), 200, dtype=np.uint8)
    image = load_image(save_png(tmp_path / "a.png", pixels), image_size=16)
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(image, torch.full((3, 16, 16), 200 / 255))  # a flat image stays flat


def test_grayscale_and_transparency_become_rgb(tmp_path: Path):
    gray = load_image(save_png(tmp_path / "g.png", np.full((4, 4), 10, dtype=np.uint8)))
    assert gray.shape == (3, 4, 4) and torch.equal(gray[0], gray[2])
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    rgba[0, 0] = (0, 0, 255, 255)  # one opaque blue pixel
    out = load_image(save_png(tmp_path / "t.png", rgba, mode="RGBA"))
    assert torch.equal(out[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(out[:, 3, 3], torch.ones(3))  # transparent pixels composite onto white


def test_truncated_png(tmp_path: Path):
    rng = np.random.default_rng(0)
    full = save_png(tmp_path / "full.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(LoadError, match="not a valid image.*truncated"):
        load_image(cut)


def test_text_file_named_png(tmp_path: Path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(LoadError, match="not a valid image"):
        load_image(path)


def test_zero_byte_image(tmp_path: Path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(LoadError, match="empty"):
        load_image(path)


@pytest.mark.parametrize("side, max_pixels", [(30000, 4096 * 4096), (5000, 1000 * 1000)])
def test_decompression_bomb_refused_from_header(tmp_path: Path, side: int, max_pixels: int):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    assert path.stat().st_size < 100  # the "image" is a header: only a decoder would allocate side*side*3 bytes
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match="too large|above the limit"):
            load_image(path, max_pixels=max_pixels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # decoding even 1000x1000 RGB would take 3 MB; 30000x30000 would take 2.7 GB


# ---------------------------------------------------------------------------------------------------------- audio


def sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_audio_stereo_downmix_and_resample(tmp_path: Path):
    rate = 44100
    left = sine(440.0, 1.0, rate)
    stereo = np.stack([left, np.full_like(left, 0.25)], axis=1)  # right channel: a constant offset
    path = tmp_path / "a.wav"
    sf.write(path, stereo, rate, subtype="FLOAT")
    wave = load_audio(path, sample_rate=16000, max_seconds=None)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert wave.shape[0] == 16000  # 1 s at 16 kHz
    # Mono is the mean of the channels: the sine at half amplitude around a mean of 0.125.
    assert abs(float(wave.mean()) - 0.125) < 0.01
    spectrum = np.abs(np.fft.rfft((wave - wave.mean()).numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins over 1 s: the tone survives resampling


def test_audio_is_cut_to_max_seconds(tmp_path: Path):
    path = tmp_path / "long.wav"
    sf.write(path, sine(300.0, 3.0, 22050), 22050, subtype="PCM_16")
    assert load_audio(path, sample_rate=16000, max_seconds=1.5).shape == (24000,)
    assert load_audio(path, sample_rate=22050, max_seconds=None).shape == (3 * 22050,)


def test_zero_byte_wav(tmp_path: Path):
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(LoadError, match="empty"):
        load_audio(path, 16000, 8.0)


def test_wav_without_samples(tmp_path: Path):
    path = tmp_path / "none.wav"
    sf.write(path, np.zeros((0,), dtype=np.float32), 16000)
    assert path.stat().st_size > 0  # a valid header, no frames
    with pytest.raises(LoadError, match="no samples"):
        load_audio(path, 16000, 8.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_wav_with_nan_or_inf(tmp_path: Path, bad: float):
    data = np.full(1600, bad, dtype=np.float32)
    path = tmp_path / "bad.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(LoadError, match="NaN or infinite"):
        load_audio(path, 16000, 8.0)


def test_text_file_named_wav(tmp_path: Path):
    path = tmp_path / "x.wav"
    path.write_text("not audio")
    with pytest.raises(LoadError, match="not a readable audio file"):
        load_audio(path, 16000, 8.0)
