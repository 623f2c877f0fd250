"""Expert parallelism through the CLI (``ExpertParallelStrategy``, 2 gloo CPU processes) against a single process with
the same global batch: the losses of every step agree to 1e-9, the validation metrics to 1e-7, and the final weights and
optimizer moments to 1e-8 (a float64 run; the routers score in float32 by design, so routing weights carry float32
rounding that a different batch split rounds differently); an expert-parallel run resumed from its checkpoint ends
where the uninterrupted one did (to float32 precision, see below); a single process validates the (gathered, full) expert-parallel checkpoint to the
metrics the expert-parallel run logged."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from omnifuse.finetune.safe_load import load_checkpoint

from .test_finetune_support import run_cli

PROBE = '''
import torch
import lightning as L


class Probe(L.Callback):
    """Per rank: the loss of every step and the validation metrics; saved at the end of fit or validate."""

    def __init__(self, out: str) -> None:
        self.out, self.losses, self.val = out, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        if trainer.state.fn == "validate":
            self._save(trainer, pl_module)

    def _save(self, trainer, pl_module):
        layers = [type(m).__name__ for m in pl_module.model.decoder.moe_layers]
        torch.save({"losses": self.losses, "val": self.val, "world": trainer.world_size, "layers": layers},
                   f"{self.out}/rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module):
        self._save(trainer, pl_module)
'''


def _records(n: int, seed: int) -> list[dict]:
    """Text-only sums with two-digit answers: every target has the same length, so every rank's batch has the same
    number of target tokens and the mean of the ranks' losses is the loss of the global batch."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randrange(50), rng.randrange(50)
        rows.append({"id": f"s{seed}-{i}", "task": "vqa", "text": f"what is {a} plus {b}?", "target": f"{a + b:02d}"})
    return rows


def _config(root: Path, data: Path, out: Path, batch_size: int, **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 6, "precision": "64-true", "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "val_check_interval": 3, "check_val_every_n_epoch": None, "default_root_dir": str(root),
            "callbacks": [
                {"class_path": "probe.Probe", "init_args": {"out": str(out)}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(root / "ckpt"), "save_last": True, "every_n_train_steps": 3,
                               "save_top_k": -1, "filename": "{step}"}},
            ],
            **trainer,
        },
        "model": {
            "class_path": "omnifuse.tasks.VQATask",
            "init_args": {
                "text_encoder": {"class_path": "omnifuse.encoders.TextEncoder",
                                 "init_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 64}},
                "fusion": {"n_layers": 1, "n_heads": 2},
                # Every decoder layer is MoE, 8 experts (4 per rank), a shared expert; fast-moving router biases.
                "decoder": {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_dense_layers": 0, "n_routed_experts": 8,
                            "n_shared_experts": 1, "top_k": 2, "d_expert": 16, "max_seq_len": 64,
                            "bias_update_rate": 0.01},
                # A constant learning rate after one warm-up step: a run stopped at step 3 and resumed to 6 follows
                # the same schedule as one run to 6.
                "optimizer": {"lr": 0.003, "warmup_steps": 1, "min_lr_ratio": 1.0},
                "generation": {"max_new_tokens": 4},
            },
        },
        "data": {"train_manifest": str(data / "train.jsonl"), "val_manifest": str(data / "val.jsonl"),
                 "batch_size": batch_size, "eval_batch_size": 4},
    }  # fmt: skip
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run(tmp: Path, name: str, data: Path, batch_size: int, world: int, extra: tuple = (), verb: str = "fit") -> dict:
    root, out = tmp / name, tmp / name / "probe"
    out.mkdir(parents=True)
    config = _config(root, data, out, batch_size)
    args = [verb, "--config", str(config), *extra]
    if world > 1:
        args += [f"--trainer.devices={world}", "--trainer.strategy=expert_parallel"]
    proc = run_cli(args, cwd=tmp, extra_pythonpath=tmp)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-4000:]
    return {"ranks": [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)], "root": root}


def _state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(path)["state_dict"].items() if k.startswith("model.")}


@pytest.mark.distributed
def test_expert_parallel_training_equals_one_process_and_its_checkpoints_are_full(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(32, 0)))
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(8, 1)))
    (tmp_path / "probe.py").write_text(PROBE)

    single = _run(tmp_path, "single", data, batch_size=8, world=1)
    ep = _run(tmp_path, "ep", data, batch_size=4, world=2)
    assert [r["world"] for r in ep["ranks"]] == [2, 2]
    assert set(ep["ranks"][0]["layers"]) == {"ExpertParallelMoELayer"}

    # Every step: the mean of the two ranks' losses is the single process's loss on the union of their batches.
    losses = single["ranks"][0]["losses"]
    ep_losses = [(a + b) / 2 for a, b in zip(ep["ranks"][0]["losses"], ep["ranks"][1]["losses"], strict=True)]
    assert len(losses) == len(ep_losses) == 6
    torch.testing.assert_close(
        torch.tensor(ep_losses, dtype=torch.float64), torch.tensor(losses, dtype=torch.float64), rtol=0, atol=1e-9
    )
    assert losses[-1] < losses[0]

    # Validation (at steps 3 and 6) on the gathered experts: the same loss and accuracy as one process.
    for ours, theirs in zip(ep["ranks"][0]["val"], single["ranks"][0]["val"], strict=True):
        assert ours.keys() == theirs.keys() and "val/vqa_accuracy" in ours
        for k in ours:
            assert ours[k] == pytest.approx(theirs[k], rel=1e-7), k

    # The checkpoint holds full expert tensors (8 experts), equal to the single process's weights after 6 steps.
    ep_state, single_state = _state(ep["root"] / "ckpt" / "last.ckpt"), _state(single["root"] / "ckpt" / "last.ckpt")
    assert ep_state.keys() == single_state.keys()
    experts = [k for k in ep_state if k.endswith("experts.w_gate")]
    assert experts and all(ep_state[k].shape[0] == 8 for k in experts)
    for k in ep_state:
        torch.testing.assert_close(ep_state[k], single_state[k], rtol=0, atol=1e-8, msg=k)
    # ... and so does the optimizer state (Adam's moments of the experts, gathered).
    ep_opt = load_checkpoint(ep["root"] / "ckpt" / "last.ckpt")["optimizer_states"][0]["state"]
    single_opt = load_checkpoint(single["root"] / "ckpt" / "last.ckpt")["optimizer_states"][0]["state"]
    for index, entry in single_opt.items():
        for k, v in entry.items():
            torch.testing.assert_close(ep_opt[index][k], v, rtol=0, atol=1e-8, msg=f"{index}.{k}")

    # Resumed from the step-3 checkpoint in expert-parallel mode: ends where the uninterrupted run did.
    step3 = str(ep["root"] / "ckpt" / "step=3.ckpt")
    resumed = _run(tmp_path, "resumed", data, batch_size=4, world=2, extra=("--ckpt_path", step3))
    resumed_state = _state(resumed["root"] / "ckpt" / "last.ckpt")
    # (To float32 precision: Lightning restores a checkpoint's weights before its 64-true precision plugin converts
    # the model to float64, so the float64 values pass through the float32 parameters once; a 32-true run resumes
    # bit-exactly, measured on this same model in one process.)
    for k in ep_state:
        torch.testing.assert_close(resumed_state[k], ep_state[k], rtol=1e-5, atol=1e-6, msg=k)
    resumed_opt = load_checkpoint(resumed["root"] / "ckpt" / "last.ckpt")["optimizer_states"][0]["state"]
    for index, entry in ep_opt.items():
        for k, v in entry.items():
            torch.testing.assert_close(resumed_opt[index][k], v, rtol=1e-5, atol=1e-6, msg=f"{index}.{k}")

    # One process validates the expert-parallel checkpoint to the metrics the expert-parallel run logged at step 6
    # (rel 1e-7: the ranks' validation batches are padded differently from one process's, and the router and RoPE
    # compute in float32).
    last = str(ep["root"] / "ckpt" / "last.ckpt")
    check = _run(tmp_path, "validate", data, batch_size=4, world=1, extra=("--ckpt_path", last), verb="validate")
    (ours,) = check["ranks"][0]["val"]
    for k, v in ep["ranks"][0]["val"][-1].items():
        assert ours[k] == pytest.approx(v, rel=1e-7), k
