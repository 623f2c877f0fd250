"""Decoding one file (or the bytes of one, e.g. an upload to ``omnifuse serve``) into a tensor: images with PIL,
audio with soundfile + torchaudio resampling.

Loaders raise ``LoadError`` (a ``ValueError``) with a reason a user can act on; the dataset wraps it into a
``RecordError`` that adds the record id and the field.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image, ImageOps, UnidentifiedImageError

# 4096 x 4096. Checked against the header before any pixel is decoded, so a crafted 30000 x 30000 PNG costs nothing.
DEFAULT_MAX_PIXELS = 4096 * 4096


# Bound on (old rate / g) * (new rate / g), g = gcd, for resampling (see load_audio); 11025 -> 16000 is 282,240.
MAX_RESAMPLE_RATIO_PRODUCT = 4_000_000


# A file on disk, or the whole content of one already in memory (an upload).
Source = str | Path | bytes


def _size_and_handle(source: Source) -> tuple[int, str | io.BytesIO]:
    """(size in bytes, what PIL / soundfile can open): a path string, or a fresh in-memory stream over the bytes."""
    if isinstance(source, (bytes, bytearray)):
        return len(source), io.BytesIO(source)
    path = Path(source)
    return path.stat().st_size, str(path)


class LoadError(ValueError):
    """A file that exists but cannot be used as the modality it was given for."""


class TooLargeError(LoadError):
    """A file refused for its size alone (e.g. an image over the pixel limit), before any decoding."""


def _open_image(source: Source, max_pixels: int) -> Image.Image:
    """Open (header only) and check the declared size; no pixel data is decoded here."""
    size, handle = _size_and_handle(source)
    if size == 0:
        raise LoadError("file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global limit; our explicit max_pixels check below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(handle)
    except Image.DecompressionBombError as e:
        raise TooLargeError(f"image too large (decompression-bomb guard; refused before decoding): {e}") from None
    except UnidentifiedImageError:
        raise LoadError("file is not a valid image (unrecognised format)") from None
    except Exception as e:  # noqa: BLE001 -- a crafted header can raise anything (struct.error, IndexError ...)
        raise LoadError(f"file is not a valid image ({type(e).__name__}: {e})") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise LoadError(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        im.close()
        raise TooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb guard; refused before decoding)"
        )
    return im


def _image_fault(error: Exception, fmt: str | None) -> str:
    message = str(error) or type(error).__name__
    if "truncated" in message.lower():
        return f"truncated {fmt or 'image'}: {message}"
    return f"corrupt {fmt or 'image'} data: {message}"


# 16-bit integer modes (Pillow opens 16-bit grayscale PNG / TIFF as these): full scale is 65535.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes with an alpha channel (straight or premultiplied): composited onto white.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _gray8(values: np.ndarray, full_scale: float) -> Image.Image:
    """A grayscale array whose white is ``full_scale`` as an 8-bit ``L`` image, scaled and rounded (never clipped:
    the callers refuse values outside ``[0, full_scale]``)."""
    return Image.fromarray(np.rint(values.astype(np.float64) * (255.0 / full_scale)).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any image Pillow decodes -> 8-bit ``RGB`` with the same picture, or ``LoadError``.

    * 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``): Pillow's conversion.
    * Alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, premultiplied ``RGBa`` / ``La``): composited onto
      white, so transparent pixels do not show whatever colour they happen to store.
    * 16-bit grayscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): scaled, 65535 -> 255 (Pillow's own conversion
      clips at 255 and turns nearly every pixel white).
    * 32-bit integer ``I``: read as 16-bit data (what a 16-bit PNG or TIFF becomes in Pillow); values outside
      0..65535 are refused: their white point is unknown.
    * 32-bit float ``F``: values in [0, 1] scaled to 0..255; NaN, infinities and values outside [0, 1] are refused.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _UINT16_MODES or mode in ("I", "F"):
        values = np.asarray(im)  # (H, W): uint16 (any byte order), int32 or float32
        if values.size and mode == "F":
            if not np.isfinite(values).all():
                raise LoadError("32-bit float image holds NaN or infinite values")
            low, high = float(values.min()), float(values.max())
            if low < 0.0 or high > 1.0:
                raise LoadError(
                    f"32-bit float image has values in [{low:g}, {high:g}]; only [0, 1] is understood (save it as "
                    "8- or 16-bit)"
                )
        elif values.size and mode == "I":
            low, high = int(values.min()), int(values.max())
            if low < 0 or high > 65535:
                raise LoadError(
                    f"32-bit integer image has values in [{low}, {high}]; only 0..65535 (16-bit data) is understood "
                    "(save it as 8- or 16-bit)"
                )
        return _gray8(values, 1.0 if mode == "F" else 65535.0).convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")  # Pillow has no direct La -> RGBA
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise LoadError(f"image mode {mode!r} cannot be converted to RGB ({e})") from None


def decode_image(source: Source, image_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image (a path, or a file's bytes) to a ``(3, H, W)`` uint8 tensor (RGB; ``H = W = image_size`` when
    given, bilinear resize).

    The dataset caches this compact form; ``load_image`` is the float view models consume.
    """
    path = source if isinstance(source, (bytes, bytearray)) else Path(source)
    header = _open_image(path, max_pixels)
    try:
        # verify() walks the chunk structure and CRCs without decoding; it leaves the object unusable, hence the
        # second open. load() then decodes and catches truncation that verify() cannot see (missing IDAT data).
        header.verify()
    except Exception as e:  # noqa: BLE001 -- as below: any failure here is a broken file
        raise LoadError(f"file is not a valid image ({_image_fault(e, header.format)})") from None
    finally:
        header.close()
    src = _open_image(path, max_pixels)
    try:
        src.load()
        im = to_rgb(ImageOps.exif_transpose(src))
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        array = np.array(im, dtype=np.uint8)  # (H, W, 3); a copy, so the tensor owns writable memory
    except LoadError:
        raise
    except Exception as e:  # noqa: BLE001 -- a crafted file can make any decoder step fail; it is the file's fault
        raise LoadError(f"file is not a valid image ({_image_fault(e, src.format)})") from None
    finally:
        src.close()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)


def load_image(path: Source, image_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load an image as a ``(3, H, W)`` float32 tensor in ``[0, 1]``; see ``decode_image``."""
    return decode_image(path, image_size, max_pixels).float().div_(255.0)


def load_audio(source: Source, sample_rate: int = 16000, max_seconds: float | None = 8.0) -> torch.Tensor:
    """Load audio (a path, or a file's bytes) as a mono float32 ``(S,)`` waveform at ``sample_rate``, at most
    ``max_seconds`` long.

    Channels are averaged; the file is read only up to the cap (so a 2-hour file costs no more than the cap);
    empty clips and clips containing NaN or infinite samples are refused.
    """
    size, handle = _size_and_handle(source)
    if size == 0:
        raise LoadError("file is empty (0 bytes)")
    try:
        info = sf.info(handle)
        frames = info.frames
        if max_seconds is not None:
            # Read a little past the cap at the file's own rate; the exact cut happens after resampling.
            frames = min(frames, math.ceil(max_seconds * info.samplerate) + 1)
        if info.samplerate <= 0:
            raise LoadError(f"audio declares a sample rate of {info.samplerate} Hz")
        _, handle = _size_and_handle(source)  # a fresh stream: sf.info consumed the first
        data, file_rate = sf.read(handle, frames=frames, dtype="float32", always_2d=True)  # (N, C)
    except LoadError:
        raise
    except Exception as e:  # noqa: BLE001 -- libsndfile on a crafted or truncated file: the file's fault
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the uploaded bytes", str(e))
        raise LoadError(f"file is not a readable audio file ({reason})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise LoadError("audio has no samples")
    if not np.isfinite(data).all():
        raise LoadError("audio contains NaN or infinite samples")
    wave = torch.from_numpy(data.mean(axis=1, dtype=np.float32))  # (N,) mono
    if file_rate != sample_rate:
        # Exact rational resampling builds a (new/g) x (old/g) filter bank, g = gcd: tiny for the usual rates (44100 ->
        # 16000: 160 x 441) but gigabytes for an odd one (44101 Hz: 16000 x 44101): such a header is refused.
        g = math.gcd(int(file_rate), int(sample_rate))
        if (int(file_rate) // g) * (int(sample_rate) // g) > MAX_RESAMPLE_RATIO_PRODUCT:
            raise LoadError(
                f"unusual sample rate {file_rate} Hz: resampling it to {sample_rate} Hz exactly is too costly; convert "
                "the file to a common rate (16000, 22050, 44100, 48000 Hz ...)"
            )
        wave = AF.resample(wave, orig_freq=int(file_rate), new_freq=int(sample_rate))
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sample_rate))]
    if wave.numel() == 0:
        raise LoadError("audio has no samples")
    return wave.contiguous()
