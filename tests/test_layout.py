"""The layout change kept old names working: class paths in configs and checkpoints written before tasks/ was split
(``omnifuse.tasks.finetune.FinetuneSchedule``, a pickled ``omnifuse.tasks.lora.LoRAConfig``) still resolve to the
very same objects, and nothing in the repository itself still uses an old path."""

from __future__ import annotations

import importlib
import pickle
import pickletools
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# class path before the move -> where it lives now (every class_path the shipped configs used, and more)
OLD_TO_NEW = {
    "omnifuse.tasks.checkpoints.LatestCheckpoint": "omnifuse.tasks.checkpoints.LatestCheckpoint",
    "omnifuse.tasks.finetune.FinetuneSchedule": "omnifuse.finetune.freezing.FinetuneSchedule",
    "omnifuse.tasks.finetune.OmniFSDPStrategy": "omnifuse.tasks.strategies.OmniFSDPStrategy",
    "omnifuse.tasks.finetune.FSDPMixedPrecision": "omnifuse.tasks.strategies.FSDPMixedPrecision",
    "omnifuse.tasks.finetune.load_matching_weights": "omnifuse.finetune.weights.load_matching_weights",
    "omnifuse.tasks.finetune.setup_finetuning": "omnifuse.finetune.setup.setup_finetuning",
    "omnifuse.tasks.lora.SaveLoRAAdapters": "omnifuse.finetune.lora.SaveLoRAAdapters",
    "omnifuse.tasks.lora.LoRAConfig": "omnifuse.finetune.lora.LoRAConfig",
    "omnifuse.tasks.writer.JsonlPredictionWriter": "omnifuse.app.writer.JsonlPredictionWriter",
    "omnifuse.tasks.predict.Predictor": "omnifuse.app.predictor.Predictor",
    "omnifuse.tasks.predict.predict_batch": "omnifuse.tasks.inference.predict_batch",
    "omnifuse.tasks.cli.cli_main": "omnifuse.app.cli.cli_main",
    "omnifuse.tasks.score.main": "omnifuse.app.score.main",
    "omnifuse.tasks.structured.compile_schema": "omnifuse.schema.compile_schema",
    "omnifuse.tasks.structured.compiled.compile_schema": "omnifuse.schema.compiled.compile_schema",
    "omnifuse.tasks.structured.JsonSchemaLogitsProcessor": "omnifuse.schema.JsonSchemaLogitsProcessor",
}


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_class_path_is_the_same_object(old: str) -> None:
    assert _resolve(old) is _resolve(OLD_TO_NEW[old])


def test_old_package_paths_give_the_one_real_module() -> None:
    old = importlib.import_module("omnifuse.tasks.structured.compiler")
    new = importlib.import_module("omnifuse.schema.compiler")
    assert old is new and sys.modules["omnifuse.tasks.structured.compiler"] is new
    assert new.__spec__.name == "omnifuse.schema.compiler"  # the alias did not overwrite the real module's spec


def test_unknown_name_in_a_moved_module_names_the_new_home() -> None:
    moved = importlib.import_module("omnifuse.tasks.finetune")
    with pytest.raises(AttributeError, match="omnifuse.finetune.freezing"):
        moved.no_such_thing  # noqa: B018


def test_a_pickle_written_under_the_old_path_loads() -> None:
    # What a checkpoint saved before the move holds: a LoRAConfig pickled as omnifuse.tasks.lora.LoRAConfig.
    from omnifuse.finetune.lora import LoRAConfig

    data = pickle.dumps(LoRAConfig(r=4), protocol=2).replace(b"omnifuse.finetune.lora", b"omnifuse.tasks.lora")
    assert any("omnifuse.tasks.lora" in str(arg) for _, arg, _ in pickletools.genops(data))
    assert pickle.loads(data) == LoRAConfig(r=4)


def test_nothing_in_the_repository_uses_an_old_path() -> None:
    old = re.compile(r"omnifuse\.tasks\.(structured\b|lora\b|finetune\b|writer\b|score\b|plots\b|cli\b|predict\b)")
    skip = {ROOT / "_moved.py", Path(__file__).resolve()}
    files = [p for ext in ("py", "yaml", "toml", "md") for p in ROOT.rglob(f"*.{ext}") if ".venv" not in p.parts]
    users = [str(p.relative_to(ROOT)) for p in files if p not in skip and old.search(p.read_text(encoding="utf-8"))]
    assert not users, users
