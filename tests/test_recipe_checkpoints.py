"""The shipped recipes' checkpoint callbacks: ``best.ckpt`` holds the best validation score, ``last.ckpt`` the latest
state (for ``--ckpt_path last``). Lightning's ``save_last`` on a monitored checkpoint writes ``last.ckpt`` only when the
score improves, so the recipes keep a second, unmonitored checkpoint for resuming; these tests run each recipe's
callbacks on a small model with a scripted validation score and compare with a plain argmax over that script."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VAL_EVERY, SAVE_EVERY, STEPS = 4, 5, 23
# A validation score per validation step that is neither monotone nor best at the end.
SCRIPT = {4: 0.30, 8: 0.10, 12: 0.55, 16: 0.20, 20: 0.50}


def _checkpoint_args(config: Path) -> list[dict]:
    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks") or []
    return [dict(c.get("init_args") or {}) for c in callbacks if c["class_path"].endswith(".ModelCheckpoint")]


RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if any(a.get("monitor") for a in _checkpoint_args(p)))


def test_every_monitored_recipe_is_covered():
    names = {p.name for p in RECIPES}
    assert {"easyvqa.yaml", "spoken_vqa.yaml", "mixed_vqa.yaml", "finetune_vqa_to_caption.yaml"} <= names


class ScriptedScore(BoringModel):
    def __init__(self, monitor: str, sign: float) -> None:
        super().__init__()
        self.monitor, self.sign = monitor, sign

    def validation_step(self, batch, batch_idx):
        self.log(self.monitor, self.sign * SCRIPT.get(self.global_step, 0.0))
        return super().validation_step(batch, batch_idx)


def _callbacks(config: Path, dirpath: Path) -> list[ModelCheckpoint]:
    out = []
    for args in _checkpoint_args(config):
        args["dirpath"] = str(dirpath)
        if "every_n_train_steps" in args:
            args["every_n_train_steps"] = SAVE_EVERY  # the recipe's 100 steps, scaled to this run
        out.append(ModelCheckpoint(**args))
    return out


def _trainer(callbacks: list, max_steps: int = STEPS) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        val_check_interval=VAL_EVERY,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: p.stem)
def test_best_and_last_checkpoints(config: Path, tmp_path: Path):
    args = _checkpoint_args(config)
    monitored = [a for a in args if a.get("monitor")]
    assert len(monitored) == 1 and args[0] is monitored[0]  # first: fit's own test step uses it as "best"
    mode = monitored[0].get("mode", "min")
    sign = 1.0 if mode == "max" else -1.0  # a "min" metric gets the negated script, so the same step is best

    callbacks = _callbacks(config, tmp_path)
    _trainer(callbacks).fit(ScriptedScore(monitored[0]["monitor"], sign))

    best_step = max(SCRIPT, key=SCRIPT.get)  # plain argmax over the scripted scores
    latest_save = (STEPS // SAVE_EVERY) * SAVE_EVERY
    assert _step(tmp_path / "best.ckpt") == best_step
    assert _step(tmp_path / "last.ckpt") == latest_save != best_step
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]

    # `--ckpt_path last` resolves to the latest state, and the best score survives the resume.
    resumed = _callbacks(config, tmp_path)
    trainer = _trainer(resumed, max_steps=STEPS + 1)
    trainer.fit(ScriptedScore(monitored[0]["monitor"], sign), ckpt_path="last")
    assert trainer.global_step == STEPS + 1
    assert resumed[0].best_model_score.item() == pytest.approx(sign * SCRIPT[best_step])
    assert _step(tmp_path / "best.ckpt") == best_step


def test_class_paths_resolve():
    for config in RECIPES:
        for c in yaml.safe_load(config.read_text())["trainer"]["callbacks"]:
            module, _, name = c["class_path"].rpartition(".")
            assert hasattr(importlib.import_module(module), name), (config.name, c["class_path"])
