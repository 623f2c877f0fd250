"""Top-k router (DeepSeek-V3 style): scores, group-limited selection, bias balancing, balancing losses, stats.

Selection uses ``scores + expert_bias`` (the auxiliary-loss-free balancing bias); the combine weights are
gathered from the *un-biased* scores, normalised for sigmoid scoring, and multiplied by ``route_scale``.
With ``top_p`` (adaptive routing) a token takes its selected experts in order until their share of the token's
affinity (un-biased scores normalised over all experts) reaches ``top_p``: at least ``min_experts``, at most
``top_k``; the other slots are inactive (no compute, weight 0); sigmoid weights are normalised over the active ones.
The router runs in fp32 whatever the activation dtype (autocast is switched off around the gate matmul).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from omnifuse.moe_core.config import SCORE_FUNCS, check_router_args

# Width of the smooth step in ``Router.experts_loss``, in units of affinity share (shares run from 0 to 1): a slot
# whose share-before sits 0.05 under top_p counts ~0.73, 0.15 under ~0.95.
EXPERTS_LOSS_TEMPERATURE = 0.05


@dataclass
class RouterOutput:
    """What the router decided for ``N`` tokens."""

    topk_idx: Tensor  # (N, k) long, experts chosen per token
    topk_weight: Tensor  # (N, k) fp32, combine weights (un-biased scores, normalised, * route_scale); 0 if inactive
    scores: Tensor  # (N, E) fp32, un-biased affinities (softmax or sigmoid of the logits)
    logits: Tensor  # (N, E) fp32, raw gate logits
    active: Tensor | None = None  # (N, k) bool, the slots a token uses (adaptive routing); None: all of them


@dataclass
class RouterStats:
    """Per-step routing statistics of one MoE layer (detached tensors; call :meth:`as_dict` to log)."""

    tokens_per_expert: Tensor  # (E,) long, token copies routed to each expert (real tokens, before dropping)
    max_over_mean: Tensor  # () float, max(tokens_per_expert) / mean(tokens_per_expert); 1.0 = perfectly balanced
    dropped: Tensor  # () long, token copies dropped by the capacity limit (0 when dropless)
    aux_loss: Tensor  # () float, unweighted Switch-style balance loss (0 when its coefficient is 0)
    seq_aux_loss: Tensor  # () float, unweighted DeepSeek sequence-wise balance loss (0 when its coefficient is 0)
    z_loss: Tensor  # () float, unweighted router z-loss (0 when its coefficient is 0)
    experts_per_token: Tensor | None = None  # () float, mean experts per real token (top_k unless adaptive)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Scalars for a logger (one host sync)."""
        extra = {} if self.experts_per_token is None else {f"{prefix}experts_per_token": float(self.experts_per_token)}
        return {
            **extra,
            f"{prefix}max_over_mean": float(self.max_over_mean),
            f"{prefix}dropped": float(self.dropped),
            f"{prefix}aux_loss": float(self.aux_loss),
            f"{prefix}seq_aux_loss": float(self.seq_aux_loss),
            f"{prefix}z_loss": float(self.z_loss),
        }


class Router(nn.Module):
    """Gate ``W: (E, d)`` plus the balancing bias ``expert_bias: (E,)`` (fp32 buffer, selection only).

    Token counts of the routed (real) tokens are accumulated in ``load_counts`` by the MoE layer while
    training; :meth:`update_bias` turns them into a bias step ``b_i += rate * sign(mean_load - load_i)``.
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        score_func: str = "sigmoid",
        n_groups: int = 1,
        topk_groups: int = 1,
        route_scale: float = 1.0,
        bias_update_rate: float = 1e-3,
        top_p: float | None = None,
        min_experts: int = 1,
    ) -> None:
        super().__init__()
        check_router_args(n_experts, top_k, n_groups, topk_groups, route_scale, None)
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be None or in (0, 1], got {top_p}")
        if not 1 <= min_experts <= top_k:
            raise ValueError(f"min_experts must be in [1, top_k={top_k}], got {min_experts}")
        # top_p = 1 is fixed top-k: held as None, so a share that rounds to 1.0 in fp32 cannot switch a slot off.
        self.top_p = None if top_p is not None and top_p >= 1.0 else top_p
        self.min_experts = min_experts
        if score_func not in SCORE_FUNCS:
            raise ValueError(f"score_func must be one of {SCORE_FUNCS}, got {score_func!r}")
        self.n_experts, self.top_k = n_experts, top_k
        self.score_func = score_func
        self.n_groups, self.topk_groups = n_groups, topk_groups
        self.route_scale = route_scale
        self.bias_update_rate = bias_update_rate
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("expert_bias", torch.zeros(n_experts, dtype=torch.float32))
        # Counts since the last bias update. A plain attribute, not a buffer: DDP broadcasts buffers from rank 0
        # before every forward, which would overwrite each rank's own counts under gradient accumulation.
        self._load_counts: Tensor | None = None

    def _apply(self, fn, recurse=True):
        # Keep the balancing bias in fp32 when the module is cast with .half()/.to(bfloat16)/.double().
        super()._apply(fn, recurse)
        self.expert_bias.data = self.expert_bias.data.float()
        return self

    @property
    def load_counts(self) -> Tensor:
        """``(E,)`` fp32 token counts accumulated since the last :meth:`update_bias` (this process only)."""
        if self._load_counts is None or self._load_counts.device != self.expert_bias.device:
            self._load_counts = torch.zeros_like(self.expert_bias)
        return self._load_counts

    def forward(self, x: Tensor) -> RouterOutput:
        """Route ``x: (N, d)``."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())  # (N, E) fp32
        if self.score_func == "softmax":
            scores = logits.softmax(dim=-1)
        else:
            scores = logits.sigmoid()
        choice = scores.detach() + self.expert_bias  # (N, E) biased scores, selection only
        if self.n_groups > 1:
            n = choice.size(0)
            grouped = choice.view(n, self.n_groups, -1)  # (N, G, E/G)
            top2 = min(2, grouped.size(-1))
            group_scores = grouped.topk(top2, dim=-1).values.sum(dim=-1)  # (N, G)
            keep = group_scores.topk(self.topk_groups, dim=-1).indices  # (N, topk_groups)
            masked = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)  # (N, G)
            # -inf, never 0: with negative biases a 0 could beat every expert of the allowed groups.
            choice = grouped.masked_fill(masked.unsqueeze(-1), float("-inf")).flatten(1)  # (N, E)
        topk_idx = choice.topk(self.top_k, dim=-1).indices  # (N, k), best first
        weight = scores.gather(1, topk_idx)  # (N, k) from the un-biased scores
        active = None
        if self.top_p is not None:
            share = weight.detach() / scores.detach().sum(dim=-1, keepdim=True).clamp_min(1e-20)  # (N, k)
            taken_before = share.cumsum(dim=-1) - share  # (N, k) affinity share of the slots before each slot
            active = taken_before < self.top_p  # take slots until the share reaches top_p ...
            active[:, : self.min_experts] = True  # ... and at least min_experts
            weight = weight * active
        if self.score_func == "sigmoid":  # over the active slots (the others are 0); softmax weights stay as they are
            weight = weight / weight.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        weight = weight * self.route_scale
        return RouterOutput(topk_idx=topk_idx, topk_weight=weight, scores=scores, logits=logits, active=active)

    # ----------------------------------------------------------------------------------- balancing losses
    def aux_loss(self, out: RouterOutput, valid: Tensor | None = None) -> Tensor:
        """Switch / DeepSeek expert-level balance loss ``E * sum_i f_i * P_i`` over the real tokens.

        ``f_i`` = fraction of the token copies routed to expert ``i`` (selection, bias included) and
        ``P_i`` = mean normalised affinity of expert ``i``; equals 1 for perfectly uniform routing.
        """
        m = _mask(out, valid)  # (N,) float
        sel = _selected(out)  # (N, E)
        probs = out.scores / out.scores.sum(dim=-1, keepdim=True)  # (N, E) normalised affinities
        n = m.sum().clamp_min(1.0)
        copies = (m @ sel).sum().clamp_min(1.0)  # top_k * n, or fewer with adaptive routing
        f = (m @ sel) * (self.n_experts / copies)  # (E,)
        p = (m @ probs) / n  # (E,)
        return (f * p).sum()

    def seq_aux_loss(self, out: RouterOutput, batch_shape: tuple[int, int], valid: Tensor | None = None) -> Tensor:
        """DeepSeek-V3 sequence-wise balance loss: the expert-level loss per sequence, averaged over sequences."""
        b, t = batch_shape
        e = self.n_experts
        m = _mask(out, valid).view(b, t, 1)  # (B, T, 1)
        sel = _selected(out).view(b, t, e)  # (B, T, E)
        probs = (out.scores / out.scores.sum(dim=-1, keepdim=True)).view(b, t, e)  # (B, T, E)
        n = m.sum(dim=1)  # (B, 1) real tokens per sequence
        copies = (sel * m).sum(dim=(1, 2)).unsqueeze(1)  # (B, 1) top_k * n, or fewer with adaptive routing
        f = (sel * m).sum(dim=1) * (e / copies.clamp_min(1.0))  # (B, E)
        p = (probs * m).sum(dim=1) / n.clamp_min(1.0)  # (B, E)
        per_seq = (f * p).sum(dim=-1)  # (B,)
        has = (n.squeeze(1) > 0).to(per_seq.dtype)
        return (per_seq * has).sum() / has.sum().clamp_min(1.0)

    def experts_loss(self, out: RouterOutput, valid: Tensor | None = None) -> Tensor:
        """Adaptive routing's compute penalty: mean over real tokens of a smooth count of the slots the ``top_p``
        rule takes beyond ``min_experts``. Slot ``j`` is taken while the affinity share of the slots before it is
        under ``top_p``; here that step is ``sigmoid((top_p - share_before_j) / EXPERTS_LOSS_TEMPERATURE)``, which
        has a gradient in the router's scores (the selection itself has none): lowering it concentrates a token's
        affinity on its first experts, so fewer slots reach the rule. 0 without ``top_p``."""
        if self.top_p is None:
            return out.logits.new_zeros(())
        m = _mask(out, valid)
        share = out.scores.gather(1, out.topk_idx) / out.scores.sum(dim=-1, keepdim=True).clamp_min(1e-20)  # (N, k)
        before = share.cumsum(dim=-1) - share  # (N, k)
        soft = torch.sigmoid((self.top_p - before[:, self.min_experts :]) / EXPERTS_LOSS_TEMPERATURE)
        return (m * soft.sum(dim=-1)).sum() / m.sum().clamp_min(1.0)

    def z_loss(self, out: RouterOutput, valid: Tensor | None = None) -> Tensor:
        """Router z-loss (ST-MoE): mean over real tokens of ``logsumexp(logits)^2``."""
        m = _mask(out, valid)
        lse = torch.logsumexp(out.logits, dim=-1)  # (N,)
        return (m * lse.square()).sum() / m.sum().clamp_min(1.0)

    # ----------------------------------------------------------------------------------- bias balancing
    @torch.no_grad()
    def accumulate(self, tokens_per_expert: Tensor) -> None:
        """Add one step's token counts (E,) to the counts used by the next :meth:`update_bias`."""
        self.load_counts.add_(tokens_per_expert.to(device=self.expert_bias.device, dtype=torch.float32))

    @torch.no_grad()
    def update_bias(self) -> None:
        """Apply the bias step from the accumulated counts (all-reduced when distributed), then reset them."""
        update_router_biases([self])


@torch.no_grad()
def update_router_biases(routers: Sequence[Router], group: dist.ProcessGroup | None = None) -> None:
    """``b_i += rate * sign(mean_load - load_i)`` for every router, with one all-reduce for all of them.

    Call after each optimizer step. A router that saw no tokens since the last call is left unchanged.
    """
    if not routers:
        return
    loads = torch.stack([r.load_counts for r in routers])  # (L, E)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loads, group=group)
    for r, load in zip(routers, loads):
        step = torch.sign(load.mean() - load) * r.bias_update_rate  # (E,), all 0 when no tokens were seen
        r.expert_bias += step
        r.load_counts.zero_()


def _selected(out: RouterOutput) -> Tensor:
    """``(N, E)`` 1.0 where a token uses an expert (its active slots), else 0."""
    used = torch.ones_like(out.topk_weight) if out.active is None else out.active.to(out.scores.dtype)
    return torch.zeros_like(out.scores).scatter_(1, out.topk_idx, used)


def _mask(out: RouterOutput, valid: Tensor | None) -> Tensor:
    if valid is None:
        return out.scores.new_ones(out.scores.size(0))
    return valid.reshape(-1).to(out.scores.dtype)
