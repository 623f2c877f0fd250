"""MultimodalDataModule end to end on a tiny easy-VQA build: prepare, fit batches, predict with a bad record."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.data.records import RecordError
from omnifuse.data.tokenizer import ByteTokenizer


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "easyvqa"


def _module(out: Path, **kwargs) -> MultimodalDataModule:
    return MultimodalDataModule(
        train_manifest=str(out / "vqa_train.jsonl"),
        val_manifest=str(out / "vqa_val.jsonl"),
        batch_size=4,
        image_size=32,
        prepare="easyvqa",
        prepare_dir=str(out),
        prepare_limit_images=6,
        **kwargs,
    )


def test_prepare_then_fit_batches(out: Path):
    dm = _module(out)
    assert not out.exists()
    dm.prepare_data()  # the manifests were missing: the builder ran, only the part they belong to
    assert (out / "vqa_train.jsonl").is_file() and not (out / "caption_train.jsonl").exists()
    dm.setup("fit")
    train_ids = [json.loads(line)["id"] for line in (out / "vqa_train.jsonl").read_text().splitlines()]
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 4 and set(batch.ids) <= set(train_ids)
    assert batch.image.shape == (4, 3, 32, 32) and batch.audio is None
    assert batch.present[:, 0].all() and batch.present[:, 2].all() and not batch.present[:, 1].any()
    tok = ByteTokenizer()
    for row, target in enumerate(batch.targets):
        assert tok.decode(batch.target_ids[row, 1:]) == target
        assert batch.target_ids[row, 0] == tok.task_id("vqa")
    val = list(dm.val_dataloader())
    assert sum(len(b) for b in val) == len((out / "vqa_val.jsonl").read_text().splitlines())
    assert isinstance(dm.tokenizer, ByteTokenizer)


def test_train_order_is_shuffled_and_seeded(out: Path):
    first = _module(out, seed=1)
    first.prepare_data()
    first.setup("fit")
    order = [i for b in first.train_dataloader() for i in b.ids]
    again = _module(out, seed=1)
    again.setup("fit")
    assert [i for b in again.train_dataloader() for i in b.ids] == order
    file_order = [json.loads(line)["id"] for line in (out / "vqa_train.jsonl").read_text().splitlines()]
    assert sorted(order) == sorted(file_order) and order != file_order


def test_limit_train(out: Path):
    dm = _module(out, limit_train=5)
    dm.prepare_data()
    dm.setup("fit")
    assert sum(len(b) for b in dm.train_dataloader()) == 5


def test_predict_reports_bad_record(out: Path):
    _module(out).prepare_data()
    good = [json.loads(line) for line in (out / "vqa_test.jsonl").read_text().splitlines()[:3]]
    for r in good:
        del r["target"]  # inference input: no answers
    (out / "broken.png").write_bytes((out / good[0]["image"]).read_bytes()[:40])
    bad = {"id": "broken-1", "task": "vqa", "image": "broken.png", "text": "what shape is in the image?"}
    predict = out / "predict.jsonl"
    predict.write_text("\n".join(json.dumps(r) for r in [good[0], bad, *good[1:]]) + "\n")
    dm = MultimodalDataModule(predict_manifest=str(predict), eval_batch_size=8, image_size=32)
    dm.setup("predict")
    (batch,) = list(dm.predict_dataloader())
    assert batch.ids == [r["id"] for r in good]
    assert batch.target_ids is None and batch.image.shape == (3, 3, 32, 32)
    assert len(batch.failed) == 1
    failed_id, reason = batch.failed[0]
    assert failed_id == "broken-1" and reason.startswith("field 'image': file is not a valid image")
    # The same bad record is fatal for training data.
    fit = MultimodalDataModule(train_manifest=str(predict), image_size=32)
    with pytest.raises(RecordError) as info:
        fit.setup("fit")
    assert info.value.field == "target"


def test_predict_skips_ids_already_written(out: Path):
    _module(out).prepare_data()
    dm = MultimodalDataModule(predict_manifest=str(out / "vqa_test.jsonl"), eval_batch_size=100)
    done = {json.loads(line)["id"] for line in (out / "vqa_test.jsonl").read_text().splitlines()[:4]}
    dm.skip_predict_ids = done
    dm.setup("predict")
    ids = [i for b in dm.predict_dataloader() for i in b.ids]
    assert ids and done.isdisjoint(ids)


def test_missing_manifest_without_prepare(tmp_path: Path):
    dm = MultimodalDataModule(train_manifest=str(tmp_path / "nope.jsonl"))
    dm.prepare_data()  # nothing to build with
    with pytest.raises(FileNotFoundError, match="prepare='easyvqa'"):
        dm.setup("fit")


def test_init_args_are_plain_documented_types():
    """LightningCLI builds the module from YAML: every argument is a plain type and is documented."""
    sig = inspect.signature(MultimodalDataModule.__init__)
    doc = MultimodalDataModule.__doc__
    for name, param in list(sig.parameters.items())[1:]:
        assert param.annotation in {
            "str | None", "int", "int | None", "float", "str", "bool", "list[str] | None", "str | list[str] | None",
            "list[float] | None", "AugmentConfig | None", "CurriculumConfig | None",
        }, (name, param.annotation)  # fmt: skip
        assert f"{name}:" in doc, name
    with pytest.raises(ValueError, match="known builders: easyvqa"):
        MultimodalDataModule(prepare="coco")


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def test_a_list_of_train_manifests_trains_on_their_union(out: Path):
    dm = MultimodalDataModule(
        train_manifest=[str(out / "vqa_train.jsonl"), str(out / "caption_train.jsonl")],
        val_manifest=[str(out / "vqa_val.jsonl"), str(out / "caption_val.jsonl")],
        batch_size=4,
        image_size=32,
        prepare="easyvqa",
        prepare_dir=str(out),
        prepare_limit_images=6,
    )
    dm.prepare_data()  # both parts were missing and are built, told from the listed file names
    assert (out / "vqa_train.jsonl").is_file() and (out / "caption_train.jsonl").is_file()
    assert not (out / "json_train.jsonl").exists()
    dm.setup("fit")
    expected = _ids(out / "vqa_train.jsonl") + _ids(out / "caption_train.jsonl")
    assert dm.datasets["train"].ids == expected  # both manifests, in the order listed
    drawn = [i for b in dm.train_dataloader() for i in b.ids]
    assert sorted(drawn) == sorted(expected)
    tasks = {r.id: r.task for r in dm.datasets["train"].records}
    assert {tasks[i] for i in drawn} == {"vqa", "caption"}
    # Relative media paths resolve against each record's own manifest folder.
    elsewhere = out / "elsewhere"
    (elsewhere / "pics").mkdir(parents=True)
    record = json.loads((out / "vqa_val.jsonl").read_text().splitlines()[0])
    (elsewhere / "pics" / "only_here.png").write_bytes((out / record["image"]).read_bytes())
    (elsewhere / "local.jsonl").write_text(
        json.dumps({**record, "id": "local-1", "image": "pics/only_here.png"}) + "\n"
    )
    both = MultimodalDataModule(train_manifest=[str(out / "vqa_val.jsonl"), str(elsewhere / "local.jsonl")])
    both.setup("fit")
    local = both.datasets["train"].records[-1]
    assert local.id == "local-1" and Path(local.image) == (elsewhere / "pics" / "only_here.png").resolve()
    assert both.datasets["train"][len(both.datasets["train"]) - 1].image is not None
    val = _ids(out / "vqa_val.jsonl") + _ids(out / "caption_val.jsonl")
    assert [i for b in dm.val_dataloader() for i in b.ids] == val
    # limit_train draws its subset from the union.
    limited = MultimodalDataModule(train_manifest=dm.train_manifest, limit_train=9, image_size=32)
    limited.setup("fit")
    assert len(limited.datasets["train"]) == 9 and set(limited.datasets["train"].ids) <= set(expected)


def test_a_list_of_manifests_rejects_an_id_in_two_of_them_and_names_both(out: Path):
    _module(out).prepare_data()
    first = out / "vqa_train.jsonl"
    copy = out / "copy.jsonl"
    lines = first.read_text().splitlines()
    copy.write_text(lines[2] + "\n")
    dm = MultimodalDataModule(train_manifest=[str(first), str(copy)], image_size=32)
    with pytest.raises(RecordError) as info:
        dm.setup("fit")
    assert info.value.record_id == json.loads(lines[2])["id"] and info.value.field == "id"
    assert str(first) in str(info.value) and str(copy) in str(info.value)
    # A bad record in the second manifest is named as in a single one.
    copy.write_text(json.dumps({"id": "no-target", "task": "vqa", "text": "what shape?"}) + "\n")
    with pytest.raises(RecordError) as info:
        MultimodalDataModule(train_manifest=[str(first), str(copy)]).setup("fit")
    assert (info.value.record_id, info.value.field) == ("no-target", "target") and str(copy) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        MultimodalDataModule(train_manifest=[str(first), str(out / "nope.jsonl")]).setup("fit")
    with pytest.raises(ValueError, match="one path"):
        MultimodalDataModule(predict_manifest=[str(first), str(copy)]).setup("predict")


def test_batches_move_to_device(out: Path):
    dm = _module(out, limit_train=4)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader())).to(torch.device("cpu"))
    assert batch.image.device.type == "cpu"


def test_prepare_rebuilds_only_parts_an_older_builder_wrote(out: Path):
    first = _module(out)
    first.prepare_data()
    manifest = out / "vqa_train.jsonl"
    info_path = out / "build_info.json"
    stamp = manifest.stat().st_mtime_ns

    # Another data seed (it also seeds the shuffle) must not rebuild, nor re-split, the existing data.
    _module(out, seed=7).prepare_data()
    assert manifest.stat().st_mtime_ns == stamp

    # A build recorded by an older builder version is rebuilt, with the settings it was built with.
    info = json.loads(info_path.read_text())
    info["vqa"]["version"] = 1
    info_path.write_text(json.dumps(info))
    manifest.write_text(manifest.read_text().replace('"answer_type"', '"old_key"'))
    _module(out, seed=7).prepare_data()
    rebuilt = json.loads(info_path.read_text())["vqa"]
    assert rebuilt["seed"] == 0 and rebuilt["version"] != 1
    assert '"answer_type"' in manifest.read_text()

    # Files the builder never wrote (no build-info entry) are left alone.
    info = json.loads(info_path.read_text())
    del info["vqa"]
    info_path.write_text(json.dumps(info))
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")
    _module(out).prepare_data()
    assert len(manifest.read_text().splitlines()) == 1
