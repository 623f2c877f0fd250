"""Expert pruning: remove routed experts from a trained :class:`~omnifuse.moe_core.MoEDecoder`.

The result is a smaller model, not a masked one: each MoE layer keeps the chosen rows of its stacked expert weights,
of its router's weight and of its balancing bias, and the decoder's config says the new expert count, so the pruned
model saves, loads, predicts and fine-tunes like any other. Every MoE layer keeps the same number of experts (the
config has one ``n_routed_experts``); which ones is per layer.

Removing expert ``e`` from a layer selects as if ``e`` could never be selected: the router scores the other experts
as before and the top-k is taken among the kept ones. With sigmoid scores (the recipes', DeepSeek-V3's) each expert's
score is its own, so the layer computes exactly what the unpruned one computes when ``e`` is unroutable (with fixed
top-k; adaptive routing's ``top_p`` measures shares of the sum over all experts, which pruning changes); with softmax
scores the probabilities are normalised over the kept experts only, so their combine weights grow (what a recovery
fine-tune absorbs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from omnifuse.moe_core.decoder import MoEDecoder


def experts_to_keep(usage: Tensor, n_drop: int) -> list[Tensor]:
    """Per MoE layer, the sorted ids of the experts to keep: all but the ``n_drop`` least used.

    ``usage: (n_moe_layers, E)`` how many tokens each expert processed (e.g. on a calibration set). Ties drop the
    higher expert index first, so the choice is deterministic."""
    if usage.dim() != 2:
        raise ValueError(f"usage must be (n_moe_layers, n_experts), got shape {tuple(usage.shape)}")
    n_experts = usage.size(1)
    if not 0 <= n_drop < n_experts:
        raise ValueError(f"can drop 0 .. {n_experts - 1} of {n_experts} experts, not {n_drop}")
    keep = []
    for layer in usage.double():
        # Sort by usage, descending; among equal usage the lower index ranks first (stable sort on the index order).
        order = sorted(range(n_experts), key=lambda e: (-float(layer[e]), e))
        keep.append(torch.tensor(sorted(order[: n_experts - n_drop]), dtype=torch.long))
    return keep


def prune_experts(decoder: MoEDecoder, keep: Sequence[Tensor]) -> None:
    """Keep only the experts ``keep[l]`` (ids) in MoE layer ``l``, in place; every layer must keep the same number."""
    layers = decoder.moe_layers
    if len(keep) != len(layers):
        raise ValueError(f"keep has {len(keep)} entries for {len(layers)} MoE layers")
    sizes = {int(k.numel()) for k in keep}
    if len(sizes) != 1:
        raise ValueError(f"every MoE layer must keep the same number of experts, got {sorted(sizes)}")
    n_keep = sizes.pop()
    cfg = decoder.config
    if cfg.n_groups != 1:
        raise ValueError("pruning a router with expert groups (n_groups > 1) is not supported: groups must stay equal")
    new_cfg = replace(cfg, n_routed_experts=n_keep)  # validates (e.g. top_k <= n_keep)
    for layer, ids in zip(layers, keep, strict=True):
        ids = ids.to(torch.long)
        if ids.unique().numel() != ids.numel() or int(ids.min()) < 0 or int(ids.max()) >= layer.n_experts:
            raise ValueError(
                f"expert ids to keep must be distinct and in 0 .. {layer.n_experts - 1}, got {ids.tolist()}"
            )
        router, experts = layer.router, layer.experts
        index = ids.to(router.weight.device)
        router.weight = nn.Parameter(router.weight.detach()[index].clone())
        router.expert_bias = router.expert_bias[index].clone()
        router._load_counts = None
        router.n_experts = n_keep
        for name in ("w_gate", "w_up", "w_down"):
            setattr(experts, name, nn.Parameter(getattr(experts, name).detach()[index].clone()))
        experts.n_experts = n_keep
        layer.n_experts = n_keep
    # The decoder's config object may be shared (OmniModel keeps the same instance): update it in place.
    cfg.n_routed_experts = new_cfg.n_routed_experts


def channel_importance(experts: nn.Module) -> Tensor:
    """``(E, d_expert)``: how much each hidden channel of each routed expert can contribute, the product of the norms
    of its gate column, up column and down row. A SwiGLU channel adds ``silu(x . g) * (x . u) * d`` to the output; for
    an input of norm 1 that is at most about ``|g| |u| |d|`` (``silu(z) <= |z|``), so a channel with a small product
    adds little whatever the input."""
    gate = experts.w_gate.detach().float().norm(dim=1)  # (E, h): columns of (E, d, h)
    up = experts.w_up.detach().float().norm(dim=1)  # (E, h)
    down = experts.w_down.detach().float().norm(dim=2)  # (E, h): rows of (E, h, d)
    return gate * up * down


def prune_expert_channels(decoder: MoEDecoder, fraction: float) -> list[Tensor]:
    """Remove the ``fraction`` least important hidden channels (:func:`channel_importance`) of every routed expert, in
    place: each expert keeps its own ``round((1 - fraction) * d_expert)`` channels, so the stacked weights stay
    rectangular and the decoder's config says the new ``d_expert`` (the shared experts keep their width, recorded as
    ``d_shared``). Returns the kept channel ids per MoE layer, ``(E, kept)`` each."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    cfg = decoder.config
    n_keep = max(1, round((1.0 - fraction) * cfg.d_expert))
    kept_ids = []
    for layer in decoder.moe_layers:
        experts = layer.experts
        importance = channel_importance(experts)  # (E, h)
        # The n_keep most important, in their original order (ties: the lower index first).
        order = torch.sort(-importance, dim=1, stable=True).indices[:, :n_keep]
        keep = torch.sort(order, dim=1).values  # (E, n_keep)
        index = keep.to(experts.w_gate.device)
        w_gate = experts.w_gate.detach().gather(2, index[:, None, :].expand(-1, experts.d_model, -1))
        w_up = experts.w_up.detach().gather(2, index[:, None, :].expand(-1, experts.d_model, -1))
        w_down = experts.w_down.detach().gather(1, index[:, :, None].expand(-1, -1, experts.d_model))
        experts.w_gate, experts.w_up, experts.w_down = (nn.Parameter(w.clone()) for w in (w_gate, w_up, w_down))
        experts.d_expert = n_keep
        kept_ids.append(keep)
    if cfg.n_shared_experts > 0 and cfg.d_shared is None:
        cfg.d_shared = cfg.n_shared_experts * cfg.d_expert  # the shared experts keep their width
    cfg.d_expert = n_keep  # in place: OmniModel keeps the same config object
    return kept_ids
