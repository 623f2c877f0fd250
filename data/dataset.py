"""``ManifestDataset``: a JSONL manifest as a map-style dataset of loaded ``Sample`` objects.

Two modes:

- ``fit`` (training, validation, test): every record must be valid and carry a target. The manifest is validated
  when the dataset is built and :meth:`ManifestDataset.check_files` decodes every file once (the data module calls it
  in ``setup``), so a bad line or file fails before the first step with ``RecordError`` naming the record and field;
  with ``skip_bad`` such records are left out and listed in ``skipped`` instead (docs/inputs.md).
- ``predict`` (batch inference): nothing is fatal. An invalid record or an undecodable file becomes a failed sample
  (``Sample.error``) that the collator reports in ``batch.failed`` as ``(id, reason)``.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset

from omnifuse.data.augment import AugmentConfig, Augmenter
from omnifuse.data.loaders import DEFAULT_MAX_PIXELS, LoadError, decode_image, load_audio
from omnifuse.data.records import Record, RecordError, read_manifest
from omnifuse.data.sample import Sample

MODES: tuple[str, ...] = ("fit", "predict")


class ImageCache:
    """A bounded LRU of decoded uint8 images, keyed by path.

    Many records share one image (easy-VQA: ~10 questions per image), so decoding each once per worker saves most of
    the loading time. uint8 keeps a 64x64 image at 12 KiB; the bound is in bytes so a large ``image_size`` cannot grow
    the cache past it. Each DataLoader worker process holds its own copy.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Path, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Path) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Path, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.numel() * evicted.element_size()


def subsample(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a deterministic random subset of ``range(n)`` of size ``limit`` (all when None), in file order."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return sorted(random.Random(seed).sample(range(n), limit))


class ManifestDataset(Dataset):
    """Records of a manifest (or an in-memory list of records) loaded into ``Sample`` objects.

    Args:
        manifest: path to a JSONL manifest, or a sequence of ``Record`` / ``RecordError`` (e.g. from ``read_manifest``).
        mode: ``"fit"`` (bad records raise ``RecordError``) or ``"predict"`` (bad records become failed samples).
        image_size: images are resized to ``image_size x image_size`` (bilinear) so a batch stacks; None keeps sizes.
        sample_rate: audio is resampled to this rate (Hz).
        max_audio_seconds: audio is cut to this length (None: no cap).
        max_image_pixels: decompression-bomb guard, checked from the header before decoding.
        image_cache_mb: bound of the per-process cache of decoded images (0 disables it).
        limit: keep a deterministic random subset of this many records (quick runs); None keeps all.
        seed: seed of that subset.
        skip_ids: ids to leave out (a resumed prediction job skips what it already wrote).
        skip_bad: fit mode only: leave invalid records out (listed in ``skipped``) instead of raising ``RecordError``;
            :meth:`check_files` does the same for records whose files cannot be decoded.
        augment: label-safe augmentation of each loaded sample (:mod:`.augment`); the data module sets it on the
            training split only.
    """

    def __init__(
        self,
        manifest: str | Path | Sequence[Record | RecordError],
        mode: str = "fit",
        image_size: int | None = 64,
        sample_rate: int = 16000,
        max_audio_seconds: float | None = 8.0,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        image_cache_mb: float = 64.0,
        limit: int | None = None,
        seed: int = 0,
        skip_ids: Iterable[str] = (),
        skip_bad: bool = False,
        augment: AugmentConfig | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known modes: {', '.join(MODES)}")
        self.mode = mode
        self.manifest = Path(manifest) if isinstance(manifest, (str, Path)) else None
        if self.manifest is not None:
            items = read_manifest(self.manifest, require_target=mode == "fit")
        else:
            items = list(manifest)
            if mode == "fit":
                for item in items:
                    if isinstance(item, Record) and item.target is None:
                        raise RecordError(item.id, "target", "missing target (required for training and evaluation)")
        skip = set(skip_ids)
        if skip:
            items = [it for it in items if (it.id if isinstance(it, Record) else it.record_id) not in skip]
        self.items: list[Record | RecordError] = [items[i] for i in subsample(len(items), limit, seed)]
        self.errors = [it for it in self.items if isinstance(it, RecordError)]
        self.skip_bad = skip_bad
        # Fit mode with skip_bad: the invalid records left out, in manifest order.
        self.skipped: list[RecordError] = []
        if mode == "fit" and self.errors:
            if not skip_bad:
                raise self._first_of(self.errors, "invalid")
            self.skipped, self.errors = self.errors, []
            self.items = [it for it in self.items if isinstance(it, Record)]
        self.image_size = image_size
        self.sample_rate = sample_rate
        self.max_audio_seconds = max_audio_seconds
        self.max_image_pixels = max_image_pixels
        self.cache = ImageCache(int(image_cache_mb * 2**20))
        augmenter = Augmenter(augment) if augment is not None else None
        self.augmenter = augmenter if augmenter is not None and augmenter.active else None

    def _first_of(self, errors: list[RecordError], what: str) -> RecordError:
        """The error to raise for ``errors``: the first one, with how many more there are."""
        first = errors[0]
        if len(errors) == 1:
            return first
        where = f" in {str(self.manifest)!r}" if self.manifest is not None else ""
        return RecordError(
            first.record_id, first.field, f"{first.reason} (and {len(errors) - 1} more {what} record(s){where})"
        )

    def check_files(self, workers: int | None = None) -> list[RecordError]:
        """Decode every image and audio file of the records once, so that a file that cannot be used is found before
        training starts instead of when its batch comes up (fit mode: a data module calls this in ``setup``). The decoded
        images stay in the image cache (as far as its bound allows), so loading them later does not decode them again.

        Each distinct file is decoded once (``workers`` threads: decoding releases the GIL); every record using a
        bad file gets its own ``RecordError``. Raises the first of them (with how many more) unless ``skip_bad``, in
        which case those records are left out and added to ``skipped``. Returns the errors found."""
        users: dict[tuple[str, Path], list[int]] = {}
        for index, item in enumerate(self.items):
            if isinstance(item, Record):
                for field_name in ("image", "audio"):
                    path = getattr(item, field_name)
                    if path is not None:
                        users.setdefault((field_name, path), []).append(index)
        if not users:
            return []

        def fault(key: tuple[str, Path]) -> tuple[str | None, torch.Tensor | None]:
            """(why the file cannot be used or None, the decoded image to keep or None)."""
            field_name, path = key
            try:
                if field_name == "image":
                    pixels = decode_image(path, self.image_size, self.max_image_pixels)
                    return None, pixels if self.cache.max_bytes > 0 else None
                load_audio(path, self.sample_rate, self.max_audio_seconds)
            except (LoadError, OSError) as e:
                return str(e), None
            except Exception as e:  # noqa: BLE001 -- whatever a broken file makes a decoder raise, it is the file's
                return f"{type(e).__name__}: {e}", None
            return None, None

        keys = list(users)
        # The CPUs this process may use (affinity), not the machine's count (see app/threads.py).
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = workers or min(8, usable)
        bad: dict[int, RecordError] = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for key, (reason, pixels) in zip(keys, pool.map(fault, keys), strict=True):
                # The images just decoded go into the cache (bounded; put from this thread only), so the first epoch
                # does not decode them again: the main recipe's first 543 steps waited ~8 ms each on decoding.
                if pixels is not None:
                    self.cache.put(key[1], pixels)
                if reason is None:
                    continue
                for index in users[key]:
                    bad.setdefault(index, RecordError(self.items[index].id, key[0], reason))
        errors = [bad[i] for i in sorted(bad)]
        self.refuse(errors, "unreadable")
        return errors

    def refuse(self, errors: list[RecordError], what: str = "invalid") -> None:
        """Records found unusable after loading the manifest (fit mode): raise the first error (with how many more
        ``what`` records there are) or, with ``skip_bad``, leave them out and add them to ``skipped``."""
        if not errors:
            return
        if not self.skip_bad:
            raise self._first_of(errors, what)
        ids = {e.record_id for e in errors}
        self.items = [it for it in self.items if not (isinstance(it, Record) and it.id in ids)]
        self.skipped += errors

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [it.id if isinstance(it, Record) else it.record_id for it in self.items]

    @property
    def records(self) -> list[Record]:
        return [it for it in self.items if isinstance(it, Record)]

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        if isinstance(item, RecordError):  # only reachable in predict mode
            return Sample.failed(item.record_id, item.detail)
        try:
            return self._load(item)
        except RecordError as e:
            if self.mode == "fit":
                raise
            return Sample.failed(item.id, e.detail, task=item.task)

    def _load(self, record: Record) -> Sample:
        image = audio = None
        if record.image is not None:
            try:
                image = self._image(record.image)
            except (LoadError, OSError) as e:
                raise RecordError(record.id, "image", str(e)) from e
            except Exception as e:  # noqa: BLE001 -- a decoder failure on a crafted file must not end the job
                raise RecordError(record.id, "image", f"{type(e).__name__}: {e}") from e
        if record.audio is not None:
            try:
                audio = load_audio(record.audio, self.sample_rate, self.max_audio_seconds)
            except (LoadError, OSError) as e:
                raise RecordError(record.id, "audio", str(e)) from e
            except Exception as e:  # noqa: BLE001 -- as above
                raise RecordError(record.id, "audio", f"{type(e).__name__}: {e}") from e
        text = record.text
        if self.augmenter is not None:  # training samples only (the data module gives the train split an augmenter)
            if image is not None:
                image = self.augmenter.image(image, record.task)
            if text is not None:
                text = self.augmenter.text(text, record.task)
        return Sample(
            id=record.id,
            task=record.task,
            image=image,
            audio=audio,
            text=text,
            target=record.target,
            schema=record.schema,
            meta=record.meta,
        )

    def _image(self, path: Path) -> torch.Tensor:
        pixels = self.cache.get(path)
        if pixels is None:
            pixels = decode_image(path, self.image_size, self.max_image_pixels)  # (3, H, W) uint8
            self.cache.put(path, pixels)
        return pixels.float().div_(255.0)  # (3, H, W) float32 in [0, 1]
