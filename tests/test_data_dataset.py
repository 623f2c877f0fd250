"""ManifestDataset: bad inputs are fatal RecordErrors in fit mode and reported failures in predict mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ImageCache, ManifestDataset
from omnifuse.data.records import RecordError
from omnifuse.data.tokenizer import ByteTokenizer

from .test_data_loaders import png_header_only

GOOD = {"id": "good", "task": "vqa", "image": "good.png", "audio": "good.wav", "text": "what?", "target": "red"}

# case -> (the bad manifest line, the field the error must name). The record id is "bad" unless the line has none.
CASES = {
    "truncated_png": ({"id": "bad", "task": "vqa", "image": "truncated.png", "target": "x"}, "image"),
    "text_named_png": ({"id": "bad", "task": "vqa", "image": "text.png", "target": "x"}, "image"),
    "zero_byte_wav": ({"id": "bad", "task": "vqa", "audio": "zero.wav", "target": "x"}, "audio"),
    "nan_wav": ({"id": "bad", "task": "vqa", "audio": "nan.wav", "target": "x"}, "audio"),
    "unknown_task": ({"id": "bad", "task": "translate", "text": "hi", "target": "x"}, "task"),
    "missing_target": ({"id": "bad", "task": "vqa", "text": "hi"}, "target"),
    "dotdot_escape": ({"id": "bad", "task": "vqa", "image": "../outside.png", "target": "x"}, "image"),
    "absolute_outside": ({"id": "bad", "task": "vqa", "image": "<ABS>", "target": "x"}, "image"),
    "invalid_json_line": ('{"id": "bad", "task": "vqa", "text": "hi" "target": "x"}', "<json>"),
    "text_50mb": ({"id": "bad", "task": "vqa", "text": "<HUGE>", "target": "x"}, "text"),
    "png_bomb_header": ({"id": "bad", "task": "vqa", "image": "bomb.png", "target": "x"}, "image"),
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / "good.png")
    full = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "text.png").write_text("plain text, not a PNG\n")
    (root / "bomb.png").write_bytes(png_header_only(30000, 30000))
    sf.write(root / "good.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 8000, subtype="FLOAT")
    (root / "zero.wav").touch()
    sf.write(root / "nan.wav", np.full(800, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "outside.png")
    return root


def write_manifest(folder: Path, bad_line: dict | str) -> Path:
    if isinstance(bad_line, dict):
        bad_line = dict(bad_line)
        if bad_line.get("image") == "<ABS>":
            bad_line["image"] = str((folder.parent / "outside.png").resolve())
        if bad_line.get("text") == "<HUGE>":
            bad_line["text"] = "y" * (50 * 2**20)
        bad_line = json.dumps(bad_line)
    path = folder / "manifest.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + bad_line + "\n")
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_mode_bad_record_is_fatal_and_named(folder: Path, case: str):
    line, field = CASES[case]
    manifest = write_manifest(folder, line)
    expected_id = "line 2" if field == "<json>" else "bad"
    with pytest.raises(RecordError) as info:
        # Structural problems fail at construction (manifest validation), undecodable files when loaded.
        dataset = ManifestDataset(manifest, mode="fit", image_size=16, sample_rate=8000)
        for i in range(len(dataset)):
            dataset[i]
    assert (info.value.record_id, info.value.field) == (expected_id, field)
    assert str(info.value).startswith(f"record {expected_id!r}: field {field!r}: ")


@pytest.mark.parametrize("case", sorted(set(CASES) - {"missing_target"}))
def test_predict_mode_bad_record_is_reported(folder: Path, case: str):
    line, field = CASES[case]
    manifest = write_manifest(folder, line)
    dataset = ManifestDataset(manifest, mode="predict", image_size=16, sample_rate=8000)
    batch = Collator(ByteTokenizer())([dataset[i] for i in range(len(dataset))])
    expected_id = "line 2" if field == "<json>" else "bad"
    assert batch.ids == ["good"]
    assert batch.image.shape == (1, 3, 16, 16) and batch.audio.shape == (1, 8000)
    assert len(batch.failed) == 1
    failed_id, reason = batch.failed[0]
    assert failed_id == expected_id and reason.startswith(f"field {field!r}: ")


def test_predict_mode_accepts_missing_target(folder: Path):
    manifest = write_manifest(folder, CASES["missing_target"][0])
    dataset = ManifestDataset(manifest, mode="predict", image_size=16, sample_rate=8000)
    assert [dataset[i].error for i in range(2)] == [None, None]


def test_fit_mode_counts_other_bad_records(folder: Path):
    path = folder / "m.jsonl"
    path.write_text("\n".join(["{", "[1]", json.dumps(GOOD), "nope"]) + "\n")
    with pytest.raises(RecordError, match="2 more invalid record") as info:
        ManifestDataset(path, mode="fit")
    assert info.value.record_id == "line 1"


def test_good_sample_content(folder: Path):
    manifest = write_manifest(folder, CASES["missing_target"][0])
    sample = ManifestDataset(manifest, mode="predict", image_size=None, sample_rate=16000)[0]
    assert sample.image.shape == (3, 20, 30)  # no resize when image_size is None
    assert sample.audio.shape == (16000,)  # 1 s at 8 kHz resampled to 16 kHz
    assert (sample.text, sample.target, sample.task) == ("what?", "red", "vqa")


def test_limit_is_a_deterministic_subset_in_file_order(tmp_path: Path):
    lines = [json.dumps({"id": f"r{i}", "task": "vqa", "text": f"q{i}", "target": "a"}) for i in range(50)]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    a = ManifestDataset(path, limit=7, seed=3).ids
    assert a == ManifestDataset(path, limit=7, seed=3).ids
    assert len(a) == 7 and len(set(a)) == 7
    assert a == sorted(a, key=lambda s: int(s[1:]))
    assert a != ManifestDataset(path, limit=7, seed=4).ids
    assert len(ManifestDataset(path, limit=None).ids) == 50


def test_skip_ids(tmp_path: Path):
    lines = [json.dumps({"id": f"r{i}", "task": "vqa", "text": "q"}) for i in range(5)]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert ManifestDataset(path, mode="predict", skip_ids={"r1", "r3"}).ids == ["r0", "r2", "r4"]


def test_image_cache_is_bounded_lru():
    cache = ImageCache(max_bytes=3 * 12)  # room for three 12-byte tensors
    tensors = {k: torch.zeros(12, dtype=torch.uint8) for k in "abcd"}
    for k in "abc":
        cache.put(Path(k), tensors[k])
    assert cache.get(Path("a")) is not None  # "a" becomes most recent
    cache.put(Path("d"), tensors["d"])
    assert len(cache) == 3 and cache.bytes == 36
    assert cache.get(Path("b")) is None  # the least recently used went
    assert all(cache.get(Path(k)) is not None for k in "acd")


def test_dataset_reuses_decoded_images(folder: Path):
    lines = [json.dumps({"id": f"r{i}", "task": "vqa", "image": "good.png", "target": "a"}) for i in range(4)]
    path = folder / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dataset = ManifestDataset(path, image_size=8)
    images = [dataset[i].image for i in range(4)]
    assert len(dataset.cache) == 1
    assert all(torch.equal(images[0], x) for x in images)
    images[0].fill_(0)  # callers get their own float copy; the cached pixels are untouched
    assert dataset[1].image.any()


def test_checked_images_are_not_decoded_again(folder: Path, monkeypatch: pytest.MonkeyPatch):
    """check_files keeps what it decoded: the first epoch reads the cache, and gives the pixels a fresh decode gives."""
    from omnifuse.data import dataset as dataset_module
    from omnifuse.data.loaders import decode_image

    lines = [json.dumps({"id": f"r{i}", "task": "vqa", "image": "good.png", "target": "a"}) for i in range(3)]
    path = folder / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dataset = ManifestDataset(path, image_size=8)
    dataset.check_files()
    calls = []
    monkeypatch.setattr(dataset_module, "decode_image", lambda *a, **k: calls.append(a) or decode_image(*a, **k))
    images = [dataset[i].image for i in range(3)]
    assert calls == []
    expected = decode_image(folder / "good.png", 8).float() / 255.0  # an independent decode of the same file
    assert all(torch.equal(x, expected) for x in images)
    # With the cache off, every sample decodes its file.
    uncached = ManifestDataset(path, image_size=8, image_cache_mb=0)
    uncached.check_files()
    calls.clear()
    assert [torch.equal(uncached[i].image, expected) for i in range(3)] == [True] * 3 and len(calls) == 3
