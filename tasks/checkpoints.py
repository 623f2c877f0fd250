"""``last.ckpt`` for resuming: the latest training state, written every N steps, after a validation on such a step,
and when training ends. The recipes pair it with a monitored ``ModelCheckpoint`` that keeps ``best.ckpt``."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LatestCheckpoint(ModelCheckpoint):
    """An unmonitored ``ModelCheckpoint(save_last=True, save_top_k=0, every_n_train_steps=N)`` that closes two gaps of
    the stock one (Lightning 2.6) for ``omnifuse fit --ckpt_path last``:

    - A save at step N happens at the end of the training batch, before a validation that falls on the same step. A
      run resumed from that file counts the validation as done and never runs it, and the monitored checkpoint's state
      (its best score) comes back from before it, so a worse later score could replace ``best.ckpt``. This callback
      saves ``last.ckpt`` again once such a validation has ended (checkpoint callbacks run after the others, and this
      one after the monitored one when it is listed after it), so the file holds the validated state.
    - A run that ends between two saves would leave ``last.ckpt`` up to N - 1 steps behind: it is saved at the end too.

    Args:
        dirpath: folder of ``last.ckpt`` (usually the monitored checkpoint's folder).
        every_n_train_steps: save interval in optimizer steps.
        enable_version_counter: False overwrites an earlier run's ``last.ckpt`` in the same folder instead of writing
            ``last-v1.ckpt`` beside it.
        save_weights_only: as in ``ModelCheckpoint`` (a weights-only file cannot resume the optimizer).
        verbose: as in ``ModelCheckpoint``.

    The signature is explicit (no ``**kwargs``): LightningCLI passes every parameter it can see, and the settings
    this callback owns (``monitor``, ``save_top_k``, ``save_last`` ...) must not be among them.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int = 100,
        enable_version_counter: bool = True,
        save_weights_only: bool = False,
        verbose: bool = False,
    ) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps,
            save_top_k=0,
            save_last=True,
            enable_version_counter=enable_version_counter,
            save_weights_only=save_weights_only,
            verbose=verbose,
        )

    def _fitting(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._fitting(trainer) and trainer.global_step > 0 and self._last_global_step_saved == trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self._fitting(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


__all__ = ["LatestCheckpoint"]
