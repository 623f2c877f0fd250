"""End to end through the `omnifuse` CLI: fit a tiny model, predict over a manifest that holds bad records."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from omnifuse.app.cli import cli_main, main
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.easyvqa import prepare_easyvqa
from omnifuse.tasks.model import OmniModel

TINY = str(Path(__file__).parent / "configs" / "tiny_vqa.yaml")


@pytest.fixture(scope="module")
def easyvqa_small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("easyvqa")
    prepare_easyvqa(root, parts=("vqa",), limit_images=12)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, easyvqa_small) -> Path:
    """Fit the tiny config for a few steps; returns the run folder holding checkpoints/last.ckpt."""
    run = tmp_path_factory.mktemp("run")
    cli_main(
        [
            "fit",
            "--config", TINY,
            "--data.train_manifest", str(easyvqa_small / "vqa_train.jsonl"),
            "--data.val_manifest", str(easyvqa_small / "vqa_val.jsonl"),
            "--trainer.default_root_dir", str(run),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={run / 'checkpoints'}",
            "--trainer.callbacks.save_last=true",
            "--trainer.limit_val_batches=1",
        ]
    )
    return run


def _bad_manifest(root: Path, good: Path, n_good: int = 10) -> tuple[Path, list[str]]:
    """Copy some good records and add records that fail in different ways; returns the manifest and all ids."""
    lines = good.read_text().splitlines()[:n_good]
    (root / "broken.png").write_text("not an image")
    bad = [
        {"id": "bad-missing-image", "task": "vqa", "image": "images/nope.png", "text": "what shape?"},
        {"id": "bad-escape", "task": "vqa", "image": "../../etc/passwd", "text": "what shape?"},
        {"id": "bad-not-png", "task": "vqa", "image": "broken.png", "text": "what shape?"},
        {"id": "bad-task", "task": "dance", "text": "what shape?"},
    ]
    manifest = root / "predict.jsonl"
    manifest.write_text("\n".join(lines + [json.dumps(b) for b in bad] + ["{not json"]) + "\n")
    ids = [json.loads(x)["id"] for x in lines] + [b["id"] for b in bad] + [f"line {len(lines) + len(bad) + 1}"]
    return manifest, ids


def test_plain_predict_writes_both_files_and_accounts_for_every_id(trained, easyvqa_small, tmp_path, capsys):
    # The plain command a user types: no writer callback named anywhere, the files still appear.
    last = trained / "checkpoints" / "last.ckpt"
    assert last.is_file()
    manifest, ids = _bad_manifest(easyvqa_small, easyvqa_small / "vqa_test.jsonl")
    assert main(
        [
            "predict",
            "--config", TINY,
            "--data.predict_manifest", str(manifest),
            "--trainer.default_root_dir", str(tmp_path),
            "--ckpt_path", str(last),
        ]
    ) == 0
    out = tmp_path / "predict_0"  # the default: a run folder of its own under default_root_dir
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("omnifuse predict:")]
    n_bad = sum(i.startswith(("bad-", "line ")) for i in ids)
    assert summary == [
        f"omnifuse predict: run folder {out}",
        f"omnifuse predict: {len(ids)} records: {len(ids) - n_bad} predicted, {n_bad} errors"
        f" -> {out / 'predictions.jsonl'}, {out / 'errors.jsonl'}"
    ]
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    written = [p["id"] for p in preds] + [e["id"] for e in errors]
    assert sorted(written) == sorted(ids)  # every id exactly once, in one of the two files
    assert {e["id"] for e in errors} == {i for i in ids if i.startswith(("bad-", "line "))}
    by_id = {e["id"]: e["error"] for e in errors}
    assert "image" in by_id["bad-missing-image"] and "task" in by_id["bad-task"]
    for p in preds:
        assert set(p["modality_weights"]) == {"image", "text"}
        assert sum(p["modality_weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert len(p["experts"]) == 1  # one MoE layer (the first of the two decoder layers is dense)
        assert isinstance(p["prediction"], str)


def test_predict_output_option_and_record_counting_progress_bar(trained, easyvqa_small, tmp_path):
    from omnifuse.app.progress import RecordProgressBar
    from omnifuse.app.writer import JsonlPredictionWriter

    manifest, ids = _bad_manifest(easyvqa_small, easyvqa_small / "vqa_test.jsonl", n_good=7)
    cli = cli_main(
        [
            "predict",
            "--config", TINY,
            "--data.predict_manifest", str(manifest),
            "--data.eval_batch_size", "3",
            "--trainer.default_root_dir", str(tmp_path / "root"),
            "--trainer.enable_progress_bar", "true",
            "--trainer.callbacks+=omnifuse.app.progress.RecordProgressBar",
            "--output", str(tmp_path / "chosen"),
            "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
        ]
    )
    written = [json.loads(x)["id"] for name in ("predictions.jsonl", "errors.jsonl")
               for x in (tmp_path / "chosen" / name).read_text().splitlines()]
    assert sorted(written) == sorted(ids)
    assert not list((tmp_path / "root" / "predict_0").glob("*.jsonl"))  # its run folder holds no predictions
    assert sum(isinstance(c, JsonlPredictionWriter) for c in cli.trainer.callbacks) == 1
    bar = next(c for c in cli.trainer.callbacks if isinstance(c, RecordProgressBar))
    assert bar.predict_records_done == len(ids)  # records, not the 4 batches of 3


def test_help_lists_every_verb_and_an_unknown_verb_fails(capsys):
    from omnifuse.app.cli import VERBS

    assert main(["--help"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert listed == set(VERBS) >= {"fit", "validate", "test", "predict", "prepare", "export", "score", "plot"}
    assert main(["frobnicate"]) == 2
    assert "unknown verb 'frobnicate'" in capsys.readouterr().err


def _generate(model: OmniModel, records_manifest: Path, batch_size: int) -> list[str]:
    dataset = ManifestDataset(records_manifest, mode="predict", image_size=32)
    collate = Collator()
    texts = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        texts += model.generate(batch, max_new_tokens=8).texts
    return texts


def test_export_from_pretrained_gives_identical_predictions(trained, easyvqa_small, tmp_path):
    last = trained / "checkpoints" / "last.ckpt"
    assert main(["export", str(last), "--out", str(tmp_path / "export")]) == 0
    from_ckpt = OmniModel.from_pretrained(last).eval()
    reloaded = OmniModel.from_pretrained(tmp_path / "export").eval()
    for (name, a), (_, b) in zip(from_ckpt.state_dict().items(), reloaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    manifest = easyvqa_small / "vqa_test.jsonl"
    assert _generate(from_ckpt, manifest, 8) == _generate(reloaded, manifest, 8)
    # Pickle-free: the folder holds exactly a JSON config and safetensors weights.
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]


def test_batched_predictions_equal_one_at_a_time(trained, easyvqa_small):
    model = OmniModel.from_pretrained(trained / "checkpoints" / "last.ckpt").eval()
    manifest = easyvqa_small / "vqa_test.jsonl"
    assert _generate(model, manifest, 16) == _generate(model, manifest, 1)


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY, "--print_config"])
    printed = capsys.readouterr().out
    assert "omnifuse.encoders.TimmImageEncoder" in printed and "n_routed_experts: 4" in printed
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    # The printed config is complete: feeding it back prints the same config again.
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed
    config = yaml.safe_load(printed)
    for key in ("ckpt_path", "weights_only", "run_dir", "threads"):  # per-command options, not model/data/trainer config
        config.pop(key, None)
    saved.write_text(yaml.safe_dump(config))
    cli = cli_main(["--config", str(saved)], run=False)
    assert cli.model.model.decoder_config.n_routed_experts == 4


def test_open_clip_tower_settings_from_yaml(tmp_path):
    # Tower overrides are plain dicts in the encoders' signatures, so LightningCLI accepts them from YAML and merges
    # them over the named model's config (unset keys keep ViT-S-32's values).
    override = tmp_path / "oc.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "omnifuse.tasks.VQATask",
                    "init_args": {
                        "text_encoder": {
                            "class_path": "omnifuse.encoders.OpenClipTextEncoder",
                            "init_args": {"model_name": "ViT-S-32", "text_cfg": {"width": 96, "layers": 1}},
                        },
                        "image_encoder": {
                            "class_path": "omnifuse.encoders.OpenClipImageEncoder",
                            "init_args": {
                                "model_name": "ViT-S-32",
                                "feature_level": -1,
                                "vision_cfg": {"image_size": 32, "width": 64, "layers": 1, "head_width": 32},
                            },
                        },
                    },
                }
            }
        )
    )
    cli = cli_main(["--config", TINY, "--config", str(override)], run=False)
    text = cli.model.model.encoders["text"]
    assert text.out_dim == 96 and len(text.tower.transformer.resblocks) == 1
    assert text.context_length == 77 and text.n_heads == 6  # ViT-S-32 values, kept
    image = cli.model.model.encoders["image"]
    assert image.out_dim == 64 and image.normalize.output_size((64, 64)) == (32, 32)


def test_prepare_subcommand(tmp_path):
    assert main(["prepare", "easyvqa", "--out", str(tmp_path), "--parts", "vqa", "--limit-images", "3"]) == 0
    assert (tmp_path / "vqa_test.jsonl").is_file()


def test_python_predictor_matches_cli_and_reports_bad_dicts(trained, easyvqa_small, tmp_path):
    from omnifuse import Predictor

    last = trained / "checkpoints" / "last.ckpt"
    manifest = easyvqa_small / "vqa_test.jsonl"
    predictor = Predictor.from_pretrained(last, image_size=32, batch_size=5)
    # The run's decoding settings come with its checkpoint (tiny_vqa.yaml: max_new_tokens 8; the default is 32).
    assert predictor.generation.max_new_tokens == 8
    out = predictor.predict(manifest)
    assert [p["prediction"] for p in out["predictions"]] == _generate(predictor.model, manifest, 8)
    records = [json.loads(line) for line in manifest.read_text().splitlines()[:3]]
    records.append({"id": "no-task", "text": "what shape?"})
    records.append({"id": "bad-text", "task": "vqa", "text": 7})
    out = predictor.predict(records, root=easyvqa_small)
    assert [p["id"] for p in out["predictions"]] == [r["id"] for r in records[:3]]
    assert {e["id"]: ("task" in e["error"], "text" in e["error"]) for e in out["errors"]} == {
        "no-task": (True, False),
        "bad-text": (False, True),
    }


def test_console_script_reads_the_command_line_without_lightning_warnings(monkeypatch, capsys):
    # `omnifuse fit ...` calls main() with no arguments; LightningCLI then parses sys.argv itself. Passing it
    # sys.argv[1:] as `args` too made it warn on every run that both were given.
    monkeypatch.setattr(sys, "argv", ["omnifuse", "fit", "--config", TINY, "--print_config"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main()
    assert "n_routed_experts: 4" in capsys.readouterr().out  # the command line was read
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]
