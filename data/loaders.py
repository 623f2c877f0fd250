"""Decoding one file into a tensor: images with PIL, audio with soundfile + torchaudio resampling.

Loaders raise ``LoadError`` (a ``ValueError``) with a reason a user can act on; the dataset wraps it into a
``RecordError`` that adds the record id and the field.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image, ImageOps, UnidentifiedImageError

# 4096 x 4096. Checked against the header before any pixel is decoded, so a crafted 30000 x 30000 PNG costs nothing.
DEFAULT_MAX_PIXELS = 4096 * 4096


class LoadError(ValueError):
    """A file that exists but cannot be used as the modality it was given for."""


def _open_image(path: Path, max_pixels: int) -> Image.Image:
    """Open (header only) and check the declared size; no pixel data is decoded here."""
    if path.stat().st_size == 0:
        raise LoadError("file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global limit; our explicit max_pixels check below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise LoadError(f"image too large (decompression-bomb guard; refused before decoding): {e}") from None
    except UnidentifiedImageError:
        raise LoadError("file is not a valid image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise LoadError(f"file is not a valid image ({e})") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise LoadError(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        im.close()
        raise LoadError(
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb guard; refused before decoding)"
        )
    return im


def _image_fault(error: Exception, fmt: str | None) -> str:
    message = str(error) or type(error).__name__
    if "truncated" in message.lower():
        return f"truncated {fmt or 'image'}: {message}"
    return f"corrupt {fmt or 'image'} data: {message}"


def decode_image(path: str | Path, image_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image to a ``(3, H, W)`` uint8 tensor (RGB; ``H = W = image_size`` when given, bilinear resize).

    The dataset caches this compact form; ``load_image`` is the float view models consume.
    """
    path = Path(path)
    header = _open_image(path, max_pixels)
    try:
        # verify() walks the chunk structure and CRCs without decoding; it leaves the object unusable, hence the
        # second open. load() then decodes and catches truncation that verify() cannot see (missing IDAT data).
        header.verify()
    except (OSError, SyntaxError, ValueError) as e:
        raise LoadError(f"file is not a valid image ({_image_fault(e, header.format)})") from None
    finally:
        header.close()
    src = _open_image(path, max_pixels)
    try:
        src.load()
        im = ImageOps.exif_transpose(src)
        if im.mode != "RGB":
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Composite transparent pixels onto white instead of exposing whatever colour they happen to store.
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            else:
                im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        array = np.array(im, dtype=np.uint8)  # (H, W, 3); a copy, so the tensor owns writable memory
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise LoadError(f"file is not a valid image ({_image_fault(e, src.format)})") from None
    finally:
        src.close()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)


def load_image(path: str | Path, image_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load an image as a ``(3, H, W)`` float32 tensor in ``[0, 1]``; see ``decode_image``."""
    return decode_image(path, image_size, max_pixels).float().div_(255.0)


def load_audio(path: str | Path, sample_rate: int = 16000, max_seconds: float | None = 8.0) -> torch.Tensor:
    """Load audio as a mono float32 ``(S,)`` waveform at ``sample_rate``, at most ``max_seconds`` long.

    Channels are averaged; the file is read only up to the cap (so a 2-hour file costs no more than the cap);
    empty clips and clips containing NaN or infinite samples are refused.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise LoadError("file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
        frames = info.frames
        if max_seconds is not None:
            # Read a little past the cap at the file's own rate; the exact cut happens after resampling.
            frames = min(frames, math.ceil(max_seconds * info.samplerate) + 1)
        data, file_rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise LoadError(f"file is not a readable audio file ({e})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise LoadError("audio has no samples")
    if not np.isfinite(data).all():
        raise LoadError("audio contains NaN or infinite samples")
    wave = torch.from_numpy(data.mean(axis=1, dtype=np.float32))  # (N,) mono
    if file_rate != sample_rate:
        wave = AF.resample(wave, orig_freq=int(file_rate), new_freq=int(sample_rate))
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sample_rate))]
    if wave.numel() == 0:
        raise LoadError("audio has no samples")
    return wave.contiguous()
