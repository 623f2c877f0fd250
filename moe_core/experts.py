"""SwiGLU feed-forwards: the dense one (dense layers, shared experts) and the stacked routed experts.

Routed experts keep their weights stacked, ``w_gate, w_up: (E, d, h)`` and ``w_down: (E, h, d)``. They run on
token copies grouped by expert (``counts[e]`` consecutive copies for expert ``e``), each copy scaled by its
router weight, in one of two ways:

* gathered: ``moe_swiglu(x, order, top_k, weights, ...)`` reads copy ``i`` from ``x[order[i] // top_k]`` and adds
  its output back onto that token (used by :class:`~omnifuse.moe_core.moe.MoELayer`). The ``loop`` kernel does this
  expert by expert, so no ``(copies, d)`` buffer is ever materialised; the ``grouped_mm`` kernel gathers and combines
  through the copies' slots in the ``(N, top_k)`` routing table (:class:`CopySlots`), so
  neither direction needs a scatter-add with repeated indices (atomics, which dominated its time on a GPU);
* sorted rows: ``expert_swiglu(rows, ...)`` maps already-gathered rows to output rows (used by expert
  parallelism, where the rows arrive through an all-to-all).

Kernels: ``grouped_mm`` (``torch.nn.functional.grouped_mm``: one grouped GEMM, CUDA, bf16, SM >= 80, no host
sync) or ``loop``: a hand-written autograd function that loops over the non-empty experts, keeps the SiLU
gating and the router weight in per-expert temporaries that stay in cache, and writes the backward out
(one autograd node instead of a dozen per expert). ``impl="auto"`` picks ``grouped_mm`` where it applies.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class SwiGLU(nn.Module):
    """Dense SwiGLU: ``w2(silu(w1 x) * w3 x)`` with hidden width ``d_hidden``."""

    def __init__(self, d_model: int, d_hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_hidden, bias=False)  # gate
        self.w3 = nn.Linear(d_model, d_hidden, bias=False)  # up
        self.w2 = nn.Linear(d_hidden, d_model, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RoutedExperts(nn.Module):
    """``E`` SwiGLU experts with stacked weights."""

    def __init__(self, n_experts: int, d_model: int, d_expert: int, impl: str = "auto") -> None:
        super().__init__()
        self.n_experts, self.d_model, self.d_expert = n_experts, d_model, d_expert
        self.impl = impl
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.normal_(w, std=0.02)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_model={self.d_model}, d_expert={self.d_expert}, impl={self.impl!r}"

    def forward(self, rows: Tensor, counts: Tensor, weights: Tensor | None = None) -> Tensor:
        """Sorted rows: ``rows: (M, d)`` grouped by expert, ``counts: (E,)`` (sum M), row weights ``(M,)`` -> ``(M, d)``."""
        return expert_swiglu(rows, self.w_gate, self.w_up, self.w_down, counts, weights, self.impl)

    def gather_combine(self, x: Tensor, order: Tensor, top_k: int, weights: Tensor, counts: Tensor) -> Tensor:
        """Gathered: ``x: (N, d)``, copy ``i`` in routing slot ``order[i]`` (token ``order[i] // top_k``) with weight
        ``weights[i]`` -> ``(N, d)``."""
        return moe_swiglu(x, order, top_k, weights, self.w_gate, self.w_up, self.w_down, counts, self.impl)


def grouped_mm_supported(x: Tensor, *weights: Tensor) -> bool:
    """True where the grouped GEMM kernel applies: CUDA, bf16, SM >= 80, 16-byte aligned strides."""
    if _grouped_mm is None or not x.is_cuda or x.dtype != torch.bfloat16:
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    return all(w.size(-1) % 8 == 0 and w.size(-2) % 8 == 0 for w in weights)


def _autocast(x: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
    """Under autocast, run the experts in the autocast dtype (the casts stay differentiable)."""
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    return tuple(t.to(dtype) for t in (x, *weights))


def _use_grouped_mm(impl: str, x: Tensor, *weights: Tensor) -> bool:
    if impl == "grouped_mm":
        if _grouped_mm is None:
            raise RuntimeError("expert_impl='grouped_mm' needs torch.nn.functional.grouped_mm (torch >= 2.8)")
        return True
    return impl == "auto" and grouped_mm_supported(x, *weights)


def _grouped_swiglu(rows: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, counts: Tensor, weights: Tensor):
    offs = counts.cumsum(0).to(torch.int32)  # (E,) end row of each expert
    a = F.silu(_grouped_mm(rows, w_gate, offs=offs)) * _grouped_mm(rows, w_up, offs=offs)  # (M, h)
    return _grouped_mm(a * weights.unsqueeze(-1).to(a.dtype), w_down, offs=offs)  # (M, d)


def expert_swiglu(
    rows: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    counts: Tensor,
    weights: Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    """Expert ``e`` on rows ``[offs[e-1], offs[e])`` of ``rows: (M, d)``, row ``i`` scaled by ``weights[i]``.

    The weight is applied to the hidden activation, ``(w * a) @ W_down == w * (a @ W_down)``. Returns ``(M, d)``.
    """
    weights = rows.new_ones(rows.size(0)) if weights is None else weights
    rows, w_gate, w_up, w_down = _autocast(rows, w_gate, w_up, w_down)
    if _use_grouped_mm(impl, rows, w_gate, w_up, w_down):
        return _grouped_swiglu(rows, w_gate, w_up, w_down, counts, weights)
    blocks = _blocks(counts, rows.size(0), max(w_gate.shape[1:]))
    return _LoopExperts.apply(rows, None, weights.to(rows.dtype), w_gate, w_up, w_down, blocks)


def moe_swiglu(
    x: Tensor,
    order: Tensor,
    top_k: int,
    weights: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    counts: Tensor,
    impl: str = "auto",
) -> Tensor:
    """Gather, experts, weighted combine in one: ``out[t] = sum_i weights[i] * expert(x[t])`` over the copies of ``t``.

    ``x: (N, d)``; ``order: (M,)`` the slot of each copy in the flattened ``(N, top_k)`` routing table (its token is
    ``order // top_k``), grouped by expert (``counts: (E,)``); slots not in ``order`` (dropped or padding copies)
    contribute nothing. Returns ``(N, d)``.
    """
    x, w_gate, w_up, w_down = _autocast(x, w_gate, w_up, w_down)
    if _use_grouped_mm(impl, x, w_gate, w_up, w_down):
        slots = CopySlots(order, x.size(0), top_k)
        return slots.combine(_grouped_swiglu(slots.gather(x), w_gate, w_up, w_down, counts, weights))
    blocks = _blocks(counts, order.numel(), max(w_gate.shape[1:]))
    return _LoopExperts.apply(x, order // top_k, weights.to(x.dtype), w_gate, w_up, w_down, blocks)


class CopySlots:
    """Where each kept token copy sits in the ``(N, top_k)`` routing table: ``order: (M,)``, unique slots grouped by
    expert (:func:`~omnifuse.moe_core.moe.sort_by_expert`); slots of dropped or padding copies are empty.

    Moves rows between token order and copy order with gathers only, forward and backward: a scatter-add onto
    repeated token indices (``index_select``'s backward, ``index_add``) needs atomics, which dominated the MoE layer's
    time on a GPU. Not twice differentiable (the loop kernel is not either)."""

    def __init__(self, order: Tensor, n_tokens: int, top_k: int) -> None:
        self.order, self.n_tokens, self.top_k = order, n_tokens, top_k
        self.token = order // top_k  # (M,) source token of each copy
        self.full = order.numel() == n_tokens * top_k  # every slot kept (dropless, no padding): no masking pass

    @functools.cached_property
    def copy_of_slot(self) -> Tensor:
        """``(N*k,)`` the copy in each slot (0 for empty slots, which :attr:`kept` selects away)."""
        arange = torch.arange(self.order.numel(), device=self.order.device)
        return self.order.new_zeros(self.n_tokens * self.top_k).index_copy_(0, self.order, arange)

    @functools.cached_property
    def kept(self) -> Tensor:
        """``(N, k, 1)`` bool: the slot holds a kept copy."""
        kept = torch.zeros(self.n_tokens * self.top_k, dtype=torch.bool, device=self.order.device)
        return kept.index_fill_(0, self.order, True).view(self.n_tokens, self.top_k, 1)

    def gather(self, x: Tensor) -> Tensor:
        """``x[token]``: ``x: (N, d)`` -> ``(M, d)``, one row per copy."""
        return _GatherCopies.apply(x, self)

    def combine(self, ys: Tensor) -> Tensor:
        """Sum each token's copy rows: ``ys: (M, d)`` -> ``(N, d)``; empty slots add zero, fp32 accumulation."""
        return _CombineCopies.apply(ys, self)

    def _sum_slots(self, rows: Tensor) -> Tensor:
        """One gather into slot order, then a sum over ``top_k``. Empty slots are selected away (``where``, so that
        a non-finite row cannot leak into them): an extra pass over ``(N, k, d)`` that the dropless case skips."""
        n, k = self.n_tokens, self.top_k
        if rows.size(0) == 0:
            return rows.new_zeros(n, rows.size(-1))
        slot_rows = rows.index_select(0, self.copy_of_slot).view(n, k, -1)  # (N, k, d)
        if not self.full:
            slot_rows = torch.where(self.kept, slot_rows, 0)
        return slot_rows.sum(1)


class _GatherCopies(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slots):
        ctx.slots = slots  # index tensors only, never modified in place
        return x.index_select(0, slots.token)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return ctx.slots._sum_slots(grad.contiguous()), None


class _CombineCopies(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys, slots):
        ctx.slots = slots
        return slots._sum_slots(ys)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return grad.index_select(0, ctx.slots.token), None


class _LoopExperts(torch.autograd.Function):
    """Weighted SwiGLU experts, ``y_i = (w_i * silu(x_i Wg) * (x_i Wu)) Wd`` for the copies of each expert.

    ``token is None``: copy ``i`` is row ``i`` of ``x`` and the output has one row per copy. Otherwise copy
    ``i`` reads ``x[token[i]]`` and its output is scatter-added onto row ``token[i]`` (output shaped like ``x``).

    Work goes block by block (consecutive experts, about ``_BLOCK_ELEMS`` elements per temporary, so that
    they stay in cache): one gather, one matmul per expert and projection, the elementwise gating once for
    the block, one scatter-add. Saves the gathered copies ``xs (M, d)``, ``w``, the gate pre-activation ``g``
    and the up projection ``u`` (``(M, h)`` each); the activation is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, x, token, w, w_gate, w_up, w_down, blocks):
        m, h, d_out = w.numel(), w_gate.size(-1), w_down.size(-1)
        x = x.contiguous()
        gathered = token is not None
        xs = x.new_empty(m, x.size(1)) if gathered else x  # (M, d) copies in expert order
        g = x.new_empty(m, h)  # (M, h) gate pre-activation of every copy
        u = x.new_empty(m, h)  # (M, h) up projection of every copy
        out = x.new_zeros(x.size(0), d_out) if gathered else x.new_empty(m, d_out)
        for bs, bt, spans in blocks:
            if gathered:
                torch.index_select(x, 0, token[bs:bt], out=xs[bs:bt])
            for e, s, t in spans:
                torch.mm(xs[s:t], w_gate[e], out=g[s:t])
                torch.mm(xs[s:t], w_up[e], out=u[s:t])
            a = F.silu(g[bs:bt]).mul_(u[bs:bt]).mul_(w[bs:bt].unsqueeze(-1))  # (c, h) weighted activation
            yb = x.new_empty(bt - bs, d_out) if gathered else out[bs:bt]  # (c, d)
            for e, s, t in spans:
                torch.mm(a[s - bs : t - bs], w_down[e], out=yb[s - bs : t - bs])
            if gathered:
                out.index_add_(0, token[bs:bt], yb)
        ctx.save_for_backward(xs, token, w, w_gate, w_up, w_down, g, u)
        ctx.blocks, ctx.n_rows = blocks, x.size(0)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        xs, token, w, w_gate, w_up, w_down, g, u = ctx.saved_tensors
        need_x, _, need_w, need_wg, need_wu, need_wd = ctx.needs_input_grad[:6]
        gathered = token is not None
        grad_out = grad_out.contiguous()
        dx = None
        if need_x:
            dx = xs.new_zeros(ctx.n_rows, xs.size(1)) if gathered else torch.empty_like(xs)
        dw = torch.empty_like(w) if need_w else None
        used = [e for _, _, spans in ctx.blocks for e, _, _ in spans]
        d_wg = _weight_grad(w_gate, used) if need_wg else None
        d_wu = _weight_grad(w_up, used) if need_wu else None
        d_wd = _weight_grad(w_down, used) if need_wd else None
        for bs, bt, spans in ctx.blocks:
            tok = token[bs:bt] if gathered else None
            go = grad_out.index_select(0, tok) if gathered else grad_out[bs:bt]  # (c, d)
            gb, ub, wb = g[bs:bt], u[bs:bt], w[bs:bt].unsqueeze(-1)
            da = torch.empty_like(gb)  # (c, h) grad wrt the weighted activation
            for e, s, t in spans:
                torch.mm(go[s - bs : t - bs], w_down[e].t(), out=da[s - bs : t - bs])
            silu = F.silu(gb)
            a = silu * ub  # (c, h) unweighted activation
            if need_w:
                torch.sum(da * a, dim=-1, out=dw[bs:bt])
            if need_wd:
                a.mul_(wb)
                for e, s, t in spans:
                    torch.mm(a[s - bs : t - bs].t(), go[s - bs : t - bs], out=d_wd[e])
            del a
            da.mul_(wb)  # grad wrt the unweighted activation
            du = da * silu  # (c, h)
            dg = torch.ops.aten.silu_backward(da.mul_(ub), gb)  # (c, h)
            dxb = (xs.new_empty(bt - bs, xs.size(1)) if gathered else dx[bs:bt]) if need_x else None
            for e, s, t in spans:
                r = slice(s - bs, t - bs)
                if need_x:
                    torch.mm(dg[r], w_gate[e].t(), out=dxb[r]).addmm_(du[r], w_up[e].t())
                if need_wg:
                    torch.mm(xs[s:t].t(), dg[r], out=d_wg[e])
                if need_wu:
                    torch.mm(xs[s:t].t(), du[r], out=d_wu[e])
            if need_x and gathered:
                dx.index_add_(0, tok, dxb)
        return dx, None, dw, d_wg, d_wu, d_wd, None


_BLOCK_ELEMS = 1 << 20  # elements per block temporary: 4 MB in fp32 (cache-resident; fewer, larger ops)


def _weight_grad(weight: Tensor, used: list[int]) -> Tensor:
    """Uninitialised gradient buffer for stacked weights, zeroed only for experts that got no copies
    (the others are written whole by ``torch.mm(out=)``)."""
    grad = torch.empty_like(weight)
    if len(used) < weight.size(0):
        empty = torch.ones(weight.size(0), dtype=torch.bool)
        empty[used] = False
        grad[empty.to(weight.device)] = 0
    return grad


def _blocks(counts: Tensor, total: int, width: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Group the non-empty experts into blocks of consecutive rows: ``(start, end, [(expert, start, end)])``.

    A block closes once it holds ``_BLOCK_ELEMS / width`` rows (at least one expert per block). One host sync.
    """
    rows = max(1, _BLOCK_ELEMS // max(1, width))
    blocks, spans, s, bs = [], [], 0, 0
    for e, c in enumerate(counts.tolist()):
        if c:
            spans.append((e, s, s + c))
            s += c
            if s - bs >= rows:
                blocks.append((bs, s, spans))
                spans, bs = [], s
    if spans:
        blocks.append((bs, s, spans))
    if s != total:
        raise ValueError(f"expert counts sum to {s} but there are {total} copies")
    return blocks
