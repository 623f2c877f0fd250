"""Near-duplicate images by perceptual hash (pHash), for ``omnifuse curate --dedup``.

pHash (Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions", 2010; the ``phash`` of the
``imagehash`` package): the image in grayscale, resized to 32x32, its 2-D DCT-II, the 8x8 lowest frequencies, each bit
set where the coefficient is above their median: 64 bits that survive re-encoding (JPEG), small resizes and mild
brightness changes, while images with different content differ in many bits. Two images are near-duplicates when the
Hamming distance of their hashes is at most a threshold (``omnifuse curate --dedup-distance``).
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


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicate_groups(hashes: Sequence[int], max_distance: int) -> list[tuple[int, int]]:
    """For each hash in order, ``(index of its representative, distance)``: the first earlier hash within
    ``max_distance`` bits that is itself a representative (its own first occurrence), else itself with distance 0.

    Comparing against representatives only keeps groups from chaining (A~B, B~C does not pull in a C far from A).
    Vectorised over the representatives found so far: ~n^2/2 64-bit comparisons, a second for 10^4 images."""
    reps = np.zeros(len(hashes), dtype=np.uint64)
    rep_index: list[int] = []
    out: list[tuple[int, int]] = []
    for i, h in enumerate(hashes):
        if rep_index:
            x = np.bitwise_xor(reps[: len(rep_index)], np.uint64(h))  # (R,)
            distance = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)  # popcount per rep
            j = int(np.argmax(distance <= max_distance))
            if distance[j] <= max_distance:
                out.append((rep_index[j], int(distance[j])))
                continue
        reps[len(rep_index)] = np.uint64(h)
        rep_index.append(i)
        out.append((i, 0))
    return out
