"""Fine-tuning: start from another run's weights, freeze module groups, unfreeze them on a schedule, LoRA.

* ``init_from`` (:mod:`~omnifuse.finetune.weights`): copy every tensor whose name and shape match from a ``.ckpt``, a
  ``save_pretrained`` folder or a ``.safetensors`` file, and report what was loaded, new and unused.
* ``freeze`` and :class:`FinetuneSchedule` (:mod:`~omnifuse.finetune.freezing`): module groups by name or pattern.
* ``lora`` (:mod:`~omnifuse.finetune.lora`): adapters on attention, experts and fusion; merge, save and load them.
* :func:`setup_finetuning` (:mod:`~omnifuse.finetune.setup`): what a task does with these settings, in order.

It builds on the model's parts (encoders, fusion, moe_core) and never on ``omnifuse.tasks``: the tasks call it.
"""

from __future__ import annotations

import importlib

# Imported on first use: OmniModel reads the model-folder format (finetune.format) without importing Lightning.
_LAZY = {
    **dict.fromkeys(
        ["MODULE_GROUPS", "FinetuneSchedule", "count_parameters", "freeze_groups", "freeze_modules", "resolve_modules",
         "trainable_summary", "unfreeze_modules"],
        "omnifuse.finetune.freezing",
    ),
    **dict.fromkeys(
        ["LoRAConfig", "SaveLoRAAdapters", "load_lora_adapters", "merge_lora", "save_lora_adapters"],
        "omnifuse.finetune.lora",
    ),
    "setup_finetuning": "omnifuse.finetune.setup",
    **dict.fromkeys(["InitReport", "load_matching_weights", "read_model_state"], "omnifuse.finetune.weights"),
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnifuse.finetune' has no attribute {name!r}")


__all__ = [
    "MODULE_GROUPS",
    "FinetuneSchedule",
    "InitReport",
    "LoRAConfig",
    "SaveLoRAAdapters",
    "count_parameters",
    "freeze_groups",
    "freeze_modules",
    "load_lora_adapters",
    "load_matching_weights",
    "merge_lora",
    "read_model_state",
    "resolve_modules",
    "save_lora_adapters",
    "setup_finetuning",
    "trainable_summary",
    "unfreeze_modules",
]
