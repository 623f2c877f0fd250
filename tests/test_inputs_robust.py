"""No input is silently lost, doubled or answered from nothing (issue 21).

* a manifest with a UTF-8 byte-order mark keeps its first record;
* a duplicated id: the later line is refused under its own line label (``line N``), so every id names one line;
* a record whose only inputs the model has no encoder for is an error naming them; one with some readable inputs is
  predicted from those and says which it ignored;
* ``omnifuse fit``: a bad record fails before the first step, naming record and field, or is skipped and listed with
  ``--data.skip_bad_records true``;
* a hypothesis fuzz over manifest lines and media bytes: the job finishes and every non-blank line is accounted for
  exactly once (the expected key of each line is computed here from the raw lines, independently of the code), and the
  good records are predicted.
"""

from __future__ import annotations

import codecs
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from omnifuse.app.cli import cli_main, main
from omnifuse.app.predictor import Predictor
from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.data.easyvqa import prepare_easyvqa
from omnifuse.data.records import RecordError, read_manifest
from omnifuse.tasks.config import GenerationConfig
from omnifuse.tasks.model import OmniModel

TINY = str(Path(__file__).parent / "configs" / "tiny_vqa.yaml")
MODEL = {  # the tiny recipe's model: image + text encoders, no audio encoder
    "image_encoder": {"class_path": "omnifuse.encoders.TimmImageEncoder",
                      "init_args": {"model_name": "resnet10t", "feature_level": -3}},
    "text_encoder": {"class_path": "omnifuse.encoders.TextEncoder",
                     "init_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 64}},
    "fusion": {"n_layers": 1, "n_heads": 2},
    "decoder": {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_dense_layers": 1, "d_ff_dense": 64,
                "n_routed_experts": 4, "n_shared_experts": 1, "top_k": 2, "d_expert": 16},
}  # fmt: skip


def _png(path: Path, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _wav(path: Path) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.sin(np.arange(1600) / 5.0).astype(np.float32), 16000, format="WAV")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(OmniModel(**MODEL), generation=GenerationConfig(max_new_tokens=2), batch_size=4, image_size=32)


# ------------------------------------------------------------------------------------------------ manifest rules


def test_a_bom_does_not_cost_the_first_record(tmp_path):
    lines = [json.dumps({"id": f"q{i}", "task": "vqa", "text": "what?", "target": "yes"}) for i in range(3)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(codecs.BOM_UTF8 + "\n".join(lines).encode() + b"\n")
    assert [item.id for item in read_manifest(manifest)] == ["q0", "q1", "q2"]  # all Records, none an error


def _rows(folder: Path) -> tuple[list[dict], list[dict]]:
    read = lambda name: [json.loads(x) for x in (folder / name).read_text().splitlines()]  # noqa: E731
    return read("predictions.jsonl"), read("errors.jsonl")


def test_duplicate_ids_through_omnifuse_predict(tmp_path, capsys):
    _png(tmp_path / "a.png")
    lines = [
        {"id": "x", "task": "vqa", "image": "a.png", "text": "what shape?"},  # line 1 owns x
        {"id": "y", "task": "vqa", "image": "missing.png", "text": "what?"},  # line 2 owns y (itself invalid)
        {"id": "x", "task": "vqa", "image": "a.png", "text": "again"},  # line 3: duplicate of a good line
        {"id": "y", "task": "vqa", "image": "a.png", "text": "valid, but y is taken"},  # line 4: duplicate
        {"id": "z", "task": "vqa", "text": "fine"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    argv = ["predict", "--config", TINY, "--data.predict_manifest", str(manifest),
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    predictions, errors = _rows(tmp_path / "out")
    assert sorted(p["id"] for p in predictions) == ["x", "z"]
    by_id = {e["id"]: e["error"] for e in errors}
    assert sorted(by_id) == ["line 3", "line 4", "y"]  # each input line once; x and y each name one line
    assert "'x'" in by_id["line 3"] and "line 1" in by_id["line 3"]
    assert "'y'" in by_id["line 4"] and "line 2" in by_id["line 4"]
    # A restart on the same folder finds every line accounted for and writes nothing more.
    assert main(argv) == 0
    assert _rows(tmp_path / "out") == (predictions, errors)


def test_a_record_the_model_cannot_read_is_an_error_and_ignored_inputs_are_named(predictor, tmp_path):
    _png(tmp_path / "a.png")
    _wav(tmp_path / "a.wav")
    out = predictor.predict(
        [
            {"id": "audio-only", "task": "vqa", "audio": "a.wav"},
            {"id": "image-audio", "task": "vqa", "image": "a.png", "audio": "a.wav"},
            {"id": "image-text", "task": "vqa", "image": "a.png", "text": "what shape?"},
        ],
        root=tmp_path,
    )
    (error,) = out["errors"]
    assert error["id"] == "audio-only"
    assert "'audio-only'" in error["error"] and "audio" in error["error"] and "image, text" in error["error"]
    by_id = {p["id"]: p for p in out["predictions"]}
    assert sorted(by_id) == ["image-audio", "image-text"]
    assert by_id["image-audio"]["ignored_modalities"] == ["audio"]
    assert set(by_id["image-audio"]["modality_weights"]) == {"image"}
    assert "ignored_modalities" not in by_id["image-text"]


# ------------------------------------------------------------------------------------------------ fit


@pytest.fixture(scope="module")
def easyvqa(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("easyvqa")
    prepare_easyvqa(root, parts=("vqa",), limit_images=4)
    return root


def _train_manifest(root: Path, bad: list[dict]) -> Path:
    good = (root / "vqa_train.jsonl").read_text().splitlines()[:8]
    manifest = root / f"train_with_bad_{len(bad)}.jsonl"
    manifest.write_text("\n".join(good + [json.dumps(b) for b in bad]) + "\n")
    return manifest


BAD_FOR_FIT = [
    {"id": "bad-truncated", "task": "vqa", "image": "truncated.png", "text": "what?", "target": "yes"},
    {"id": "bad-audio-only", "task": "vqa", "audio": "a.wav", "target": "yes"},  # the tiny model has no audio encoder
]


@pytest.fixture(scope="module")
def fit_manifest(easyvqa) -> Path:
    data = _png(easyvqa / "whole.png")
    (easyvqa / "truncated.png").write_bytes(data[: len(data) // 2])
    _wav(easyvqa / "a.wav")
    return _train_manifest(easyvqa, BAD_FOR_FIT)


def test_datamodule_finds_a_broken_file_in_setup(fit_manifest):
    dm = MultimodalDataModule(train_manifest=str(fit_manifest), image_size=32)
    with pytest.raises(RecordError) as info:
        dm.setup("fit")  # before any dataloader exists, so before any step
    assert (info.value.record_id, info.value.field) == ("bad-truncated", "image")


def test_fit_fails_before_the_first_step(fit_manifest, tmp_path, capsys):
    argv = ["fit", "--config", TINY, "--data.train_manifest", str(fit_manifest), "--data.image_size", "32",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("omnifuse fit:")]
    assert "record 'bad-truncated': field 'image'" in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_fit_skips_and_lists_bad_records_when_asked(fit_manifest, tmp_path):
    cli = cli_main(
        ["fit", "--config", TINY, "--data.train_manifest", str(fit_manifest), "--data.image_size", "32",
         "--data.skip_bad_records", "true", "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path)]
    )  # fmt: skip
    assert cli.trainer.global_step == 1
    train = cli.datamodule.datasets["train"]
    good_ids = [json.loads(x)["id"] for x in fit_manifest.read_text().splitlines()[:8]]
    assert train.ids == good_ids  # every good record kept, in order
    (listing,) = tmp_path.rglob("skipped_records.jsonl")
    rows = [json.loads(x) for x in listing.read_text().splitlines()]
    assert [(r["split"], r["id"]) for r in rows] == [("train", "bad-truncated"), ("train", "bad-audio-only")]
    assert "field 'audio'" in rows[1]["error"] and "no encoder for audio" in rows[1]["error"]


# ------------------------------------------------------------------------------------------------ fuzz

LINE_LABEL = re.compile(r"line [0-9]+")
FILES = ["good.png", "good.wav", "noise.png", "noise.wav", "cut.png", "cut.wav", "missing.png", "../escape.png"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
field_values = {
    "id": st.text(max_size=6) | st.sampled_from(["good-0", "dup", "line 1", ""]) | json_values,
    "task": st.sampled_from(["vqa", "caption", "json", "dance"]) | json_values,
    "image": st.sampled_from(FILES) | json_values,
    "audio": st.sampled_from(FILES) | json_values,
    "text": st.text(max_size=12) | json_values,
    "target": json_values,
    "schema": st.sampled_from([{"type": "string"}, {"type": "bogus"}, "missing.json"]) | json_values,
    "meta": json_values,
}
random_record = st.fixed_dictionaries({}, optional=field_values)
raw_line = st.binary(max_size=20).filter(lambda b: b"\n" not in b) | st.just(b"{not json")


@st.composite
def manifests(draw) -> tuple[list[bytes], set[int]]:
    """Lines of a manifest (bytes) and the indices of the known-good records among them."""
    lines, good = [], set()
    for i in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["good", "record", "raw"]))
        if kind == "good":
            good.add(len(lines))
            record = {"id": f"good-{i}", "task": "vqa", "image": "good.png", "text": "what shape?", "target": "circle"}
            if draw(st.booleans()):
                record["audio"] = "good.wav"  # readable image and text, plus audio the model ignores
        elif kind == "record":
            record = draw(random_record)
        if kind == "raw":
            lines.append(draw(raw_line))
        else:
            lines.append(json.dumps(record).encode())
    return lines, good


def _expected_keys(lines: list[bytes]) -> list[str | None]:
    """The id under which each line must come back: its id when it is the first line to use that id, else its line
    label; None for a blank line. Written from the documented rules, not from the code."""
    keys, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            keys.append(None)
            continue
        try:
            raw = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raw = None
        rid = raw.get("id") if isinstance(raw, dict) else None
        usable = isinstance(rid, str) and rid.strip() and len(rid) <= 1000 and not LINE_LABEL.fullmatch(rid)
        keys.append(rid if usable and rid not in seen else f"line {number}")
        if usable:
            seen.add(rid)
    return keys


def _write_case(tmp: Path, lines: list[bytes], noise: bytes, cut: float, bom: bool) -> Path:
    root = tmp / "data"
    root.mkdir()
    png, wav = _png(root / "good.png"), _wav(root / "good.wav")
    (root / "noise.png").write_bytes(noise)
    (root / "noise.wav").write_bytes(noise)
    (root / "cut.png").write_bytes(png[: int(len(png) * cut)])
    (root / "cut.wav").write_bytes(wav[: int(len(wav) * cut)])
    path = root / "m.jsonl"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + b"\n".join(lines) + b"\n")
    return path


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    manifest=manifests(),
    noise=st.binary(max_size=64),
    cut=st.floats(0.0, 1.0),
    bom=st.booleans(),
)
def test_fuzz_every_line_is_accounted_for_once(predictor, manifest, noise, cut, bom):
    lines, good = manifest
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_case(Path(tmp), lines, noise, cut, bom)
        out = predictor.predict(path)  # the job finishes, whatever the lines and files hold
    written = [p["id"] for p in out["predictions"]] + [e["id"] for e in out["errors"]]
    expected = [k for k in _expected_keys(lines) if k is not None]
    assert sorted(written) == sorted(expected)  # every non-blank line once, under its own key
    predicted = {p["id"] for p in out["predictions"]}
    keys = _expected_keys(lines)
    for index in good:
        if keys[index] == f"good-{index}":  # not preceded by a line that took its id
            assert keys[index] in predicted, (keys[index], out["errors"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(manifest=manifests(), noise=st.binary(max_size=64), cut=st.floats(0.0, 1.0), bom=st.booleans())
def test_fuzz_training_data_fails_or_skips_in_setup(manifest, noise, cut, bom):
    # The same manifests as training data. Default: setup either raises RecordError or every record then loads (no
    # failure can wait for its batch). skip_bad_records: every line is trained on or listed as skipped, once.
    lines, good = manifest
    keys = _expected_keys(lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_case(Path(tmp), lines, noise, cut, bom)
        strict = MultimodalDataModule(train_manifest=str(path), image_size=32)
        try:
            strict.setup("fit")
        except RecordError as error:
            assert error.record_id and error.field
        else:
            train = strict.datasets["train"]
            assert [train[i].error for i in range(len(train))] == [None] * len(train)
        lenient = MultimodalDataModule(train_manifest=str(path), image_size=32, skip_bad_records=True)
        lenient.setup("fit")
        train = lenient.datasets["train"]
        samples = [train[i] for i in range(len(train))]  # every kept record loads
    skipped = [e.record_id for e in lenient.skipped.get("train", [])]
    assert sorted(train.ids + skipped) == sorted(k for k in keys if k is not None)
    assert len(samples) == len(train.ids)
    for index in good:
        if keys[index] == f"good-{index}":
            assert keys[index] in train.ids
