"""The easy-VQA ``mixed`` part (question as text, audio or both) and the mixed recipe, tiny, end to end."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from omnifuse.app.cli import cli_main, main
from omnifuse.app.predictor import Predictor
from omnifuse.data.batch import MODALITIES
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.easyvqa import MIXED_VIEWS, SPLITS, manifest_paths, prepare_easyvqa
from omnifuse.tasks.vqa import answer_type_metric_name

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

RECIPE = Path(__file__).parents[1] / "configs" / "mixed_vqa.yaml"
TEST_VIEWS = [f"test_{v}" for v in MIXED_VIEWS]
# Which of (image, audio, text) a record of each view carries.
VIEW_MODALITIES = {"text": {"image", "text"}, "audio": {"image", "audio"}, "both": {"image", "audio", "text"}}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("easyvqa_mixed")
    prepare_easyvqa(root, parts=("vqa", "spoken", "mixed"), limit_images=3, workers=2)
    return root


def test_mixed_records_combine_the_vqa_and_spoken_records_of_each_question(built: Path):
    paths = manifest_paths(built, ["mixed"])
    assert sorted(paths) == sorted(f"mixed_{s}" for s in (*SPLITS, *TEST_VIEWS))
    for split in SPLITS:
        text = {r["id"].removeprefix("vqa-"): r for r in read_rows(built / f"vqa_{split}.jsonl")}
        audio = {r["id"].removeprefix("spoken-"): r for r in read_rows(built / f"spoken_{split}.jsonl")}
        assert text.keys() == audio.keys() and text
        for name in [split] + (TEST_VIEWS if split == "test" else []):
            rows = read_rows(built / f"mixed_{name}.jsonl")
            keys = []
            for r in rows:
                view = r["meta"]["view"]
                key = r["id"].removeprefix("mixed-").removesuffix(f"-{view}")
                keys.append(key)
                t, a = text[key], audio[key]
                assert r["id"] == f"mixed-{key}-{view}"
                if name.startswith("test_"):
                    assert view == name.removeprefix("test_")
                assert view in MIXED_VIEWS
                assert {m for m in ("image", "audio", "text") if m in r} == VIEW_MODALITIES[view]
                assert r["image"] == t["image"] == a["image"]
                assert r.get("text", t["text"]) == t["text"] == a["meta"]["transcript"]
                assert r.get("audio", a["audio"]) == a["audio"]
                assert r["target"] == t["target"] == a["target"]
                assert r["task"] == "vqa" and r["meta"]["answers"] == [t["target"]]
                assert r["meta"]["voice"] == a["meta"]["voice"]
            assert keys == list(text)  # every question once, in the same order
    # The seeded views of the training questions cover all three kinds.
    assert {r["meta"]["view"] for r in read_rows(built / "mixed_train.jsonl")} == set(MIXED_VIEWS)
    # Test clips are spoken by voices that training never uses.
    train_voices = {r["meta"]["voice"] for r in read_rows(built / "mixed_train.jsonl")}
    assert train_voices.isdisjoint({r["meta"]["voice"] for r in read_rows(built / "mixed_test_audio.jsonl")})
    info = json.loads((built / "build_info.json").read_text())["mixed"]
    assert info["counts"] == {
        name: len(read_rows(p)) for name, p in ((n.removeprefix("mixed_"), p) for n, p in paths.items())
    }


def test_mixed_build_is_deterministic_and_leaves_the_other_parts_unchanged(built: Path, tmp_path: Path):
    """A folder built without the mixed part has byte-identical vqa / spoken manifests; a rebuild of the mixed part
    gives byte-identical mixed manifests (the seeded views do not depend on the run)."""
    shutil.copytree(built / "audio", tmp_path / "audio")  # the clip cache: no second synthesis
    prepare_easyvqa(tmp_path, parts=("vqa", "spoken"), limit_images=3)
    for part in ("vqa", "spoken"):
        for split in SPLITS:
            name = f"{part}_{split}.jsonl"
            assert (tmp_path / name).read_bytes() == (built / name).read_bytes(), name
    prepare_easyvqa(tmp_path, parts=("mixed",), limit_images=3)
    for path in manifest_paths(built, ["mixed"]).values():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_each_view_collates_with_the_right_modalities(built: Path):
    collate = Collator()
    for view, modalities in VIEW_MODALITIES.items():
        dataset = ManifestDataset(built / f"mixed_test_{view}.jsonl", image_size=32, max_audio_seconds=3.2)
        batch = collate([dataset[i] for i in range(min(4, len(dataset)))])
        expected = torch.tensor([m in modalities for m in MODALITIES])
        assert torch.equal(batch.present, expected.expand(len(batch), -1))
        assert (batch.audio is not None) == ("audio" in modalities)
        assert (batch.text is not None) == ("text" in modalities)


def _tiny_recipe(tmp_path: Path, data: Path) -> Path:
    """configs/mixed_vqa.yaml itself, shrunk: smaller widths, 2 steps, no loggers, paths under tmp_path."""
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"].update(
        accelerator="cpu", max_steps=2, val_check_interval=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path / "run"), limit_val_batches=1,
    )  # fmt: skip
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
        }
    ]
    model = config["model"]["init_args"]
    model["image_encoder"]["init_args"].update(channels=8, token_pool=8)  # 32 px images: an 8 x 8 map
    model["audio_encoder"]["init_args"].update(d_model=32, n_layers=1, n_heads=2, conv_channels=8)
    model["text_encoder"]["init_args"].update(d_model=32, n_layers=1, n_heads=2)
    model["fusion"].update(n_heads=2)
    model["decoder"].update(d_model=32, n_heads=2, n_routed_experts=4, top_k=2, d_expert=16, d_ff_dense=64)
    model["generation"]["max_new_tokens"] = 8
    config["data"].update(
        prepare=None, prepare_dir=str(data), batch_size=4, eval_batch_size=4, num_workers=0, image_size=32,
        limit_val=4, limit_test=4, **{f"{s}_manifest": str(data / f"mixed_{s}.jsonl") for s in SPLITS},
    )  # fmt: skip
    path = tmp_path / "tiny_mixed.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_recipe_trains_and_reports_gate_weights_per_view(built: Path, tmp_path: Path):
    """Fit the recipe (shrunk) for two steps, then test each view: the logged mean gate weights cover exactly the
    view's modalities (and sum to 1 where every sample has all three); predictions feed ``omnifuse plot``, whose
    table equals the weights of the prediction rows."""
    config = _tiny_recipe(tmp_path, built)
    cli_main(["fit", "--config", str(config), "--data.test_manifest", "null"])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    for view, modalities in VIEW_MODALITIES.items():
        manifest = str(built / f"mixed_test_{view}.jsonl")
        cli = cli_main(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--data.test_manifest", manifest])
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        logged = {k.removeprefix("test/weight_") for k in metrics if k.startswith("test/weight_")}
        assert logged == modalities, view
        assert 0.0 <= metrics["test/vqa_accuracy"] <= 1.0
        # Per answer type (the official perAnswerType): the types of the tested records, and their
        # count-weighted mean is the overall accuracy.
        types = Counter(r.meta["answer_type"] for r in cli.datamodule.datasets["test"].records)
        per_type = {k.removeprefix("test/vqa_accuracy/"): v for k, v in metrics.items() if "vqa_accuracy/" in k}
        assert set(per_type) == {answer_type_metric_name(t) for t in types}
        weighted = sum(n * per_type[answer_type_metric_name(t)] for t, n in types.items()) / types.total()
        assert weighted == pytest.approx(metrics["test/vqa_accuracy"])
        if view == "both":
            assert sum(metrics[f"test/weight_{m}"] for m in modalities) == pytest.approx(1.0, abs=1e-5)

    predictor = Predictor.from_pretrained(ckpt, image_size=32, max_audio_seconds=3.2, batch_size=8)
    files = []
    for view in VIEW_MODALITIES:
        head = built / f"head_{view}.jsonl"  # beside the manifest: its relative paths stay valid
        head.write_text("".join((built / f"mixed_test_{view}.jsonl").read_text().splitlines(keepends=True)[:6]))
        out = predictor.predict(head)
        assert len(out["predictions"]) == 6
        assert not out["errors"]
        path = tmp_path / f"pred_{view}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in out["predictions"]))
        files.append(path)
    assert main(["plot", "--predictions", ",".join(map(str, files)), "--labels", "text,audio,both",
                 "--out", str(tmp_path / "plots")]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "plots" / "summary.json").read_text())
    for view, path in zip(VIEW_MODALITIES, files):
        rows = read_rows(path)
        assert set(summary["modality_weights"][view]) == VIEW_MODALITIES[view]
        for m in VIEW_MODALITIES[view]:
            mean = sum(r["modality_weights"][m] for r in rows) / len(rows)
            assert summary["modality_weights"][view][m]["mean"] == pytest.approx(mean, abs=1e-9)
    assert (tmp_path / "plots" / "modality_weights.png").is_file() and (tmp_path / "plots" / "routing.png").is_file()
