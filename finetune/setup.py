"""What a task does to its freshly built model before training: ``init_from``, LoRA, ``freeze`` (in that order)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from omnifuse.finetune.freezing import _report, freeze_groups, trainable_summary
from omnifuse.finetune.weights import InitReport, load_matching_weights

if TYPE_CHECKING:
    from omnifuse.finetune.lora import LoRAConfig


def setup_finetuning(
    model: nn.Module,
    init_from: str | None = None,
    freeze: list[str] | None = None,
    lora: LoRAConfig | None = None,
    init_skip: list[str] | None = None,
) -> InitReport | None:
    """What ``OmniTask(init_from=..., init_skip=..., freeze=..., lora=...)`` does to its freshly built model, in order:

    1. ``init_from``: load the matching weights (:func:`load_matching_weights`), except the ``init_skip`` groups;
    2. ``lora``: add the adapters and freeze everything else except ``lora.trainable`` groups and, when
       ``lora.train_new`` (default), the tensors ``init_from`` did not provide (e.g. a new audio encoder);
    3. ``freeze``: freeze these groups (adapters inside them stay trainable).

    Prints the load report and the trainable-parameter count; returns the :class:`InitReport` (None without
    ``init_from``).
    """
    if init_skip and not init_from:
        raise ValueError("init_skip names groups not to load from init_from, but init_from is not set")
    report = load_matching_weights(model, init_from, skip=init_skip or ()) if init_from else None
    if lora is not None:
        from omnifuse.finetune.lora import apply_lora

        apply_lora(model, lora, new_keys=report.new + report.skipped if report is not None else None)
    if freeze:
        freeze_groups(model, freeze)
    if init_from or freeze or lora is not None:
        _report(f"omnifuse fine-tuning: {trainable_summary(model)}")
    return report
