"""Batch inference output: predictions.jsonl and errors.jsonl, written as each batch finishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

PREDICTIONS_FILE = "predictions.jsonl"
ERRORS_FILE = "errors.jsonl"


def repair_partial_line(path: Path) -> None:
    """Make a JSONL file killed mid-write end with a complete line: a last line without its newline is cut off when
    it is not valid JSON (its id will be predicted again) and given its newline when it is. Without this, the next
    appended row would be glued onto the fragment and lost."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1  # 0 when the whole file is one unfinished line
    try:
        complete = isinstance(json.loads(data[cut:]), dict)
    except ValueError:
        complete = False
    with path.open("r+b") as fh:
        if complete:
            fh.seek(0, 2)
            fh.write(b"\n")
        else:
            fh.truncate(cut)


def output_files(output_dir: str | Path, name: str) -> list[Path]:
    """The files of one output (``PREDICTIONS_FILE`` or ``ERRORS_FILE``) in a folder: rank 0's and every other rank's
    (``predictions.rank1.jsonl``, ...) that exist."""
    output_dir = Path(output_dir)
    stem, ext = name.rsplit(".", 1)
    return [p for p in [output_dir / name, *sorted(output_dir.glob(f"{stem}.rank*.{ext}"))] if p.is_file()]


def read_done_ids(output_dir: str | Path) -> set[str]:
    """Ids already present in an output folder's predictions or errors, every rank's files included (for resuming a
    killed job)."""
    done: set[str] = set()
    for name in (PREDICTIONS_FILE, ERRORS_FILE):
        for path in output_files(output_dir, name):
            done |= _ids_in(path)
    return done


def _ids_in(path: Path) -> set[str]:
    done: set[str] = set()
    with path.open(encoding="utf-8", errors="replace") as fh:  # a kill may cut a multi-byte character
        for line in fh:
            try:
                done.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill: its id is simply predicted again
    return done


class JsonlPredictionWriter(BasePredictionWriter):
    """Appends each batch's predictions and errors as JSON lines, flushed per batch.

    Every input id ends up in exactly one of the two files. With ``resume=True`` (default) a restarted job on the
    same folder skips the ids already written (the data module is told which) and loses none; with ``resume=False``
    the files are started afresh. In multi-process prediction each rank writes its own pair of files
    (``predictions.rank1.jsonl`` ...) so no two processes append to one file.
    """

    def __init__(self, output_dir: str = "outputs/predict", resume: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.counts = {"predictions": 0, "errors": 0, "skipped": 0}

    def _path(self, trainer: L.Trainer, name: str) -> Path:
        if trainer.world_size > 1 and trainer.global_rank > 0:
            stem, ext = name.rsplit(".", 1)
            name = f"{stem}.rank{trainer.global_rank}.{ext}"
        return self.output_dir / name

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.counts = {"predictions": 0, "errors": 0, "skipped": 0}
        if self.resume:
            for name in (PREDICTIONS_FILE, ERRORS_FILE):
                repair_partial_line(self._path(trainer, name))
            done = read_done_ids(self.output_dir)
            datamodule = trainer.datamodule
            if done and datamodule is not None and hasattr(datamodule, "skip_predict_ids"):
                datamodule.skip_predict_ids = done
                self.counts["skipped"] = len(done)
        else:
            for name in (PREDICTIONS_FILE, ERRORS_FILE):
                self._path(trainer, name).unlink(missing_ok=True)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, list[dict[str, Any]]],
        batch_indices,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for key, name in (("predictions", PREDICTIONS_FILE), ("errors", ERRORS_FILE)):
            rows = prediction.get(key) or []
            if not rows:
                continue
            with self._path(trainer, name).open("a", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
            self.counts[key] += len(rows)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = dict(self.counts)
        if trainer.world_size > 1:  # each rank counted its own rows; the summary is the job's
            local = torch.tensor([counts["predictions"], counts["errors"]], device=pl_module.device)
            counts["predictions"], counts["errors"] = (int(x) for x in trainer.strategy.reduce(local, reduce_op="sum"))
        if trainer.is_global_zero:
            records = counts["predictions"] + counts["errors"] + counts["skipped"]
            print(
                f"omnifuse predict: {records:,} records: {counts['predictions']:,} predicted, {counts['errors']:,} errors"
                + (f", {counts['skipped']:,} already done (skipped)" if counts["skipped"] else "")
                + f" -> {self.output_dir / PREDICTIONS_FILE}, {self.output_dir / ERRORS_FILE}",
                flush=True,
            )
