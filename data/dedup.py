"""Near-duplicate images by perceptual hash (pHash), for ``omnifuse curate --dedup``.

pHash (Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions", 2010; the ``phash`` of the
``imagehash`` package): the image in grayscale, resized to 32x32, its 2-D DCT-II, the 8x8 lowest frequencies, each bit
set where the coefficient is above their median: 64 bits that survive re-encoding (JPEG), small resizes and mild
brightness changes, while images with different content differ in many bits. The hash sees structure, not colour:
on easy-VQA a red and a green circle in one place hash alike. So a pair within the distance is confirmed on the
pixels: the mean absolute difference of their 8x8 RGB thumbnails (area averages, which smooth out re-encoding noise)
must be at most a second threshold (``--dedup-pixel-diff``, default 0.013 of the full range: on copies injected into
easy-VQA's validation images, JPEG-q50 and resized copies differ from their originals by at most 0.0091, and distinct
images within 6 bits of each other by at least 0.0177; ``benchmarks/curate_quality.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

HASH_SIZE = 8  # 8x8 low-frequency coefficients: 64 bits
_SIDE = 4 * HASH_SIZE  # the image is reduced to 32x32 before the DCT


def _dct_matrix(n: int) -> np.ndarray:
    """The (unnormalised) DCT-II as an ``(n, n)`` matrix: ``X[k] = 2 sum_j x[j] cos(pi k (2j + 1) / (2n))``."""
    k = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return 2.0 * np.cos(math.pi * k * (2 * j + 1) / (2 * n))


_DCT = _dct_matrix(_SIDE)


def phash(image: torch.Tensor | Image.Image) -> int:
    """The 64-bit perceptual hash of one image (``(3, H, W)`` uint8 tensor, as ``decode_image`` returns, or a PIL
    image), as a Python int (bit ``i`` = low-frequency coefficient ``i`` in row-major order is above the median)."""
    if isinstance(image, torch.Tensor):
        image = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    pixels = np.asarray(image.convert("L").resize((_SIDE, _SIDE), Image.LANCZOS), dtype=np.float64)  # (32, 32)
    coeffs = (_DCT @ pixels @ _DCT.T)[:HASH_SIZE, :HASH_SIZE]  # DCT over columns, then rows; the low corner
    bits = (coeffs > np.median(coeffs)).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


THUMB_SIZE = 8


def thumbnail(image: torch.Tensor | Image.Image) -> np.ndarray:
    """The image's ``(8, 8, 3)`` RGB thumbnail in [0, 1], each pixel the mean of its area (PIL's BOX filter)."""
    if isinstance(image, torch.Tensor):
        image = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    small = image.convert("RGB").resize((THUMB_SIZE, THUMB_SIZE), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicate_groups(
    hashes: Sequence[int],
    max_distance: int,
    thumbnails: Sequence[np.ndarray] | None = None,
    max_pixel_diff: float | None = None,
) -> list[tuple[int, int]]:
    """For each hash in order, ``(index of its representative, distance)``: the first earlier representative (an
    item that was its own first occurrence) within ``max_distance`` bits and, with ``thumbnails``, whose thumbnail
    differs by at most ``max_pixel_diff`` (mean absolute difference); else itself with distance 0.

    Comparing against representatives only keeps groups from chaining (A~B, B~C does not pull in a C far from A).
    The bit distances are vectorised over the representatives found so far: ~n^2/2 64-bit comparisons, about a
    second for 10^4 images."""
    reps = np.zeros(len(hashes), dtype=np.uint64)
    rep_index: list[int] = []
    out: list[tuple[int, int]] = []
    for i, h in enumerate(hashes):
        match = None
        if rep_index:
            x = np.bitwise_xor(reps[: len(rep_index)], np.uint64(h))  # (R,)
            distance = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)  # popcount per rep
            for j in np.flatnonzero(distance <= max_distance):
                r = rep_index[j]
                if thumbnails is None or float(np.abs(thumbnails[i] - thumbnails[r]).mean()) <= max_pixel_diff:
                    match = (r, int(distance[j]))
                    break
        if match is not None:
            out.append(match)
            continue
        reps[len(rep_index)] = np.uint64(h)
        rep_index.append(i)
        out.append((i, 0))
    return out
