"""Adaptive routing (``top_p``): a token takes experts until their share of its affinity reaches p.

Checked against a plain per-token loop, against fixed top-k when p cannot be reached before top_k, and through
generation (routing telemetry of unused slots, counts)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnifuse.moe_core import MoEDecoder, MoEDecoderConfig
from omnifuse.moe_core.moe import MoELayer


def _layer(score_func: str, top_p: float | None, min_experts: int = 1, top_k: int = 4) -> MoELayer:
    torch.manual_seed(0)
    layer = (
        MoELayer(16, 8, top_k, 8, n_shared_experts=1, score_func=score_func, top_p=top_p, min_experts=min_experts)
        .double()
        .eval()
    )
    for w in (layer.router.weight, layer.experts.w_gate, layer.experts.w_up, layer.experts.w_down):
        torch.nn.init.normal_(w, std=0.5)  # spread-out scores: tokens differ in how many experts they need
    layer.router.expert_bias.copy_(torch.linspace(-0.05, 0.05, 8))  # selection order != score order
    return layer


def _reference(layer: MoELayer, x: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """Token by token, written out: scores, selection by biased score, experts taken until the share reaches p."""
    r = layer.router
    out, taken_all = [], []
    for token in x:
        logits = (r.weight.detach().float() @ token.float()).double()  # the router computes its scores in fp32
        scores = logits.softmax(-1) if r.score_func == "softmax" else logits.sigmoid()
        order = sorted(range(r.n_experts), key=lambda e: -float(scores[e] + r.expert_bias[e]))[: r.top_k]
        total, taken, mass = float(scores.sum()), [], 0.0
        for e in order:
            if len(taken) >= r.min_experts and r.top_p is not None and mass >= r.top_p:
                break
            taken.append(e)
            mass += float(scores[e]) / total
        weights = scores[taken]
        if r.score_func == "sigmoid":
            weights = weights / weights.sum()
        y = layer.shared(token[None])[0]
        for e, w in zip(taken, weights, strict=True):
            h = F.silu(token @ layer.experts.w_gate[e]) * (token @ layer.experts.w_up[e])
            y = y + w * (h @ layer.experts.w_down[e])
        out.append(y)
        taken_all.append(taken)
    return torch.stack(out), taken_all


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
@pytest.mark.parametrize("top_p, min_experts", [(0.3, 1), (0.5, 2), (0.45, 1)])
def test_adaptive_layer_equals_a_per_token_loop(score_func, top_p, min_experts):
    layer = _layer(score_func, top_p, min_experts)
    x = torch.randn(40, 16, dtype=torch.float64)
    y, aux = layer(x)
    want, taken = _reference(layer, x)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)  # fp32 router scores
    got = [[e for e in row if e >= 0] for row in aux.topk_idx.tolist()]
    assert got == taken
    counts = [len(t) for t in taken]
    assert len(set(counts)) > 1  # the p chosen here really varies the count across tokens
    assert float(aux.stats.experts_per_token) == pytest.approx(sum(counts) / len(counts))
    assert aux.stats.tokens_per_expert.sum() == sum(counts)


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_p_one_equals_fixed_top_k(score_func):
    adaptive, fixed = _layer(score_func, 1.0), _layer(score_func, None)
    x = torch.randn(30, 16, dtype=torch.float64)
    (ya, aux_a), (yf, aux_f) = adaptive(x), fixed(x)
    torch.testing.assert_close(ya, yf)
    assert aux_a.topk_idx.tolist() == aux_f.topk_idx.tolist()
    assert aux_a.stats.experts_per_token is None  # p = 1 is held as fixed top-k


def test_padding_tokens_stay_unrouted_and_gradients_flow():
    layer = _layer("sigmoid", 0.3).train()
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 4:] = False
    y, aux = layer(x, valid)
    _, taken = _reference(layer, x.detach().reshape(-1, 16))
    real = [t for t, v in zip(taken, valid.reshape(-1).tolist(), strict=True) if v]
    assert int(aux.stats.tokens_per_expert.sum()) == sum(len(t) for t in real)
    (y * valid.unsqueeze(-1)).sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_adaptive_decoder_generation_reports_only_used_experts():
    cfg = MoEDecoderConfig(
        vocab_size=24, d_model=32, n_layers=2, n_heads=4, d_memory=16, n_dense_layers=0, d_ff_dense=48,
        n_routed_experts=6, top_k=3, d_expert=16, max_seq_len=64, pad_id=23, init_std=0.4, top_p=0.35,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MoEDecoder(cfg).double().eval()
    memory = torch.randn(3, 5, 16, dtype=torch.float64)
    out = model.generate(
        memory, torch.ones(3, 5, dtype=torch.bool), torch.tensor([[5], [6], [7]]), max_new_tokens=8, eos_id=3
    )
    for i in range(3):
        n = int(out.lengths[i])
        routes = out.token_experts[i, :n]  # (n, layers, k), -1 for unused slots
        used = routes >= 0
        assert used[..., 0].all()  # at least one expert per token and layer
        assert used.sum(-1).min() >= 1 and used.sum(-1).max() <= 3
        counts = torch.zeros(2, 6, dtype=torch.long)
        for layer in range(2):
            ids = routes[:, layer][used[:, layer]]
            counts[layer] += torch.bincount(ids, minlength=6)
        assert out.expert_counts[i].tolist() == counts.tolist()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        MoEDecoderConfig(top_p=0.0)
    with pytest.raises(ValueError, match="min_experts"):
        MoEDecoderConfig(top_k=2, min_experts=3)
    with pytest.raises(ValueError, match="experts_loss_coef"):
        MoEDecoderConfig(experts_loss_coef=0.1)  # fixed top-k: nothing to trade


def _soft_count_reference(layer: MoELayer, x: torch.Tensor, valid: list[bool]) -> float:
    """The penalty written out per token: over the selected slots after min_experts, a sigmoid step on how far the
    share of the slots before it is under p."""
    from omnifuse.moe_core.router import EXPERTS_LOSS_TEMPERATURE

    r = layer.router
    total, n = 0.0, 0
    for token, real in zip(x, valid, strict=True):
        if not real:
            continue
        logits = (r.weight.detach().float() @ token.float()).double()
        scores = logits.softmax(-1) if r.score_func == "softmax" else logits.sigmoid()
        order = sorted(range(r.n_experts), key=lambda e: -float(scores[e] + r.expert_bias[e]))[: r.top_k]
        before = 0.0
        for j, e in enumerate(order):
            if j >= r.min_experts:
                total += float(torch.sigmoid(torch.tensor((r.top_p - before) / EXPERTS_LOSS_TEMPERATURE)))
            before += float(scores[e]) / float(scores.sum())
        n += 1
    return total / n


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_experts_loss_matches_a_per_token_loop_and_enters_the_router_loss(score_func):
    layer = _layer(score_func, 0.45, min_experts=1)
    layer.experts_loss_coef = 0.7
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, 5:] = False
    _, aux = layer(x, valid)
    expected = _soft_count_reference(layer, x.reshape(-1, 16), valid.reshape(-1).tolist())
    assert float(aux.router_loss) == pytest.approx(0.7 * expected, rel=1e-5)


def test_experts_loss_trains_the_router_to_use_fewer_experts():
    """Gradient steps on the penalty alone lower the hard number of experts per token (counted by the loop)."""
    layer = _layer("sigmoid", 0.3, min_experts=1).train()
    layer.experts_loss_coef = 1.0
    x = torch.randn(64, 16, dtype=torch.float64)

    def experts_per_token() -> float:
        _, taken = _reference(layer, x)
        return sum(len(t) for t in taken) / len(taken)

    before = experts_per_token()
    opt = torch.optim.Adam([layer.router.weight], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        _, aux = layer(x)
        aux.router_loss.backward()
        opt.step()
    after = experts_per_token()
    assert before > 1.5 and after < before - 0.4, (before, after)
