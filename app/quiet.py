"""Silence what a user cannot act on, and only that.

* Lightning's "💡 Tip: try installing litlogger / litmodels" lines, printed by every Trainer: advertisements.
* torch's ``isinstance(treespec, LeafSpec)`` FutureWarning, raised inside Lightning's own pytree helper: only a
  Lightning release can change that code.

Everything else (Lightning's warnings about data loader workers, a checkpoint's missing keys, ...) still shows.
"""

from __future__ import annotations

import logging
import warnings


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


_FILTER = _DropTips()


def silence_unactionable_noise() -> None:
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
