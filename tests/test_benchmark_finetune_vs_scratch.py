"""benchmarks/finetune_vs_scratch.py reading its scratch half from a finished run (``--scratch-run``): the curve and
test metrics come from the run's CSV log, and a run whose saved config differs from the recipe is refused."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("finetune_vs_scratch", ROOT / "benchmarks" / "finetune_vs_scratch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPE = {
    "seed_everything": 0,
    "trainer": {"max_steps": 6, "default_root_dir": "runs/x", "callbacks": [{"class_path": "a.B"}]},
    "model": {"class_path": "omnifuse.tasks.VQATask", "init_args": {"init_from": None, "decoder": {"d_model": 32}}},
    "data": {"batch_size": 4},
}
# Rows as Lightning's CSVLogger writes them: one metric set per row, blanks elsewhere.
ROWS = [
    {"step": "1", "train/loss": "2.0"},
    {"step": "2", "val/vqa_accuracy": "0.5"},
    {"step": "5", "val/vqa_accuracy": "0.75"},
    {"step": "6", "test/vqa_accuracy": "0.7", "test/loss": "0.3"},
]


def _run(tmp_path: Path, saved: dict) -> Path:
    log = tmp_path / "run" / "csv" / "version_3"
    log.mkdir(parents=True)
    (tmp_path / "run" / "csv" / "version_1").mkdir()  # an older, empty version is skipped
    (log / "config.yaml").write_text(yaml.safe_dump(saved))
    fields = sorted({k for r in ROWS for k in r})
    with (log / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(ROWS)
    return tmp_path / "run"


def _saved(**changes) -> dict:
    """What LightningCLI saves: the recipe's settings plus defaults, with the run's own folders and callbacks."""
    saved = yaml.safe_load(yaml.safe_dump(RECIPE))
    saved["trainer"].update(default_root_dir="runs/elsewhere", callbacks=[], precision="32-true")
    saved["model"]["init_args"]["decoder"]["n_layers"] = 2  # a default the recipe does not write
    for key, value in changes.items():
        section, _, name = key.partition(".")
        saved[section][name] = value
    return saved


def test_reuse_reads_curve_and_test_metrics(bench, tmp_path):
    curve, tested, monitor, mode = bench._reuse_scratch(RECIPE, _run(tmp_path, _saved()))
    assert (monitor, mode) == ("val/vqa_accuracy", "max")  # VQATask's own
    assert curve == [(2, 0.5), (5, 0.75)]
    assert tested == {"test/vqa_accuracy": 0.7, "test/loss": 0.3}


@pytest.mark.parametrize(
    ("change", "named"),
    [({"data.batch_size": 8}, "data.batch_size"), ({"trainer.max_steps": 7}, "trainer.max_steps")],
)
def test_reuse_refuses_a_run_with_other_settings(bench, tmp_path, change, named):
    with pytest.raises(SystemExit, match=named):
        bench._reuse_scratch(RECIPE, _run(tmp_path, _saved(**change)))


def test_reuse_refuses_an_unfinished_run(bench, tmp_path):
    run = _run(tmp_path, _saved())
    log = run / "csv" / "version_3" / "metrics.csv"
    log.write_text("\n".join(log.read_text().splitlines()[:-1]) + "\n")  # no test row yet
    with pytest.raises(SystemExit, match="no test/ metrics"):
        bench._reuse_scratch(RECIPE, run)
