"""Resilience: a training run killed with SIGKILL mid-epoch resumes with ``--ckpt_path last`` exactly where it stood;
a killed batch-inference job restarted on the same folder writes every input id exactly once."""

from __future__ import annotations

import csv
import json
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

from omnifuse.app.cli import cli_main
from omnifuse.app.writer import repair_partial_line

from .test_finetune_support import build_tiny_easyvqa, run_cli, take, write_config

PAUSE = '''
import time
from pathlib import Path

import lightning as L


class PauseAt(L.Callback):
    """At global step `step`, say so in `marker` and wait to be killed."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self.marker.write_text(str(self.step))
            time.sleep(3600)
'''

STEPS, EVERY, KILL_AT = 8, 2, 5  # 12 records / batch 4 = 3 steps per epoch: checkpoint at 4 is mid-epoch 1


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = build_tiny_easyvqa(tmp_path_factory.mktemp("easyvqa"))
    take(root / "vqa_train.jsonl", root / "resume_train.jsonl", 12)
    return root


def _config(tmp: Path, data: Path, name: str, ckpt_dir: Path, extra_callbacks: list | None = None) -> Path:
    return write_config(
        tmp / f"{name}.yaml",
        {
            "trainer": {
                "max_steps": STEPS,
                "limit_val_batches": 0,
                "log_every_n_steps": 1,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp / "logs"), "name": name, "version": 0},
                },
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {
                            "dirpath": str(ckpt_dir),
                            "every_n_train_steps": EVERY,
                            "save_top_k": -1,
                            "save_last": True,
                            "filename": "{step}",
                        },
                    },
                    {
                        "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                        "init_args": {"logging_interval": "step"},
                    },
                    *(extra_callbacks or []),
                ],
            },
            # Modality dropout draws from the global RNG in every forward: the resumed run must restore it.
            "model": {
                "init_args": {"optimizer": {"lr": 0.003, "warmup_steps": 3}, "fusion": {"modality_dropout": 0.5}}
            },
            "data": {"train_manifest": str(data / "resume_train.jsonl")},
        },
    )


def _per_step(tmp: Path, name: str) -> dict[int, dict[str, float]]:
    """step -> {"loss": ..., "lr": ...} from a CSVLogger metrics file."""
    rows: dict[int, dict[str, float]] = {}
    with (tmp / "logs" / name / "version_0" / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            step = int(row["step"])
            if row.get("train/loss"):
                rows.setdefault(step, {})["loss"] = float(row["train/loss"])
            lr = next((v for k, v in row.items() if k.startswith("lr-") and v), None)
            if lr:
                rows.setdefault(step, {})["lr"] = float(lr)
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("full")
    cli_main(["fit", "--config", str(_config(tmp, data, "full", tmp / "ckpt"))])
    return tmp, tmp / "ckpt"


def test_sigkill_mid_epoch_then_ckpt_path_last_continues_exactly(data, uninterrupted, tmp_path):
    full_tmp, full_ckpt = uninterrupted
    (tmp_path / "pause_probe.py").write_text(PAUSE)
    marker = tmp_path / "paused"
    ckpt = tmp_path / "ckpt"
    pause = {"class_path": "pause_probe.PauseAt", "init_args": {"step": KILL_AT, "marker": str(marker)}}
    killed = _config(tmp_path, data, "killed", ckpt, [pause])
    # As many threads as this process uses for the uninterrupted run: bit-identical arithmetic.
    proc = run_cli(
        ["fit", "--config", str(killed)], cwd=tmp_path, extra_pythonpath=tmp_path, threads=torch.get_num_threads()
    )
    deadline = time.monotonic() + 900  # a safety net for a broken run, not a measurement
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {KILL_AT}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run never reached the kill step")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    last = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4 and last["epoch"] == 1  # mid-epoch: batch 1 of 3 of epoch 1
    assert last["MultimodalDataModule"] == {"train_epoch": 1, "train_batches_done": 1}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(["fit", "--config", str(_config(tmp_path, data, "resumed", ckpt)), "--ckpt_path", "last"])
    # the data module resumes mid-epoch itself, so Lightning's "dataloader is not resumable" warning does not apply
    assert not [w for w in caught if "not resumable" in str(w.message)]

    full, resumed = _per_step(full_tmp, "full"), _per_step(tmp_path, "resumed")
    assert sorted(full) == list(range(STEPS))
    assert sorted(resumed) == list(range(4, STEPS))  # the step count continues from the checkpoint
    for step in range(4, STEPS):  # same data, weights, optimizer and LR schedule -> the same losses
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-6, abs=1e-7), step
        assert resumed[step]["lr"] == pytest.approx(full[step]["lr"], rel=1e-9), step

    a = torch.load(full_ckpt / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == STEPS
    assert any(k.endswith("expert_bias") and v.abs().sum() > 0 for k, v in a["state_dict"].items())
    for k, v in a["state_dict"].items():  # weights and the routers' balancing biases
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    for (i, sa), (j, sb) in zip(a["optimizer_states"][0]["state"].items(), b["optimizer_states"][0]["state"].items()):
        assert i == j and sa["step"] == sb["step"]
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == STEPS


def _predict(config: Path, ckpt: Path, manifest: Path, out: Path) -> None:
    cli_main(
        [
            "predict",
            "--config",
            str(config),
            "--data.predict_manifest",
            str(manifest),
            "--trainer.callbacks+=omnifuse.app.writer.JsonlPredictionWriter",
            f"--trainer.callbacks.output_dir={out}",
            "--ckpt_path",
            str(ckpt),
        ]
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_predict_restarted_after_a_kill_writes_every_id_once(data, uninterrupted, tmp_path):
    full_tmp, full_ckpt = uninterrupted
    good = [json.loads(x) for x in (data / "vqa_val.jsonl").read_text().splitlines()[:10]]
    bad = [
        {"id": "bad-missing-image", "task": "vqa", "image": "images/none.png", "text": "what shape?"},
        {"id": "bad-task", "task": "dance", "text": "what shape?"},
    ]
    manifest = data / "predict_resume.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in good[:5] + bad[:1] + good[5:] + bad[1:]))
    all_ids = [r["id"] for r in good + bad]
    config = full_tmp / "full.yaml"

    reference = tmp_path / "reference"
    _predict(config, full_ckpt / "last.ckpt", manifest, reference)
    ref_rows = {r["id"]: r for r in _rows(reference / "predictions.jsonl")}

    # A job killed mid-write: 4 complete predictions, half of the 5th line, one error written.
    out = tmp_path / "out"
    out.mkdir()
    lines = (reference / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    (out / "errors.jsonl").write_text((reference / "errors.jsonl").read_text().splitlines(keepends=True)[0])
    before = (out / "predictions.jsonl").read_text().splitlines()[:4]

    _predict(config, full_ckpt / "last.ckpt", manifest, out)
    preds, errors = _rows(out / "predictions.jsonl"), _rows(out / "errors.jsonl")
    written = [r["id"] for r in preds] + [r["id"] for r in errors]
    assert sorted(written) == sorted(all_ids)  # every id exactly once, none lost
    assert {r["id"] for r in errors} == {"bad-missing-image", "bad-task"}
    assert (out / "predictions.jsonl").read_text().splitlines()[:4] == before  # kept, not redone
    for row in preds:  # the re-predicted (incl. the cut one) equal the uninterrupted job's
        assert row["prediction"] == ref_rows[row["id"]]["prediction"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"id": "a"}\n{"id": "b", "pred', b'{"id": "a"}\n'),  # cut mid-line: dropped, predicted again
        (b'{"id": "a"}\n{"id": "b"}', b'{"id": "a"}\n{"id": "b"}\n'),  # cut before its newline: kept
        (b'{"id": "a"', b""),
        (b'{"id": "a"}\n', b'{"id": "a"}\n'),
        (b'{"id": "a"}\n{"id": "\xc3', b'{"id": "a"}\n'),  # a multi-byte character cut in half
    ],
)
def test_repair_partial_line(tmp_path, content, expected):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    repair_partial_line(path)
    assert path.read_bytes() == expected
