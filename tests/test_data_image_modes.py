"""Every image mode Pillow opens becomes the same 8-bit RGB picture, or is refused with a clear error (issue 21).

Each case writes one reference picture in another mode and compares ``decode_image`` with an 8-bit reference built
with numpy from the same values (a 16-bit PNG used to come out all white: Pillow's own conversion clips at 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnifuse.data.loaders import LoadError, decode_image, to_rgb

H, W = 24, 32
GRAY = ((np.arange(H)[:, None] * 7 + np.arange(W)[None, :] * 5) % 256).astype(np.uint8)  # (H, W) every level used
RGB = np.stack([GRAY, GRAY[::-1], (GRAY.astype(np.int64) * 3) % 256], axis=-1).astype(np.uint8)  # (H, W, 3), no symmetry


def _expected(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # (3, H, W) uint8


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _decode(path: Path) -> torch.Tensor:
    out = decode_image(path, image_size=None)
    assert out.dtype == torch.uint8 and out.shape == (3, H, W)
    return out


def test_8bit_gray_and_rgb(tmp_path):
    assert torch.equal(_decode(_save(Image.fromarray(GRAY, "L"), tmp_path / "l.png")), _expected(_gray3(GRAY)))
    assert torch.equal(_decode(_save(Image.fromarray(RGB, "RGB"), tmp_path / "rgb.png")), _expected(RGB))


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("I;16 png", lambda v: (Image.fromarray(v.astype(np.uint16)), "png")),
        ("I;16B tiff", lambda v: (Image.frombytes("I;16B", (W, H), v.astype(">u2").tobytes()), "tiff")),
        ("I;16 tiff", lambda v: (Image.frombytes("I;16", (W, H), v.astype("<u2").tobytes()), "tiff")),
        ("I (int32) tiff", lambda v: (Image.fromarray(v.astype(np.int32)), "tiff")),
    ],
)
def test_16bit_gray_is_scaled_not_clipped(tmp_path, name, build):
    image, fmt = build(GRAY.astype(np.uint32) * 257)  # 0..255 -> 0..65535, exactly
    path = _save(image, tmp_path / f"x.{fmt}")
    assert Image.open(path).mode in ("I;16", "I;16B", "I;16L", "I")
    assert torch.equal(_decode(path), _expected(_gray3(GRAY))), name


def test_16bit_gray_resizes_like_its_8bit_picture(tmp_path):
    png16 = _save(Image.fromarray(GRAY.astype(np.uint16) * 257), tmp_path / "a.png")
    png8 = _save(Image.fromarray(GRAY, "L"), tmp_path / "b.png")
    assert torch.equal(decode_image(png16, image_size=16), decode_image(png8, image_size=16))


def test_float_image_in_0_1_is_scaled(tmp_path):
    path = _save(Image.fromarray((GRAY / 255.0).astype(np.float32), "F"), tmp_path / "f.tiff")
    assert Image.open(path).mode == "F"
    assert torch.equal(_decode(path), _expected(_gray3(GRAY)))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ((GRAY.astype(np.float32) * 2.0), r"values in \[0, 510\]; only \[0, 1\]"),
        (np.where(GRAY > 100, np.nan, 0.5).astype(np.float32), "NaN"),
        (GRAY.astype(np.int32) * 1000, r"values in \[0, 255000\]; only 0..65535"),
        (GRAY.astype(np.int32) - 5, r"values in \[-5, 250\]"),
    ],
)
def test_float_and_int32_outside_their_range_are_refused(tmp_path, values, match):
    path = _save(Image.fromarray(values), tmp_path / "x.tiff")
    with pytest.raises(LoadError, match=match):
        decode_image(path, image_size=None)


def test_palette(tmp_path):
    palette = np.array([[250, 0, 0], [0, 200, 0], [0, 0, 150], [30, 60, 90]], dtype=np.uint8)
    index = (GRAY // 64).astype(np.uint8)  # (H, W) in 0..3
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    assert torch.equal(_decode(_save(image, tmp_path / "p.png")), _expected(palette[index]))


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255.0
    return np.rint(rgb * a + 255.0 * (1.0 - a)).astype(np.int16)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_onto_white(tmp_path, mode):
    alpha = np.flipud(GRAY).copy()
    if mode == "LA":
        image, reference = Image.fromarray(np.stack([GRAY, alpha], -1), "LA"), _on_white(_gray3(GRAY), alpha)
    else:
        image, reference = Image.fromarray(np.dstack([RGB, alpha]), "RGBA"), _on_white(RGB, alpha)
    path = _save(image, tmp_path / "a.png")
    assert Image.open(path).mode == mode
    out = _decode(path).permute(1, 2, 0).to(torch.int16).numpy()
    assert np.abs(out - reference).max() <= 1  # Pillow's compositing rounds its own way, by at most one level


def test_palette_with_a_transparent_entry(tmp_path):
    palette = np.array([[250, 0, 0], [0, 200, 0], [0, 0, 150], [30, 60, 90]], dtype=np.uint8)
    index = (GRAY // 64).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    path = _save(image, tmp_path / "t.png", transparency=3)  # entry 3 is fully transparent (a tRNS chunk)
    assert "transparency" in Image.open(path).info
    reference = np.where((index == 3)[..., None], 255, palette[index]).astype(np.uint8)
    assert torch.equal(_decode(path), _expected(reference))


def test_cmyk(tmp_path):
    cmyk = np.dstack([255 - RGB, np.zeros((H, W), np.uint8)])  # K = 0: C, M, Y are the inverted R, G, B
    path = _save(Image.fromarray(cmyk, "CMYK"), tmp_path / "c.tiff")
    assert Image.open(path).mode == "CMYK"
    assert torch.equal(_decode(path), _expected(RGB))


def test_bilevel(tmp_path):
    bits = GRAY > 127
    path = _save(Image.fromarray(bits), tmp_path / "b.png")
    assert Image.open(path).mode == "1"
    assert torch.equal(_decode(path), _expected(_gray3(np.where(bits, 255, 0).astype(np.uint8))))


@pytest.mark.parametrize(("orientation", "stored"), [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, 1)),
                                                     (8, lambda a: np.rot90(a, -1))])  # fmt: skip
def test_exif_orientation_is_applied(tmp_path, orientation, stored):
    # The file stores the picture turned; its EXIF Orientation tag says how to turn it back.
    image = Image.fromarray(np.ascontiguousarray(stored(RGB)), "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(image, tmp_path / "e.png", exif=exif.tobytes())
    assert torch.equal(_decode(path), _expected(RGB))


@pytest.mark.parametrize(("straight", "premultiplied"), [("LA", "La"), ("RGBA", "RGBa")])
def test_premultiplied_alpha_modes(straight, premultiplied):
    # Pillow never writes these to a file, but a decoder may hand them over; same picture as the straight mode.
    alpha = np.flipud(GRAY).copy()
    values = np.stack([GRAY, alpha], -1) if straight == "LA" else np.dstack([RGB, alpha])
    image = Image.fromarray(values, straight)
    reference = _on_white(_gray3(GRAY) if straight == "LA" else RGB, alpha)
    out = np.asarray(to_rgb(image.convert(premultiplied))).astype(np.int16)
    assert np.abs(out - reference).max() <= 2  # premultiplying rounds once more
