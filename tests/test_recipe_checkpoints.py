"""The shipped recipes' checkpoint callbacks: ``best.ckpt`` holds the best validation score, ``last.ckpt`` the latest
state (for ``--ckpt_path last``). Lightning's ``save_last`` on a monitored checkpoint writes ``last.ckpt`` only when the
score improves, so the recipes add a ``LatestCheckpoint``. These tests run each recipe's callbacks on a small model
with a scripted validation score and compare with a plain argmax over that script, including a run killed right
after a validation that falls on a save step and resumed with ``ckpt_path="last"``."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from omnifuse.tasks.checkpoints import LatestCheckpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EVERY, STEPS = 4, 23  # validation and saves on the same steps (as the recipes: 500 and 100), and a ragged end
# A validation score per validation step that is neither monotone nor best at the end.
SCRIPT = {4: 0.30, 8: 0.10, 12: 0.55, 16: 0.20, 20: 0.50}
BEST_STEP = max(SCRIPT, key=SCRIPT.get)  # plain argmax over the scripted scores


def _callback_specs(config: Path) -> list[dict]:
    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks") or []
    return [c for c in callbacks if c["class_path"].rpartition(".")[2] in ("ModelCheckpoint", "LatestCheckpoint")]


RECIPES = sorted(
    p for p in CONFIGS.glob("*.yaml") if any((c.get("init_args") or {}).get("monitor") for c in _callback_specs(p))
)


def test_every_monitored_recipe_is_covered():
    names = {p.name for p in RECIPES}
    assert {"easyvqa.yaml", "spoken_vqa.yaml", "mixed_vqa.yaml", "finetune_vqa_to_caption.yaml"} <= names


class Killed(Exception):
    """Stands in for SIGKILL: Lightning re-raises it and saves nothing (the recipes do not set save_on_exception)."""


class ScriptedScore(BoringModel):
    def __init__(self, monitor: str, sign: float, kill_after_validation_at: int | None = None) -> None:
        super().__init__()
        self.monitor, self.sign, self.kill_at = monitor, sign, kill_after_validation_at

    def validation_step(self, batch, batch_idx):
        self.log(self.monitor, self.sign * SCRIPT.get(self.global_step, 0.0))
        return super().validation_step(batch, batch_idx)

    def on_train_batch_start(self, batch, batch_idx):
        if self.kill_at is not None and self.global_step == self.kill_at:
            raise Killed


def _callbacks(config: Path, dirpath: Path) -> list[ModelCheckpoint]:
    out = []
    for spec in _callback_specs(config):
        module, _, name = spec["class_path"].rpartition(".")
        args = dict(spec.get("init_args") or {}, dirpath=str(dirpath))
        if "every_n_train_steps" in args:
            args["every_n_train_steps"] = EVERY  # the recipe's interval, scaled to this run
        out.append(getattr(importlib.import_module(module), name)(**args))
    return out


def _fit(callbacks: list, model: BoringModel, ckpt_path: str | None = None) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=STEPS,
        val_check_interval=EVERY,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def _monitored(config: Path) -> tuple[str, float]:
    specs = _callback_specs(config)
    args = [s.get("init_args") or {} for s in specs]
    assert [bool(a.get("monitor")) for a in args] == [True, False]  # the monitored one first: fit's test uses it
    assert specs[1]["class_path"].endswith("LatestCheckpoint")
    sign = 1.0 if args[0].get("mode", "min") == "max" else -1.0  # a "min" metric: the negated script, same best step
    return args[0]["monitor"], sign


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: p.stem)
def test_best_and_last_checkpoints(config: Path, tmp_path: Path):
    monitor, sign = _monitored(config)
    _fit(_callbacks(config, tmp_path), ScriptedScore(monitor, sign))
    assert _step(tmp_path / "best.ckpt") == BEST_STEP
    assert _step(tmp_path / "last.ckpt") == STEPS  # the final state, though 23 is not a save step
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]


@pytest.mark.parametrize("config", RECIPES[:1], ids=lambda p: p.stem)
def test_a_run_killed_after_a_validation_resumes_with_its_best_score(config: Path, tmp_path: Path):
    """Killed at the start of step 13, just after the best validation (step 12, also a save step): the resumed run
    must keep step 12 as its best, not let step 20's lower score replace it."""
    monitor, sign = _monitored(config)
    with pytest.raises(Killed):
        _fit(_callbacks(config, tmp_path), ScriptedScore(monitor, sign, kill_after_validation_at=BEST_STEP))
    assert _step(tmp_path / "last.ckpt") == BEST_STEP

    resumed = _callbacks(config, tmp_path)
    trainer = _fit(resumed, ScriptedScore(monitor, sign), ckpt_path="last")
    assert trainer.global_step == STEPS
    assert resumed[0].best_model_score.item() == pytest.approx(sign * SCRIPT[BEST_STEP])
    assert _step(tmp_path / "best.ckpt") == BEST_STEP


def test_latest_checkpoint_owns_its_schedule():
    with pytest.raises(ValueError, match="every_n_train_steps"):
        LatestCheckpoint(every_n_train_steps=0)
    for owned in ("monitor", "save_top_k", "save_last"):
        with pytest.raises(TypeError):
            LatestCheckpoint(**{owned: None})


def test_class_paths_resolve():
    for config in RECIPES:
        for c in yaml.safe_load(config.read_text())["trainer"]["callbacks"]:
            module, _, name = c["class_path"].rpartition(".")
            assert hasattr(importlib.import_module(module), name), (config.name, c["class_path"])


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: p.stem)
def test_recipes_build_their_checkpoint_callbacks_through_the_cli(config: Path, tmp_path: Path, monkeypatch):
    """LightningCLI passes every parameter a class signature shows; the callbacks must accept what it builds."""
    from omnifuse.app.cli import cli_main

    monkeypatch.chdir(tmp_path)  # the recipes' relative run folders land here
    model = yaml.safe_load(config.read_text())["model"]
    overlay = "class_path" not in model  # finetune_lora.yaml goes on a recipe
    fine_tunable = overlay or "init_from" in inspect.signature(_class(model["class_path"])).parameters
    # (a recipe that fine-tunes from the main run would need its checkpoint; the contrastive scorer has no init_from)
    overrides = ["--model.init_args.init_from", "null", "--model.init_args.init_skip", "null"] if fine_tunable else []
    base = ["--config", str(CONFIGS / "finetune_vqa_to_spoken.yaml")] if overlay else []
    cli = cli_main([*base, "--config", str(config), *overrides], run=False)
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert [type(c) for c in checkpoints] == [ModelCheckpoint, LatestCheckpoint]
    assert checkpoints[0].monitor and checkpoints[1].monitor is None
    assert checkpoints[1].save_last and checkpoints[1].save_top_k == 0
