"""Two CPU processes (gloo) through the CLI with plain ``--trainer.strategy=ddp``: both ranks end with identical weights,
the routers' bias updates use the all-reduced token counts, a batch missing a modality does not break DDP, and a
group unfrozen by FinetuneSchedule after DDP wrapped the model stays synchronised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .test_finetune_support import build_tiny_easyvqa, run_cli, write_config

PROBE = '''
import torch
import lightning as L


def _routers(pl_module):
    return [layer.router for layer in pl_module.model.decoder.moe_layers]


class RankProbe(L.Callback):
    """Records, per step, the router biases before/after and the local token counts; saves everything per rank."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.steps = []

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.bias_before = [r.expert_bias.clone() for r in _routers(pl_module)]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.counts = [r.load_counts.clone() for r in _routers(pl_module)]  # this rank's, not yet all-reduced

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(
            {
                "ids": list(batch.ids),
                "bias_before": self.bias_before,
                "counts": self.counts,
                "bias_after": [r.expert_bias.clone() for r in _routers(pl_module)],
                "rate": [r.bias_update_rate for r in _routers(pl_module)],
                "embed": pl_module.model.decoder.embed.weight.detach().clone(),
            }
        )

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "initial": self.initial,
                "final": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "params": [n for n, _ in pl_module.named_parameters()],
                "steps": self.steps,
                "world": trainer.world_size,
                "ddp_kwargs": dict(getattr(trainer.strategy, "_ddp_kwargs", {})),
                "wrapped": type(trainer.strategy.model).__name__,
                "run_dir": str(trainer.default_root_dir),
            },
            f"{self.out}/rank{trainer.global_rank}.pt",
        )
'''


@pytest.mark.distributed
def test_ddp_two_cpu_ranks_stay_identical_and_all_reduce_router_counts(tmp_path_factory, tmp_path):
    data = build_tiny_easyvqa(tmp_path_factory.mktemp("easyvqa"))
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    out = tmp_path / "out"
    out.mkdir()
    config = write_config(
        tmp_path / "ddp.yaml",
        {
            "trainer": {
                "max_steps": -1,
                "max_epochs": 2,
                "limit_train_batches": 1,  # one step per epoch: epoch 0 with the embedding frozen, epoch 1 without
                "limit_val_batches": 0,
                "enable_checkpointing": False,
                "callbacks": [
                    {"class_path": "ddp_probe.RankProbe", "init_args": {"out": str(out)}},
                    {
                        "class_path": "omnifuse.finetune.freezing.FinetuneSchedule",
                        "init_args": {"unfreeze": {1: ["decoder_embeddings"]}, "lr_ratio": 1.0},
                    },
                ],
            },
            # 8 experts (not the tiny config's 4) so that one rank's loads and the summed loads differ in sign pattern:
            # otherwise a rank updating from its own counts could not be told apart from the all-reduced update.
            "model": {"init_args": {"decoder": {"bias_update_rate": 0.01, "n_routed_experts": 8}}},
            # Image-only and text-only records, one per rank and step: each step leaves one encoder unused.
            "data": {"train_manifest": str(data / "mixed_train.jsonl"), "batch_size": 1},
        },
    )
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
    ]
    proc = run_cli(args, cwd=tmp_path, extra_pythonpath=tmp_path)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-4000:]

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world"] == 2 and r["wrapped"] == "DistributedDataParallel" for r in ranks)
    assert ranks[0]["ddp_kwargs"].get("find_unused_parameters") is True  # turned on for plain `ddp`
    # One run folder for the job: the worker process inherits the launcher's choice instead of claiming another.
    assert sorted(p.name for p in tmp_path.glob("version_*")) == ["version_0"]
    assert {Path(r["run_dir"]).resolve() for r in ranks} == {(tmp_path / "version_0").resolve()}
    ids = [[s["ids"] for s in r["steps"]] for r in ranks]
    assert len(ids[0]) == len(ids[1]) == 2 and ids[0] != ids[1]  # two steps, different data per rank
    kinds = {i.rsplit("-", 1)[1] for r in ids for step in r for i in step}
    assert kinds == {"img", "txt"}

    # Identical weights on both ranks (parameters and routers' biases; BatchNorm running statistics are per rank
    # in DDP by design), and they did change.
    final0, final1 = ranks[0]["final"], ranks[1]["final"]
    compared = [k for k in final0 if k in ranks[0]["params"] or k.endswith("expert_bias")]
    for k in compared:
        torch.testing.assert_close(final0[k], final1[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(final0[k], ranks[0]["initial"][k]) for k in compared if "decoder.blocks" in k)

    # The embedding, frozen in epoch 0 and unfrozen after DDP wrapped the model, trained in epoch 1 on both ranks.
    embed0 = ranks[0]["initial"]["model.decoder.embed.weight"]
    for r in ranks:
        torch.testing.assert_close(r["steps"][0]["embed"], embed0, rtol=0, atol=0)
        assert not torch.equal(r["steps"][1]["embed"], embed0)

    # Router biases: b += rate * sign(mean(load) - load) with the load summed over both ranks.
    discriminating = False
    for step in range(2):
        s0, s1 = ranks[0]["steps"][step], ranks[1]["steps"][step]
        for layer in range(len(s0["counts"])):
            total = s0["counts"][layer] + s1["counts"][layer]
            assert total.sum() > 0
            rate = s0["rate"][layer]
            expected = s0["bias_before"][layer] + rate * torch.sign(total.mean() - total)
            for s in (s0, s1):
                torch.testing.assert_close(s["bias_after"][layer], expected, rtol=0, atol=1e-7)
            for s in (s0, s1):  # either rank updating from its own counts alone would have ended elsewhere
                local = s["counts"][layer]
                local_only = s["bias_before"][layer] + rate * torch.sign(local.mean() - local)
                discriminating |= not torch.allclose(local_only, expected)
    assert discriminating  # a rank updating from its own counts would have ended elsewhere
