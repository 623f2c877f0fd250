"""The progress bar of the shipped recipes: Lightning's ``RichProgressBar``, with a predict bar that counts records."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class RecordProgressBar(RichProgressBar):
    """``RichProgressBar`` whose ``predict`` bar counts records (manifest lines: predicted or reported as errors),
    which is what a user of batch inference counts, instead of batches. Training and evaluation bars are unchanged."""

    predict_records_done = 0

    @staticmethod
    def _records_total(trainer: L.Trainer, dataloader_idx: int) -> int | float:
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        for source in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):  # sampler: this rank's share
            try:
                return len(source)
            except TypeError:
                continue
        return float("inf")

    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.is_disabled or not self.has_dataloader_changed(dataloader_idx):
            return
        if self.predict_progress_bar_id is not None:
            self.progress.update(self.predict_progress_bar_id, advance=0, visible=False)
        self.predict_records_done = 0
        self.predict_progress_bar_id = self._add_task(self._records_total(trainer, dataloader_idx), "Predicting records")
        self.refresh()

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.is_disabled or self.predict_progress_bar_id is None:
            return
        if isinstance(outputs, dict):  # predict_batch's rows: every record of the batch is in one of the two lists
            self.predict_records_done += len(outputs.get("predictions") or []) + len(outputs.get("errors") or [])
        else:
            self.predict_records_done += len(batch)
        self._update(self.predict_progress_bar_id, self.predict_records_done)
