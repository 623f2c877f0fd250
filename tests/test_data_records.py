"""Record validation: every problem is a RecordError naming the record id, the field and the reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omnifuse.data.records import MAX_TEXT_BYTES, Record, RecordError, parse_record, read_manifest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG fake, never decoded here")
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    (tmp_path / "s.json").write_text('{"type": "object"}')
    return tmp_path


def _parse(raw, root, require_target=True):
    return parse_record(raw, root, require_target=require_target, line_no=3)


def test_valid_record_resolves_paths_and_keeps_extra_keys(root: Path):
    rec = _parse(
        {"id": "q1", "task": "vqa", "image": "img/a.png", "text": "what?", "target": "red", "answers": ["red", "re"]},
        root,
    )
    assert isinstance(rec, Record)
    assert rec.image == (root / "img" / "a.png").resolve()
    assert rec.audio is None and rec.text == "what?" and rec.target == "red"
    assert rec.meta == {"answers": ["red", "re"]}


def test_json_record_loads_schema_file_and_keeps_json_target(root: Path):
    target = {"shape": "circle", "bbox": [1, 2, 3, 4], "ok": None}
    rec = _parse({"id": "j", "task": "json", "image": "img/a.png", "target": target, "schema": "s.json"}, root)
    assert rec.schema == {"type": "object"}
    assert rec.target == target


def test_inline_schema_and_absolute_path_inside_root(root: Path):
    path = str((root / "img" / "a.png").resolve())
    rec = _parse({"id": "j", "task": "json", "image": path, "target": [1], "schema": {"type": "array"}}, root)
    assert rec.image == Path(path) and rec.schema == {"type": "array"}


def test_error_message_names_record_and_field():
    err = RecordError("q17", "image", "file is not a valid image (truncated PNG)")
    assert str(err) == "record 'q17': field 'image': file is not a valid image (truncated PNG)"
    assert (err.record_id, err.field) == ("q17", "image")
    assert err.detail == "field 'image': file is not a valid image (truncated PNG)"


def _outside_file(root: Path) -> Path:
    outside = root.parent / f"{root.name}_outside.png"
    outside.write_bytes(b"x")
    return outside


@pytest.mark.parametrize(
    "case, field",
    [
        ("unknown_task", "task"),
        ("missing_target", "target"),
        ("dotdot_escape", "image"),
        ("absolute_outside", "image"),
        ("symlink_escape", "image"),
        ("missing_file", "audio"),
        ("huge_text", "text"),
        ("empty_text", "text"),
        ("empty_id", "id"),
        ("numeric_id", "id"),
        ("target_not_string", "target"),
        ("schema_on_vqa", "schema"),
        ("no_inputs", "image"),
        ("bad_meta", "meta"),
    ],
)
def test_bad_record_raises_record_error(root: Path, case: str, field: str):
    good = {"id": "r1", "task": "vqa", "image": "img/a.png", "text": "q", "target": "a"}
    raw = dict(good)
    if case == "unknown_task":
        raw["task"] = "segmentation"
    elif case == "missing_target":
        del raw["target"]
    elif case == "dotdot_escape":
        _outside_file(root)
        raw["image"] = f"../{root.name}_outside.png"
    elif case == "absolute_outside":
        raw["image"] = str(_outside_file(root))
    elif case == "symlink_escape":
        os.symlink(_outside_file(root), root / "link.png")
        raw["image"] = "link.png"
    elif case == "missing_file":
        raw["audio"] = "nope.wav"
    elif case == "huge_text":
        raw["text"] = "x" * (50 * 2**20)  # 50 MB
    elif case == "empty_text":
        raw["text"] = "  "
    elif case == "empty_id":
        raw["id"] = ""
    elif case == "numeric_id":
        raw["id"] = 17
    elif case == "target_not_string":
        raw["target"] = ["a"]
    elif case == "schema_on_vqa":
        raw["schema"] = {"type": "object"}
    elif case == "no_inputs":
        raw = {"id": "r1", "task": "vqa", "target": "a"}
    elif case == "bad_meta":
        raw["meta"] = [1, 2]
    with pytest.raises(RecordError) as info:
        _parse(raw, root)
    err = info.value
    assert err.field == field
    # Errors raised before a valid id exists name the line instead.
    assert err.record_id == ("line 3" if field == "id" else "r1")
    assert str(err).startswith(f"record {err.record_id!r}: field {field!r}: ")


def test_huge_text_error_reports_size(root: Path):
    raw = {"id": "big", "task": "vqa", "image": "img/a.png", "text": "é" * (MAX_TEXT_BYTES // 2 + 1), "target": "a"}
    with pytest.raises(RecordError, match="too large") as info:
        _parse(raw, root)
    assert info.value.field == "text"  # 2-byte characters: fewer characters than the limit, more bytes


def test_missing_target_is_fine_for_inference(root: Path):
    rec = _parse({"id": "p", "task": "caption", "image": "img/a.png"}, root, require_target=False)
    assert rec.target is None


def test_read_manifest_reports_bad_lines_and_duplicates(root: Path):
    lines = [
        json.dumps({"id": "a", "task": "vqa", "text": "q", "target": "x"}),
        '{"id": "b", "task": "vqa", "text": ',  # cut short
        "",
        json.dumps({"id": "a", "task": "vqa", "text": "again", "target": "y"}),
        json.dumps({"id": "c", "task": "nope", "text": "q", "target": "x"}),
        json.dumps({"id": "d", "task": "caption", "image": "img/a.png", "target": "z"}),
    ]
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    items = read_manifest(manifest)
    assert len(items) == 5  # the blank line is skipped
    kinds = [
        (type(i).__name__, getattr(i, "record_id", getattr(i, "id", None)), getattr(i, "field", None)) for i in items
    ]
    assert kinds == [
        ("Record", "a", None),
        ("RecordError", "line 2", "<json>"),
        ("RecordError", "line 4", "id"),  # the later copy is refused under its own line, so "a" names one line
        ("RecordError", "c", "task"),
        ("Record", "d", None),
    ]
    assert "'a'" in items[2].reason and "line 1" in items[2].reason  # the id, and the line that owns it
    assert items[4].image == (root / "img" / "a.png").resolve()  # resolved against the manifest's folder


def test_read_manifest_invalid_utf8_line(root: Path):
    manifest = root / "m.jsonl"
    manifest.write_bytes(b'{"id": "\xff"}\n')
    (item,) = read_manifest(manifest)
    assert isinstance(item, RecordError) and (item.record_id, item.field) == ("line 1", "<json>")


def test_record_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(RecordError("q", "audio", "bad")))
    assert (err.record_id, err.field, err.reason) == ("q", "audio", "bad")
