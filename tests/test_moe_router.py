"""Router: group-limited selection, fp32 logits, bias balancing."""

from __future__ import annotations

import pytest
import torch

from omnifuse.moe_core.router import Router, update_router_biases


@pytest.mark.parametrize("bias_shift", [0.0, -5.0])
@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_group_limited_routing_never_picks_masked_group(bias_shift, score_func):
    E, G, TG, K = 16, 4, 2, 4
    r = Router(8, E, K, score_func, n_groups=G, topk_groups=TG)
    with torch.no_grad():
        # Negative biases: every biased score < 0, so a masked score of 0 would win; -inf must not.
        r.expert_bias.copy_(torch.randn(E) * 0.3 + bias_shift)
    x = torch.randn(500, 8)
    out = r(x)
    choice = (out.scores + r.expert_bias).view(-1, G, E // G)  # (N, G, E/G)
    group_score = choice.topk(2, dim=-1).values.sum(-1)  # (N, G)
    allowed = group_score.topk(TG, dim=-1).indices  # (N, TG)
    picked_group = out.topk_idx // (E // G)  # (N, K)
    assert (picked_group.unsqueeze(-1) == allowed.unsqueeze(1)).any(-1).all()
    # and the weights come from the un-biased scores
    w = out.scores.gather(1, out.topk_idx)
    if score_func == "sigmoid":
        w = w / w.sum(-1, keepdim=True)
    torch.testing.assert_close(out.topk_weight, w)


def test_router_logits_fp32_under_bf16():
    r = Router(8, 4, 2).to(torch.bfloat16)
    assert r.expert_bias.dtype == torch.float32
    out = r(torch.randn(5, 8, dtype=torch.bfloat16))
    assert out.logits.dtype == torch.float32 and out.topk_weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert r(torch.randn(5, 8)).logits.dtype == torch.float32


def test_bias_never_enters_combine_weights():
    r = Router(8, 6, 2, "softmax")
    x = torch.randn(20, 8)
    before = r(x)
    with torch.no_grad():
        r.expert_bias.copy_(torch.randn(6) * 0.01)  # small: selection likely unchanged
    after = r(x)
    same = (before.topk_idx == after.topk_idx).all(-1)
    assert same.any()
    torch.testing.assert_close(after.topk_weight[same], before.topk_weight[same])


def test_bias_balancing_on_skewed_stream():
    """A stream where most tokens lean towards 3 of 16 experts: the bias alone rebalances it."""
    torch.manual_seed(0)
    E, K, d = 16, 2, 32
    r = Router(d, E, K, "sigmoid", bias_update_rate=5e-3)
    torch.nn.init.normal_(r.weight, std=d**-0.5)
    hot = r.weight[:3].detach().sum(0)
    hot = hot / hot.norm()  # a direction every token shares -> experts 0..2 favoured

    def max_over_mean(n=8192):
        counts = torch.bincount(r(torch.randn(n, d) + 2.5 * hot).topk_idx.flatten(), minlength=E).float()
        return float(counts.max() / counts.mean())

    with torch.no_grad():
        start = max_over_mean()
        for _ in range(300):
            out = r(torch.randn(1024, d) + 2.5 * hot)
            r.accumulate(torch.bincount(out.topk_idx.flatten(), minlength=E))
            r.update_bias()
        end = max_over_mean()
    assert start > 3.0
    assert end < 1.2
    torch.testing.assert_close(r.load_counts, torch.zeros(E))


def test_update_router_biases_sign_rule():
    routers = [Router(4, 4, 1, bias_update_rate=0.5), Router(4, 4, 1, bias_update_rate=0.1)]
    routers[0].accumulate(torch.tensor([10, 0, 5, 5]))
    update_router_biases(routers)
    torch.testing.assert_close(routers[0].expert_bias, torch.tensor([-0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(routers[1].expert_bias, torch.zeros(4))  # no tokens seen: unchanged
