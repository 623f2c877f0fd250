"""A run prints nothing a user cannot act on (Lightning's litlogger advertisement, torch's LeafSpec deprecation
raised inside Lightning), and still prints what they can act on."""

from __future__ import annotations

import logging
import warnings

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from omnifuse.app import quiet
from omnifuse.app.quiet import silence_unactionable_noise


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _fit(tmp_path, silence: bool = True) -> tuple[list[str], list[str]]:
    handler = _Collect()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if silence:
                silence_unactionable_noise()  # inside catch_warnings, which restores the warning filters afterwards
            else:
                logger.removeFilter(quiet._FILTER)
            trainer = L.Trainer(
                default_root_dir=tmp_path, max_steps=2, limit_val_batches=1, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu",
            )
            trainer.fit(BoringModel())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return handler.messages, [str(w.message) for w in caught]


def test_litlogger_tip_and_leafspec_warning_are_gone_but_other_messages_stay(tmp_path):
    messages, warned = _fit(tmp_path)
    assert not [m for m in messages if "litlogger" in m or "litmodels" in m]
    assert not [w for w in warned if "LeafSpec" in w]
    # Lightning's own, actionable messages still come through (the device summary, a setting it applied).
    assert any("GPU available" in m for m in messages)
    assert any("limit_val_batches=1" in m for m in messages)


def test_without_the_filter_both_messages_appear(tmp_path):
    # Guards the test above: it is silence_unactionable_noise() that removes them, not a quiet Lightning release.
    messages, warned = _fit(tmp_path, silence=False)
    assert any("litlogger" in m for m in messages)
    assert any("LeafSpec" in w for w in warned)
