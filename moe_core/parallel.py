"""Expert parallelism: shard the routed experts of an MoE layer over the ranks of a process group.

Rank ``r`` of ``W`` owns experts ``[r*E/W, (r+1)*E/W)``. Router and shared experts stay replicated (their
gradients need the usual data-parallel all-reduce, e.g. DDP). A forward pass:

1. routes and sorts the local tokens by expert, exactly like :class:`MoELayer` (same capacity rule, applied to
   the local tokens);
2. exchanges the per-expert counts, then the token copies (with their combine weights) with
   ``all_to_all_single``: the copies for expert ``e`` go to the rank that owns ``e``;
3. regroups the received copies by local expert, runs the local experts, undoes the regrouping;
4. sends the outputs back with the inverse ``all_to_all_single`` and sums them onto the tokens.

Both all-to-alls are differentiable (the backward is the inverse exchange), so expert weights get the
gradient of every rank's tokens. Every rank must call forward the same number of times (collectives).
The state dict of a sharded layer holds only the local experts; :func:`gather_experts` / :func:`shard_experts` convert
to and from the full layout, and :meth:`ExpertParallelMoELayer.gather_for_eval` gives every rank a full copy for
evaluation, where ranks generate different numbers of tokens and so cannot meet in collectives.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from omnifuse.moe_core.experts import CopySlots, RoutedExperts, moe_swiglu
from omnifuse.moe_core.moe import Dispatch, MoELayer


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` along dim 0 with uneven splits; backward = the inverse exchange."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out = grad.new_empty(sum(ctx.in_splits), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), ctx.in_splits, ctx.out_splits, group=ctx.group)
        return out, None, None, None


def all_to_all(x: Tensor, out_splits: list[int], in_splits: list[int], group=None) -> Tensor:
    """Differentiable uneven all-to-all: send ``x[rows of in_splits[j]]`` to rank ``j``."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


class ExpertParallelMoELayer(MoELayer):
    """An :class:`MoELayer` whose routed experts are sharded across the ranks of ``group``."""

    def __init__(self, layer: MoELayer, group: dist.ProcessGroup | None = None) -> None:
        nn.Module.__init__(self)
        if not dist.is_initialized():
            raise RuntimeError("ExpertParallelMoELayer needs torch.distributed to be initialised")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        n_experts = layer.n_experts
        if n_experts % self.world:
            raise ValueError(f"n_routed_experts ({n_experts}) must be divisible by the group size ({self.world})")
        self.n_experts, self.top_k = n_experts, layer.top_k
        self.n_local = n_experts // self.world
        self.aux_loss_coef, self.seq_aux_loss_coef = layer.aux_loss_coef, layer.seq_aux_loss_coef
        self.z_loss_coef, self.capacity_factor = layer.z_loss_coef, layer.capacity_factor
        self.experts_loss_coef = layer.experts_loss_coef
        # Submodules in MoELayer's order (router, experts, shared): parameter order decides the optimizer state's
        # indices, and a checkpoint must resume the same in either layout.
        self.router = layer.router
        src = layer.experts
        if type(src) is not RoutedExperts:  # e.g. LoRA-adapted experts: their adapters would be lost here
            raise NotImplementedError(f"expert parallelism shards plain RoutedExperts, not {type(src).__name__}")
        self.experts = RoutedExperts(self.n_local, src.d_model, src.d_expert, src.impl)
        self.shared = layer.shared
        lo, hi = self.rank * self.n_local, (self.rank + 1) * self.n_local
        with torch.no_grad():
            for name in ("w_gate", "w_up", "w_down"):
                getattr(self.experts, name).data = getattr(src, name)[lo:hi].detach().clone()
                getattr(self.experts, name).requires_grad_(getattr(src, name).requires_grad)  # frozen stays frozen
        self._full: tuple[Tensor, Tensor, Tensor] | None = None  # gather_for_eval's full weights

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world={self.world}, local_experts={self.n_local}"

    @torch.no_grad()
    def gather_for_eval(self) -> None:
        """Every rank gets the full expert weights (a collective: all ranks call it together) and runs the layer
        locally, without all-to-alls, until :meth:`release_full`. For evaluation: generation stops per rank."""
        self._full = tuple(gather_experts(getattr(self.experts, n), self.group) for n in ("w_gate", "w_up", "w_down"))

    def release_full(self) -> None:
        self._full = None

    def _routed(self, x: Tensor, disp: Dispatch, weights: Tensor) -> Tensor:
        if self._full is not None:
            if torch.is_grad_enabled():
                raise RuntimeError("the gathered expert weights are for evaluation: call release_full() before training")
            return moe_swiglu(x, disp.order, self.top_k, weights, *self._full, disp.counts, self.experts.impl)
        slots = CopySlots(disp.order, x.size(0), self.top_k)
        xs = slots.gather(x)  # (M, d) my token copies, sorted by expert
        ys = self._exchange_and_run(xs, disp.counts, weights)  # (M, d) weighted expert outputs
        return slots.combine(ys)  # (N, d)

    def _exchange_and_run(self, xs: Tensor, counts: Tensor, weights: Tensor) -> Tensor:
        w, el, d = self.world, self.n_local, xs.size(1)
        send_counts = counts.view(w, el).contiguous()  # (W, E_local): my copies for each rank's experts
        recv_counts = torch.empty_like(send_counts)  # (W, E_local): copies from each rank for my experts
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send_split = send_counts.sum(1).tolist()
        recv_split = recv_counts.sum(1).tolist()

        payload = torch.cat((xs, weights.to(xs.dtype).unsqueeze(1)), dim=1)  # (M, d+1): copy + combine weight
        recv = all_to_all(payload, recv_split, send_split, self.group)  # (Mr, d+1) ordered (src rank, expert)
        perm = _source_to_expert_major(recv_counts)  # (Mr,) rows regrouped by local expert
        grouped = recv.index_select(0, perm)
        local_counts = recv_counts.sum(0)  # (E_local,)
        ys = self.experts(grouped[:, :d], local_counts, grouped[:, d])  # (Mr, d)
        back = torch.empty_like(perm)
        back[perm] = torch.arange(perm.numel(), device=perm.device)  # inverse permutation
        ys = ys.index_select(0, back)  # (Mr, d) in received order again
        return all_to_all(ys, send_split, recv_split, self.group)  # (M, d) my copies, expert-sorted


def _source_to_expert_major(recv_counts: Tensor) -> Tensor:
    """Rows received as blocks ``(src, e)`` (src-major) -> the row index that orders them ``(e, src)``."""
    w, el = recv_counts.shape
    flat = recv_counts.reshape(-1)  # (W*E_local,) block sizes in received order
    starts = torch.cumsum(flat, 0) - flat  # where each block starts in the received rows
    blocks = torch.arange(w * el, device=flat.device).view(w, el).t().reshape(-1)  # expert-major block order
    sizes, src_start = flat[blocks], starts[blocks]
    dst_start = torch.cumsum(sizes, 0) - sizes  # where each block starts after regrouping
    shift = torch.repeat_interleave(src_start - dst_start, sizes)  # (Mr,)
    return torch.arange(shift.numel(), device=flat.device) + shift


def apply_expert_parallel(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every :class:`MoELayer` inside ``model`` (e.g. an ``MoEDecoder``) by its sharded version, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MoELayer) and not isinstance(child, ExpertParallelMoELayer):
                setattr(parent, name, ExpertParallelMoELayer(child, group))
    return model


def gather_experts(local: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """The full stacked expert tensor ``(E, ...)`` from each rank's ``(E / W, ...)`` shard (rank order = expert
    order). A collective: every rank of ``group`` calls it with its shard."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.detach().contiguous(), group=group)
    return torch.cat(parts, dim=0)


def shard_experts(full: Tensor, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s shard ``(E / W, ...)`` of a full stacked expert tensor ``(E, ...)``."""
    if full.size(0) % world:
        raise ValueError(f"{full.size(0)} experts cannot be split over {world} ranks")
    n = full.size(0) // world
    return full[rank * n : (rank + 1) * n].clone()


def expert_parallel_layers(model: nn.Module) -> dict[str, ExpertParallelMoELayer]:
    """The sharded layers of ``model`` by module name (empty when none were sharded)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ExpertParallelMoELayer)}
