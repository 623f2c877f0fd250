"""Optimizer parameter groups (weight decay, per-prefix LR scales) and the RNG states saved in checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnifuse.tasks.module import parameter_groups


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"image": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))})
        self.fusion = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.decoder = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})


def _lookup(groups: list[dict]) -> dict[int, tuple[float, float]]:
    out: dict[int, tuple[float, float]] = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = (g["lr"], g["weight_decay"])
    return out


def test_groups_match_a_per_parameter_reference():
    net = _Net()
    net.decoder["head"].weight.requires_grad_(False)
    scales = {"encoders.image": 0.1, "encoders.image.1": 0.5, "fusion.0": 2.0}
    got = _lookup(parameter_groups(net, weight_decay=0.05, lr=1e-3, lr_scale=scales))

    # (lr, weight decay) per parameter, written out by hand rather than derived by the same rules.
    table = {
        "encoders.image.0.weight": (1e-4, 0.05),  # conv kernel under "encoders.image"
        "encoders.image.0.bias": (1e-4, 0.0),
        "encoders.image.1.weight": (5e-4, 0.0),  # BatchNorm: the longer prefix "encoders.image.1" wins
        "encoders.image.1.bias": (5e-4, 0.0),
        "fusion.0.weight": (2e-3, 0.05),
        "fusion.0.bias": (2e-3, 0.0),
        "fusion.1.weight": (1e-3, 0.0),  # LayerNorm, no scale
        "fusion.1.bias": (1e-3, 0.0),
        "decoder.embed.weight": (1e-3, 0.0),  # embedding table: no decay
    }  # decoder.head.weight is frozen and must be in no group
    params = dict(net.named_parameters())
    expected = {id(params[name]): v for name, v in table.items()}
    assert set(got) == set(expected)
    for key, (lr, decay) in expected.items():
        assert got[key][0] == pytest.approx(lr) and got[key][1] == decay


def test_without_scales_the_groups_are_decay_then_no_decay():
    net = _Net()
    groups = parameter_groups(net, weight_decay=0.05, lr=1e-3)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_unknown_prefix_and_negative_scale_are_errors():
    with pytest.raises(ValueError, match="encoders.audio"):
        parameter_groups(_Net(), 0.05, 1e-3, {"encoders.audio": 0.1})
    with pytest.raises(ValueError, match="fusion"):
        parameter_groups(_Net(), 0.05, 1e-3, {"fusion": -1.0})
    # A prefix must end on a name boundary: "fus" is not a prefix of "fusion.0.weight".
    with pytest.raises(ValueError, match="fus"):
        parameter_groups(_Net(), 0.05, 1e-3, {"fus": 0.1})


def test_scheduler_keeps_each_group_at_its_scale():
    net = _Net()
    opt = torch.optim.AdamW(parameter_groups(net, 0.0, 1e-2, {"encoders": 0.1}), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([5e-4, 5e-4, 5e-3, 5e-3])
    del sched


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from omnifuse.tasks.module import rng_states, set_rng_states

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save({"rng": rng_states()}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    for seed in (torch.manual_seed, np.random.seed, random.seed):  # move every generator elsewhere
        seed(9)
    set_rng_states(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def _adamw_run(kernel: dict, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = _Net()
    grads = [[torch.randn_like(p) for p in net.parameters()] for _ in range(steps)]
    opt = torch.optim.AdamW(parameter_groups(net, 0.05, 1e-2), lr=1e-2, betas=(0.9, 0.99), **kernel)
    for step_grads in grads:
        for p, g in zip(net.parameters(), step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def test_auto_adamw_is_fused_on_cpu_and_matches_the_for_loop_reference():
    from omnifuse.tasks.config import OptimizerConfig
    from omnifuse.tasks.module import adamw_kernel

    net = _Net()
    groups = parameter_groups(net, 0.05, 1e-2)
    kernel = adamw_kernel(groups, OptimizerConfig())
    assert kernel == {"fused": True}
    # torch's for-loop AdamW is the reference; the fused kernel does the same arithmetic in another order.
    for got, want in zip(_adamw_run(kernel), _adamw_run({"foreach": False}), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # An integer (or otherwise unfused) parameter leaves the choice to torch.
    odd = [{"params": [nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)]}]
    assert adamw_kernel(odd, OptimizerConfig()) == {}
    assert adamw_kernel(groups, OptimizerConfig(implementation="for-loop")) == {"foreach": False}


def test_an_unknown_adamw_implementation_is_an_error():
    from omnifuse.tasks.config import OptimizerConfig
    from omnifuse.tasks.module import adamw_kernel

    with pytest.raises(ValueError, match="implementation"):
        adamw_kernel([], OptimizerConfig(implementation="fast"))


def test_fused_adamw_is_left_out_when_lightning_must_clip_under_mixed_precision(tmp_path):
    """A fused AdamW unscales gradients itself, and Lightning then refuses to clip them under mixed precision: the
    recipes that clip (caption, JSON) must still train in bf16-mixed."""
    from pathlib import Path

    from omnifuse.app.cli import cli_main
    from omnifuse.data.easyvqa import prepare_easyvqa
    from omnifuse.tasks.config import OptimizerConfig
    from omnifuse.tasks.module import adamw_kernel

    groups = parameter_groups(_Net(), 0.05, 1e-2)
    assert adamw_kernel(groups, OptimizerConfig(), clips_mixed_precision=True) == {}
    with pytest.raises(ValueError, match="clipping"):
        adamw_kernel(groups, OptimizerConfig(implementation="fused"), clips_mixed_precision=True)
    data = tmp_path / "data"
    prepare_easyvqa(data, parts=("vqa",), limit_images=4)
    cli = cli_main(
        [
            "fit", "--config", str(Path(__file__).parent / "configs" / "tiny_vqa.yaml"),
            "--data.train_manifest", str(data / "vqa_train.jsonl"),
            "--trainer.max_steps=2", "--trainer.precision=bf16-mixed", "--trainer.gradient_clip_val=1.0",
            "--trainer.default_root_dir", str(tmp_path / "run"),
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 2
    optimizer = cli.trainer.optimizers[0]
    assert not optimizer.defaults.get("fused")
