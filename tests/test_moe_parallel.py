"""Expert-parallel MoE on 2 gloo CPU processes equals the single-process layer (outputs and gradients)."""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from omnifuse.moe_core import MoEDecoder, MoEDecoderConfig
from omnifuse.moe_core.moe import MoELayer
from omnifuse.moe_core.parallel import ExpertParallelMoELayer, apply_expert_parallel

WORLD = 2


def _check_layer(rank: int, capacity: float | None) -> None:
    torch.manual_seed(0)
    layer = MoELayer(16, 8, 2, 12, n_shared_experts=1, capacity_factor=capacity, aux_loss_coef=0.1).double().train()
    with torch.no_grad():
        layer.router.expert_bias.copy_(torch.randn(8) * 0.2)
    sizes = [20, 13]  # uneven token counts per rank
    xs = [torch.randn(n, 16, dtype=torch.float64, requires_grad=True) for n in sizes]
    gs = [torch.randn(n, 16, dtype=torch.float64) for n in sizes]

    # reference: the single-process layer on every rank's tokens; gradients summed over ranks
    ref = copy.deepcopy(layer)
    y_ref = []
    for x, g in zip(xs, gs):
        y, aux = ref(x)
        ((y * g).sum() + aux.router_loss).backward()
        y_ref.append(y.detach())

    ep = ExpertParallelMoELayer(copy.deepcopy(layer))
    x = xs[rank].detach().clone().requires_grad_()
    y, aux = ep(x)
    ((y * gs[rank]).sum() + aux.router_loss).backward()

    torch.testing.assert_close(y, y_ref[rank])
    torch.testing.assert_close(x.grad, xs[rank].grad)
    lo, hi = rank * 4, (rank + 1) * 4
    for name in ("w_gate", "w_up", "w_down"):  # sharded: each rank holds the full gradient of its experts
        torch.testing.assert_close(getattr(ep.experts, name).grad, getattr(ref.experts, name).grad[lo:hi])
    for (name, p), p_ref in zip(ep.router.named_parameters(), ref.router.parameters()):
        grad = p.grad.clone()
        dist.all_reduce(grad)  # replicated: the data-parallel all-reduce gives the single-process gradient
        torch.testing.assert_close(grad, p_ref.grad, msg=name)
    for p, p_ref in zip(ep.shared.parameters(), ref.shared.parameters()):
        grad = p.grad.clone()
        dist.all_reduce(grad)
        torch.testing.assert_close(grad, p_ref.grad)
    # balancing counts are all-reduced: the bias update equals the single-process one on all tokens
    ep.router.update_bias()
    ref.router.update_bias()  # counts of all tokens on every rank; the all-reduce scales them, the sign stays
    torch.testing.assert_close(ep.router.expert_bias, ref.router.expert_bias)


def _check_decoder(rank: int) -> None:
    cfg = MoEDecoderConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2, n_dense_layers=1, d_ff_dense=24,
                           n_routed_experts=4, top_k=2, d_expert=8, max_seq_len=32, pad_id=29)  # fmt: skip
    torch.manual_seed(0)
    model = MoEDecoder(cfg).double().eval()
    ids = torch.randint(0, 29, (WORLD, 3, 6))[rank]
    memory = torch.randn(WORLD, 3, 4, 16, dtype=torch.float64)[rank]
    mmask = torch.ones(3, 4, dtype=torch.bool)
    want = model(ids, memory, mmask).logits
    apply_expert_parallel(model)
    assert isinstance(model.blocks[1].ffn, ExpertParallelMoELayer)
    torch.testing.assert_close(model(ids, memory, mmask).logits, want)


def _worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _check_layer(rank, capacity=None)
        _check_layer(rank, capacity=0.8)
        _check_decoder(rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_expert_parallel_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"),), nprocs=WORLD, join=True)
