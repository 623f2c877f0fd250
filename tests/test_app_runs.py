"""Every run keeps its own outputs: a second fit never touches the first one's files, the root moves everything,
``--ckpt_path last`` resumes the newest run in its folder, and ``latest`` / ``--ckpt_path best`` name the newest fit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from omnifuse.app import runs
from omnifuse.app.cli import cli_main
from omnifuse.data.easyvqa import prepare_easyvqa

TINY = str(Path(__file__).parent / "configs" / "tiny_vqa.yaml")

# The shipped recipes' outputs, on the tiny model: loggers and checkpoints name no folder but "{run_dir}".
RECIPE_OUTPUTS = {
    "trainer": {
        "logger": [
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "{run_dir}", "name": "csv"}}
        ],
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"filename": "best", "monitor": "val/loss", "mode": "min", "enable_version_counter": False},
            },
            {
                "class_path": "omnifuse.tasks.checkpoints.LatestCheckpoint",
                "init_args": {"every_n_train_steps": 2, "enable_version_counter": False},
            },
        ],
        "val_check_interval": 2,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 1,
    }
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("easyvqa")
    prepare_easyvqa(root, parts=("vqa",), limit_images=12)
    return root


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "outputs.yaml"
    path.write_text(yaml.safe_dump(RECIPE_OUTPUTS))
    return path


def _fit(data: Path, recipe: Path, root: Path, *extra: str):
    return cli_main(
        [
            "fit", "--config", TINY, "--config", str(recipe),
            "--data.train_manifest", str(data / "vqa_train.jsonl"),
            "--data.val_manifest", str(data / "vqa_val.jsonl"),
            "--trainer.default_root_dir", str(root),
            *extra,
        ]
    )


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_two_fits_keep_both_runs_and_the_root_moves_everything(data, recipe, tmp_path):
    root = tmp_path / "somewhere" / "else"
    _fit(data, recipe, root)
    first = root / "version_0"
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (first / "checkpoints").iterdir()}
    assert (first / "csv").is_dir() and any(first.glob("csv/version_*/metrics.csv"))
    assert any(first.glob("csv/version_*/config.yaml"))  # LightningCLI's resolved config, inside the run
    assert json.loads((first / "run.json").read_text())[0]["verb"] == "fit"
    before = _digests(first)

    _fit(data, recipe, root, "--trainer.max_steps", "4")
    assert _digests(first) == before  # byte for byte: the second fit wrote nothing into the first run
    second = root / "version_1"
    assert _step(second / "checkpoints" / "last.ckpt") == 4
    assert (root / runs.LATEST).resolve() == second.resolve()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "version_0", "version_1"]  # nothing outside the runs


def test_ckpt_path_last_resumes_the_newest_run_in_its_folder(data, recipe, tmp_path, capsys, monkeypatch):
    from omnifuse.app import threads

    monkeypatch.setattr(threads, "_announced", set())  # printed once per process: forget earlier tests' lines
    _fit(data, recipe, tmp_path, "--threads", "1")
    # The thread plan is printed at the start of the command (app/threads.py), with the option that chose it.
    assert "omnifuse threads: 1 intra-op, 1 inter-op (--threads)" in capsys.readouterr().err
    _fit(data, recipe, tmp_path)  # version_1: the newest
    older = _digests(tmp_path / "version_0")
    _fit(data, recipe, tmp_path, "--ckpt_path", "last", "--trainer.max_steps", "5")
    newest = tmp_path / "version_1"
    assert _step(newest / "checkpoints" / "last.ckpt") == 5  # continued from step 3, in the same folder
    assert not (tmp_path / "version_2").exists()
    assert len(json.loads((newest / "run.json").read_text())) == 2  # the fit and its resumption
    assert _digests(tmp_path / "version_0") == older


def test_best_and_latest_name_the_newest_fit_for_the_commands_after_it(data, recipe, tmp_path):
    _fit(data, recipe, tmp_path)
    best = tmp_path / "version_0" / "checkpoints" / "best.ckpt"
    assert runs.resolve_checkpoint("best", tmp_path) == str(best.resolve())
    assert runs.resolve_checkpoint("some/file.ckpt", tmp_path) == "some/file.ckpt"
    manifest = data / "vqa_test.jsonl"
    cli = cli_main(
        [
            "predict", "--config", TINY, "--data.predict_manifest", str(manifest),
            "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "best",
        ]
    )
    assert cli.config.predict.ckpt_path == str(best.resolve())
    predicted = tmp_path / "predict_0" / "predictions.jsonl"
    assert len(predicted.read_text().splitlines()) == len(manifest.read_text().splitlines())
    # A fine-tuning config names its base model through the stable path; it follows the newest fit.
    tuned = _fit(data, recipe, tmp_path / "tuned", "--model.init_args.init_from", str(tmp_path / "latest" / "checkpoints" / "best.ckpt"))
    assert tuned.model.init_report is not None and tuned.model.init_report.loaded


def test_an_alias_with_no_run_behind_it_is_a_clear_error(tmp_path):
    with pytest.raises(runs.RunFolderError, match="holds no run yet"):
        runs.resolve_checkpoint("best", tmp_path)
    (tmp_path / "version_0" / "checkpoints").mkdir(parents=True)
    runs.mark_latest(tmp_path, tmp_path / "version_0")
    with pytest.raises(runs.RunFolderError, match="no checkpoints/last.ckpt"):
        runs.resolve_checkpoint("last", tmp_path)


def test_explicit_run_dir_is_the_one_way_to_reuse_a_folder(data, recipe, tmp_path):
    chosen = tmp_path / "mine"
    _fit(data, recipe, tmp_path / "root", "--run_dir", str(chosen))
    assert (chosen / "checkpoints" / "best.ckpt").is_file()
    assert not (tmp_path / "root" / runs.LATEST).exists()  # an explicit folder elsewhere is not "the newest run"


def test_run_numbers_are_claimed_once_and_ddp_workers_inherit_the_choice(tmp_path, monkeypatch):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_7").mkdir()
    (tmp_path / "predict_2").mkdir()
    assert runs.next_run_dir(tmp_path, "fit").name == "version_8"
    assert runs.next_run_dir(tmp_path, "fit").name == "version_9"
    assert runs.next_run_dir(tmp_path, "predict").name == "predict_3"
    # A worker process sees its launcher's choice (its parent's pid in the variable); any other process does not.
    monkeypatch.setenv(runs.ENV, f"{os.getppid()}:{tmp_path / 'version_8'}")
    assert runs.choose_run_dir("fit", tmp_path, None, None) == tmp_path / "version_8"
    monkeypatch.setenv(runs.ENV, f"{os.getppid() + 1}:{tmp_path / 'version_8'}")
    assert runs.choose_run_dir("fit", tmp_path, None, None).name == "version_10"
