"""MoE layer (router + dispatch + experts) against a naive per-token reference loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import omnifuse.moe_core.experts as experts_mod
from omnifuse.moe_core.experts import expert_swiglu
from omnifuse.moe_core.moe import MoELayer

# ------------------------------------------------------------------------------------------ reference


def ref_route(layer: MoELayer, xt: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
    """Route one token ``xt: (d,)`` with plain Python: returns expert ids and their combine weights."""
    r = layer.router
    logits = r.weight.float() @ xt.float()  # (E,)
    scores = logits.softmax(-1) if r.score_func == "softmax" else logits.sigmoid()
    choice = [float(s) + float(b) for s, b in zip(scores.detach(), r.expert_bias)]
    allowed = list(range(r.n_experts))
    if r.n_groups > 1:
        size = r.n_experts // r.n_groups
        gscore = []
        for g in range(r.n_groups):
            members = sorted((choice[e] for e in range(g * size, (g + 1) * size)), reverse=True)
            gscore.append(sum(members[:2]))
        groups = sorted(range(r.n_groups), key=lambda g: -gscore[g])[: r.topk_groups]
        allowed = [e for g in groups for e in range(g * size, (g + 1) * size)]
    experts = sorted(allowed, key=lambda e: -choice[e])[: r.top_k]
    w = [scores[e] for e in experts]
    if r.score_func == "sigmoid":
        total = sum(w)
        w = [wi / total for wi in w]
    return experts, [wi * r.route_scale for wi in w]


def ref_expert(layer: MoELayer, e: int, xt: torch.Tensor) -> torch.Tensor:
    ex = layer.experts
    return (F.silu(xt @ ex.w_gate[e]) * (xt @ ex.w_up[e])) @ ex.w_down[e]


def ref_moe(layer: MoELayer, x: torch.Tensor, valid: torch.Tensor | None = None, capacity: float | None = None):
    """Per-token loop: ``x: (N, d)`` -> ``(N, d)``, routed counts and dropped copies."""
    n = x.size(0)
    valid = torch.ones(n, dtype=torch.bool) if valid is None else valid
    routes = [ref_route(layer, x[i]) if valid[i] else ([], []) for i in range(n)]
    E = layer.n_experts
    routed = [0] * E
    for experts, _ in routes:
        for e in experts:
            routed[e] += 1
    cap = math.ceil(capacity * sum(routed) / E) if capacity is not None else None
    seen = [0] * E
    outs, dropped = [], 0
    for i in range(n):
        y = torch.zeros_like(x[i])
        for e, w in zip(*routes[i]):
            seen[e] += 1
            if cap is not None and seen[e] > cap:
                dropped += 1
                continue
            y = y + w.to(x.dtype) * ref_expert(layer, e, x[i])
        if layer.shared is not None:
            sh = layer.shared
            y = y + sh.w2.weight @ (F.silu(sh.w1.weight @ x[i]) * (sh.w3.weight @ x[i]))
        outs.append(y)
    return torch.stack(outs), torch.tensor(routed), dropped


def grads(layer, x):
    return [x.grad] + [p.grad for p in layer.parameters()]


def check_against_reference(layer: MoELayer, n: int = 24, valid=None, capacity=None, dtype=torch.float64, **tol):
    layer = layer.to(dtype)
    d = layer.router.weight.size(1)
    x = torch.randn(n, d, dtype=dtype, requires_grad=True)
    g = torch.randn(n, d, dtype=dtype)
    y, aux = layer(x, valid)
    (y * g).sum().backward()
    got = grads(layer, x)

    layer.zero_grad()
    x.grad = None
    y_ref, routed, dropped = ref_moe(layer, x, valid, capacity)
    (y_ref * g).sum().backward()
    want = grads(layer, x)

    torch.testing.assert_close(y, y_ref, **tol)
    assert all(g is not None for g in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    assert aux.stats.tokens_per_expert.tolist() == routed.tolist()
    assert int(aux.stats.dropped) == dropped
    return aux


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n_shared", [0, 2])
def test_moe_matches_reference(score_func, n_shared):
    layer = MoELayer(16, 8, 2, 12, n_shared_experts=n_shared, score_func=score_func, route_scale=1.5)
    with torch.no_grad():
        layer.router.expert_bias.copy_(torch.randn(8) * 0.1)
    check_against_reference(layer)


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_grouped_routing_matches_reference(score_func):
    layer = MoELayer(16, 12, 3, 8, n_shared_experts=1, score_func=score_func, n_groups=4, topk_groups=2)
    with torch.no_grad():
        layer.router.expert_bias.copy_(torch.randn(12) * 0.2)
    check_against_reference(layer, n=32)


HAS_GROUPED_MM = experts_mod._grouped_mm is not None


@pytest.mark.parametrize("impl", ["loop", "grouped_mm"])
@pytest.mark.parametrize("block_elems", [1, 360, 1 << 20])  # 1, about 2, all experts per block
def test_expert_kernels_match_reference(impl, block_elems, monkeypatch):
    if impl == "grouped_mm" and not HAS_GROUPED_MM:
        pytest.skip("torch without grouped_mm")
    monkeypatch.setattr(experts_mod, "_BLOCK_ELEMS", block_elems)
    layer = MoELayer(16, 8, 3, 12, n_shared_experts=1, expert_impl=impl)
    # grouped_mm has fp32/bf16 kernels only (on CPU too); the loop is checked in fp64
    dtype, tol = (torch.float32, dict(rtol=1e-4, atol=1e-5)) if impl == "grouped_mm" else (torch.float64, {})
    check_against_reference(layer, n=40, dtype=dtype, **tol)


@pytest.mark.parametrize("impl", ["loop", "grouped_mm"])
def test_sorted_rows_path_matches_reference(impl, monkeypatch):
    """``expert_swiglu`` on rows already grouped by expert (the expert-parallel path), with row weights."""
    if impl == "grouped_mm" and not HAS_GROUPED_MM:
        pytest.skip("torch without grouped_mm")
    monkeypatch.setattr(experts_mod, "_BLOCK_ELEMS", 1)
    dtype = torch.float32 if impl == "grouped_mm" else torch.float64
    E, d, h = 5, 8, 12
    counts = torch.tensor([3, 0, 4, 1, 2])
    rows = torch.randn(10, d, dtype=dtype, requires_grad=True)
    w = torch.rand(10, dtype=dtype, requires_grad=True)
    ws = [torch.randn(E, d, h, dtype=dtype, requires_grad=True) for _ in range(2)]
    wd = torch.randn(E, h, d, dtype=dtype, requires_grad=True)
    g = torch.randn(10, d, dtype=dtype)
    params = [rows, w, *ws, wd]
    y = expert_swiglu(rows, ws[0], ws[1], wd, counts, w, impl=impl)
    got = torch.autograd.grad((y * g).sum(), params)
    expert = torch.repeat_interleave(torch.arange(E), counts).tolist()
    y_ref = torch.stack(
        [w[i] * (F.silu(rows[i] @ ws[0][e]) * (rows[i] @ ws[1][e])) @ wd[e] for i, e in enumerate(expert)]
    )
    want = torch.autograd.grad((y_ref * g).sum(), params)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(y, y_ref, **tol)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


def _kernel_case(impl: str) -> dict:
    """dtype and tolerance for a kernel: grouped_mm has fp32/bf16 kernels only, the loop is checked in fp64."""
    if impl == "grouped_mm" and not HAS_GROUPED_MM:
        pytest.skip("torch without grouped_mm")
    return dict(dtype=torch.float32, rtol=1e-4, atol=1e-5) if impl == "grouped_mm" else {}


@pytest.mark.parametrize("impl", ["loop", "grouped_mm"])
def test_capacity_dropping_matches_reference(impl):
    layer = MoELayer(16, 4, 2, 8, n_shared_experts=1, capacity_factor=0.75, expert_impl=impl)
    with torch.no_grad():
        layer.router.expert_bias.copy_(torch.tensor([0.5, 0.2, 0.0, -0.3]))  # skew so that something drops
    layer.train()
    aux = check_against_reference(layer, n=40, capacity=0.75, **_kernel_case(impl))
    assert int(aux.stats.dropped) > 0


def test_capacity_only_applies_in_training():
    layer = MoELayer(16, 4, 2, 8, capacity_factor=0.5).double().eval()
    check_against_reference(layer, capacity=None)


@pytest.mark.parametrize("impl", ["loop", "grouped_mm"])
def test_padding_tokens_are_not_routed(impl):
    layer = MoELayer(16, 6, 2, 8, n_shared_experts=1, capacity_factor=1.0, expert_impl=impl).train()
    valid = torch.rand(30) > 0.3
    aux = check_against_reference(layer, n=30, valid=valid, capacity=1.0, **_kernel_case(impl))
    assert int(aux.stats.tokens_per_expert.sum()) == 2 * int(valid.sum())


def test_gather_and_combine_copies_match_a_plain_loop():
    """The atomics-free gather / combine of the grouped kernel, forward and backward, with empty slots (dropped or
    padding copies) and tokens that keep no copy at all."""
    n, k, d = 7, 3, 5
    order = torch.tensor([4, 0, 13, 7, 2, 19, 9, 1, 11])  # kept copies' slots, in some expert order; token 5 keeps none
    x = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(order.numel(), d, dtype=torch.float64, requires_grad=True)
    gx, gy = torch.randn(order.numel(), d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)

    slots = experts_mod.CopySlots(order, n, k)
    xs, out = slots.gather(x), slots.combine(ys)
    dx, dys = torch.autograd.grad([(xs * gx).sum(), (out * gy).sum()], [x, ys])

    xs_ref = torch.stack([x[int(o) // k] for o in order])
    out_ref = [torch.zeros(d, dtype=torch.float64) for _ in range(n)]
    dx_ref = [torch.zeros(d, dtype=torch.float64) for _ in range(n)]
    for i, o in enumerate(order.tolist()):
        out_ref[o // k] = out_ref[o // k] + ys[i]
        dx_ref[o // k] = dx_ref[o // k] + gx[i]
    torch.testing.assert_close(xs, xs_ref)
    torch.testing.assert_close(out, torch.stack(out_ref))
    torch.testing.assert_close(dx, torch.stack(dx_ref))
    torch.testing.assert_close(dys, torch.stack([gy[o // k] for o in order.tolist()]))
    assert out[5].abs().sum() == 0 and dx[5].abs().sum() == 0
    # a non-finite copy output stays with its own token (empty slots must not pick it up)
    bad = ys.detach().clone()
    bad[0] = float("inf")
    finite = slots.combine(bad).isfinite().all(-1)
    assert finite.tolist() == [t != int(order[0]) // k for t in range(n)]


def test_grouped_kernel_in_bf16_with_padding_tracks_fp64_loop():
    """The GPU configuration (grouped_mm, bf16, padded batch) against the fp64 loop kernel; CPU grouped_mm takes bf16."""
    _kernel_case("grouped_mm")
    torch.manual_seed(0)
    ref = MoELayer(32, 8, 2, 16, n_shared_experts=1, expert_impl="loop").double()
    fast = MoELayer(32, 8, 2, 16, n_shared_experts=1, expert_impl="grouped_mm")
    fast.load_state_dict(ref.state_dict())
    fast = fast.bfloat16()
    x = torch.randn(4, 10, 32, dtype=torch.float64)
    valid = torch.rand(4, 10) > 0.3
    g = torch.randn(4, 10, 32, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.bfloat16().requires_grad_()
    y1, _ = ref(x1, valid)
    y2, _ = fast(x2, valid)
    (y1 * g).sum().backward()
    (y2.double() * g).sum().backward()

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm())

    assert y2.dtype == torch.bfloat16
    assert rel(y2, y1) < 0.02 and rel(x2.grad, x1.grad) < 0.02
    assert rel(fast.experts.w_down.grad, ref.experts.w_down.grad) < 0.05


def test_float32_and_batched_shape():
    layer = MoELayer(16, 8, 2, 12, n_shared_experts=1)
    x = torch.randn(3, 5, 16)
    y, aux = layer(x)
    y_ref, _, _ = ref_moe(layer, x.reshape(15, 16))
    torch.testing.assert_close(y, y_ref.view(3, 5, 16), rtol=1e-5, atol=1e-6)
    assert aux.topk_idx.shape == (3, 5, 2)


def test_empty_experts_and_no_tokens():
    w = [torch.randn(4, 8, 6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    wd = torch.randn(4, 6, 8, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([0, 5, 0, 0])
    y = expert_swiglu(x, w[0], w[1], wd, counts, impl="loop")
    y.sum().backward()
    torch.testing.assert_close(y, (F.silu(x @ w[0][1]) * (x @ w[1][1])) @ wd[1])
    assert wd.grad[0].abs().sum() == 0 and wd.grad[1].abs().sum() > 0
    y0 = expert_swiglu(x[:0], w[0], w[1], wd, torch.zeros(4, dtype=torch.long), impl="loop")
    assert y0.shape == (0, 8)


def test_stats_and_losses():
    layer = MoELayer(16, 8, 2, 8, aux_loss_coef=0.1, seq_aux_loss_coef=0.01, z_loss_coef=1e-3).train()
    x = torch.randn(2, 10, 16)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False
    _, aux = layer(x, valid)
    counts = aux.stats.tokens_per_expert
    assert int(counts.sum()) == 16 * 2
    torch.testing.assert_close(aux.stats.max_over_mean, counts.max().float() / counts.float().mean())
    # losses: reference values from their definitions
    r = layer.router
    xf = x.reshape(-1, 16)[valid.reshape(-1)]
    logits = xf @ r.weight.T
    s = logits.sigmoid()
    p = s / s.sum(-1, keepdim=True)
    idx = aux.topk_idx.reshape(-1, 2)[valid.reshape(-1)]
    f = torch.zeros(8).index_add_(0, idx.reshape(-1), torch.ones(idx.numel())) * 8 / (2 * xf.size(0))
    aux_ref = (f * p.mean(0)).sum()
    torch.testing.assert_close(aux.stats.aux_loss, aux_ref)
    seq = []
    for b, n in ((0, 10), (1, 6)):
        rows = slice(0, 10) if b == 0 else slice(10, 16)
        fb = torch.zeros(8).index_add_(0, idx[rows].reshape(-1), torch.ones(2 * n)) * 8 / (2 * n)
        seq.append((fb * p[rows].mean(0)).sum())
    torch.testing.assert_close(aux.stats.seq_aux_loss, torch.stack(seq).mean())
    torch.testing.assert_close(aux.stats.z_loss, torch.logsumexp(logits, -1).square().mean())
    torch.testing.assert_close(
        aux.router_loss, 0.1 * aux_ref + 0.01 * torch.stack(seq).mean() + 1e-3 * aux.stats.z_loss
    )
    aux.router_loss.backward()
    assert r.weight.grad is not None and r.weight.grad.abs().sum() > 0
    # counts for bias balancing accumulate in training only, real tokens only
    torch.testing.assert_close(r.load_counts, counts.float())
    layer.eval()
    layer(x, valid)
    torch.testing.assert_close(r.load_counts, counts.float())
