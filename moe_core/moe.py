"""The MoE feed-forward layer: router -> sort token copies by expert -> experts -> weighted sum onto the tokens.

Dropless by default. With ``capacity_factor`` set (training only), each expert keeps at most
``ceil(capacity_factor * routed_copies / E)`` token copies, earliest tokens first (token order, then slot);
dropped copies contribute nothing (the residual stream carries the token) and are counted in the stats.
Padding tokens (``valid == False``) are not routed at all: they take no capacity, no expert compute, and
do not enter the statistics, the losses or the bias-balancing counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omnifuse.moe_core.config import MoEDecoderConfig, check_router_args
from omnifuse.moe_core.experts import RoutedExperts, SwiGLU
from omnifuse.moe_core.router import Router, RouterStats


@dataclass
class MoEAux:
    """Side outputs of one MoE layer call."""

    router_loss: Tensor  # () weighted aux + seq_aux + z loss (0 when all coefficients are 0)
    stats: RouterStats
    topk_idx: Tensor  # (..., k) experts chosen per token (same leading shape as the input)


@dataclass
class Dispatch:
    """Token copies sorted by expert (what the experts see)."""

    order: Tensor  # (M,) index into the flattened (N*k) copies, sorted by expert; dropped/padding copies left out
    token: Tensor  # (M,) source token of each sorted copy (= order // k)
    counts: Tensor  # (E,) kept copies per expert (sum = M)
    routed: Tensor  # (E,) copies routed per expert before dropping
    dropped: Tensor  # () copies dropped by the capacity limit


def sort_by_expert(
    topk_idx: Tensor,
    n_experts: int,
    valid: Tensor | None = None,
    capacity: float | None = None,
    active: Tensor | None = None,
) -> Dispatch:
    """Group the ``N*k`` token copies of ``topk_idx: (N, k)`` by expert (stable: token order within an expert).

    ``valid: (N,)`` marks real tokens, ``active: (N, k)`` the slots a token uses (adaptive routing); other copies
    are not routed."""
    n, k = topk_idx.shape
    flat = topk_idx.reshape(-1)  # (N*k,)
    copy_valid = None if valid is None else valid.reshape(n, 1).expand(n, k)
    if active is not None:
        copy_valid = active if copy_valid is None else copy_valid & active
    if copy_valid is not None:
        # Padding and inactive copies get the sentinel expert id E, which sorts after every real expert.
        flat = flat.masked_fill(~copy_valid.reshape(-1), n_experts)
    counts_all = torch.bincount(flat, minlength=n_experts + 1)  # (E+1,)
    routed = counts_all[:n_experts]  # (E,)
    order = torch.argsort(flat, stable=True)  # (N*k,)
    if capacity is not None:
        cap = math.ceil(capacity * int(routed.sum()) / n_experts)
        starts = torch.cumsum(counts_all, 0) - counts_all  # (E+1,) first sorted slot of each expert
        sorted_e = flat[order]  # (N*k,)
        rank = torch.arange(order.numel(), device=order.device) - starts[sorted_e]  # (N*k,) rank within expert
        order = order[(sorted_e < n_experts) & (rank < cap)]  # (M,)
        counts = routed.clamp(max=cap)
        dropped = (routed - counts).sum()
    else:
        if copy_valid is not None:
            order = order[: int(routed.sum())]  # (M,)
        counts = routed
        dropped = routed.new_zeros(())
    return Dispatch(order=order, token=order // k, counts=counts, routed=routed, dropped=dropped)


class MoELayer(nn.Module):
    """Routed fine-grained SwiGLU experts (top-k of ``n_experts``) plus always-on shared experts."""

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        d_expert: int,
        n_shared_experts: int = 0,
        score_func: str = "sigmoid",
        n_groups: int = 1,
        topk_groups: int = 1,
        route_scale: float = 1.0,
        bias_update_rate: float = 1e-3,
        aux_loss_coef: float = 0.0,
        seq_aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        capacity_factor: float | None = None,
        expert_impl: str = "auto",
        top_p: float | None = None,
        min_experts: int = 1,
        experts_loss_coef: float = 0.0,
        d_shared: int | None = None,
    ) -> None:
        super().__init__()
        check_router_args(n_experts, top_k, n_groups, topk_groups, route_scale, capacity_factor)
        self.n_experts, self.top_k = n_experts, top_k
        self.aux_loss_coef, self.seq_aux_loss_coef, self.z_loss_coef = aux_loss_coef, seq_aux_loss_coef, z_loss_coef
        self.experts_loss_coef = experts_loss_coef
        self.capacity_factor = capacity_factor
        self.router = Router(
            d_model, n_experts, top_k, score_func, n_groups, topk_groups, route_scale, bias_update_rate, top_p,
            min_experts,
        )  # fmt: skip
        self.experts = RoutedExperts(n_experts, d_model, d_expert, expert_impl)
        d_shared = n_shared_experts * d_expert if d_shared is None else d_shared
        self.shared = SwiGLU(d_model, d_shared) if n_shared_experts > 0 else None

    @classmethod
    def from_config(cls, cfg: MoEDecoderConfig) -> MoELayer:
        return cls(
            cfg.d_model, cfg.n_routed_experts, cfg.top_k, cfg.d_expert, cfg.n_shared_experts, cfg.score_func,
            cfg.n_groups, cfg.topk_groups, cfg.route_scale, cfg.bias_update_rate, cfg.aux_loss_coef,
            cfg.seq_aux_loss_coef, cfg.z_loss_coef, cfg.capacity_factor, cfg.expert_impl, cfg.top_p, cfg.min_experts,
            cfg.experts_loss_coef, cfg.d_shared,
        )  # fmt: skip

    def forward(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, MoEAux]:
        """``x: (B, T, d)`` or ``(N, d)``; ``valid`` (same leading shape, bool) marks real tokens."""
        lead, d = x.shape[:-1], x.size(-1)
        xf = x.reshape(-1, d)  # (N, d)
        vf = None if valid is None else valid.reshape(-1)  # (N,)
        r = self.router(xf)
        capacity = self.capacity_factor if self.training else None
        disp = sort_by_expert(r.topk_idx, self.n_experts, vf, capacity, r.active)

        ws = r.topk_weight.reshape(-1).index_select(0, disp.order)  # (M,) combine weight of each sorted copy
        y = self._routed(xf, disp, ws)  # (N, d) weighted sum of each token's expert outputs
        if self.shared is not None:
            y = y + self.shared(xf)

        if self.training:
            self.router.accumulate(disp.routed)
        zero = r.logits.new_zeros(())
        aux = self.router.aux_loss(r, vf) if self.aux_loss_coef > 0 else zero
        seq_aux = zero
        if self.seq_aux_loss_coef > 0:
            shape = (lead[0], int(math.prod(lead[1:]))) if len(lead) > 1 else (1, xf.size(0))
            seq_aux = self.router.seq_aux_loss(r, shape, vf)
        z = self.router.z_loss(r, vf) if self.z_loss_coef > 0 else zero
        loss = self.aux_loss_coef * aux + self.seq_aux_loss_coef * seq_aux + self.z_loss_coef * z
        if self.experts_loss_coef > 0:
            loss = loss + self.experts_loss_coef * self.router.experts_loss(r, vf)
        routed = disp.routed.detach()
        experts_per_token = None
        if r.active is not None:
            real = r.active if vf is None else r.active & vf.unsqueeze(1)
            n_real = max(xf.size(0), 1) if vf is None else vf.sum().clamp_min(1).float()
            experts_per_token = real.sum().float() / n_real
        stats = RouterStats(
            tokens_per_expert=routed,
            max_over_mean=routed.max().float() / routed.float().mean().clamp_min(1e-9),
            dropped=disp.dropped.detach(),
            aux_loss=aux.detach(),
            seq_aux_loss=seq_aux.detach(),
            z_loss=z.detach(),
            experts_per_token=experts_per_token,
        )
        # Telemetry: an inactive slot (adaptive routing) reads -1.
        idx = r.topk_idx if r.active is None else r.topk_idx.masked_fill(~r.active, -1)
        return y.view(*lead, d), MoEAux(router_loss=loss, stats=stats, topk_idx=idx.view(*lead, self.top_k))

    def _routed(self, x: Tensor, disp: Dispatch, weights: Tensor) -> Tensor:
        """Gather the copies, run the experts, weighted sum onto the tokens: ``x: (N, d)`` -> ``(N, d)``.

        Overridden by the expert-parallel layer."""
        return self.experts.gather_combine(x, disp.order, self.top_k, weights, disp.counts)
