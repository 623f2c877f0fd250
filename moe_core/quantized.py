"""INT8 routed experts for CPU inference: each expert's weights as per-output-channel symmetric int8, run through
PyTorch's dynamic quantized linear kernel (fbgemm / onednn: activations quantized per call, int8 GEMM, fp32 out).

``QuantizedRoutedExperts.from_float(experts)`` takes a trained :class:`~.experts.RoutedExperts` and computes what it
computes (up to int8 rounding) with a quarter of the weight bytes: the gate and up projections of an expert are one
packed ``d -> 2h`` matrix, the down projection another. Inference only (no gradients). Its weights travel as plain
tensors (:meth:`int8_state` / :meth:`load_int8_state`: int8 values, fp32 scales), so a quantized model is saved
with safetensors like any other, never pickled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def quantize_per_channel(w: Tensor) -> tuple[Tensor, Tensor]:
    """``w: (out, in)`` fp32 -> (int8 values ``(out, in)``, fp32 scales ``(out,)``): symmetric, per output row."""
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8), scale.float()


def pack(values: Tensor, scales: Tensor, bias: Tensor | None = None):
    """int8 values ``(out, in)`` + scales ``(out,)`` -> the dynamic quantized linear kernel's packed weight."""
    q = torch._make_per_channel_quantized_tensor(
        values, scales.double(), torch.zeros(scales.numel(), dtype=torch.long), 0
    )  # zero points 0: symmetric
    return torch.ops.quantized.linear_prepack(q, bias)


def qlinear(x: Tensor, packed) -> Tensor:
    """``x: (M, in)`` fp32 -> ``(M, out)`` through the packed int8 weight (activations quantized per call)."""
    return torch.ops.quantized.linear_dynamic(x, packed, True)  # reduce_range: safe on every x86 int8 kernel


class QuantizedRoutedExperts(nn.Module):
    """``E`` SwiGLU experts with int8 weights; the forward surface of :class:`~.experts.RoutedExperts`."""

    def __init__(self, n_experts: int, d_model: int, d_expert: int) -> None:
        super().__init__()
        self.n_experts, self.d_model, self.d_expert = n_experts, d_model, d_expert
        # int8 values and fp32 scales as buffers (saved, moved with .to); the packed kernels are built from them.
        self.register_buffer("gate_up", torch.zeros(n_experts, 2 * d_expert, d_model, dtype=torch.int8))
        self.register_buffer("gate_up_scale", torch.ones(n_experts, 2 * d_expert))
        self.register_buffer("down", torch.zeros(n_experts, d_model, d_expert, dtype=torch.int8))
        self.register_buffer("down_scale", torch.ones(n_experts, d_model))
        self._packed: list | None = None

    @classmethod
    def from_float(cls, experts: nn.Module) -> QuantizedRoutedExperts:
        q = cls(experts.n_experts, experts.d_model, experts.d_expert)
        with torch.no_grad():
            for e in range(experts.n_experts):
                gate_up = torch.cat([experts.w_gate[e], experts.w_up[e]], dim=1).t().float()  # (2h, d)
                q.gate_up[e], q.gate_up_scale[e] = quantize_per_channel(gate_up)
                q.down[e], q.down_scale[e] = quantize_per_channel(experts.w_down[e].t().float())  # (d, h)
        return q

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_model={self.d_model}, d_expert={self.d_expert}, int8"

    def _kernels(self) -> list:
        if self._packed is None:
            self._packed = [
                (pack(self.gate_up[e], self.gate_up_scale[e]), pack(self.down[e], self.down_scale[e]))
                for e in range(self.n_experts)
            ]
        return self._packed

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # new values: repack on the next forward

    def _expert(self, e: int, rows: Tensor, weights: Tensor) -> Tensor:
        gate_up, down = self._kernels()[e]
        h = qlinear(rows, gate_up)  # (m, 2h)
        a = F.silu(h[:, : self.d_expert]) * h[:, self.d_expert :]
        return qlinear(a * weights[:, None], down)  # (m, d)

    @torch.no_grad()
    def forward(self, rows: Tensor, counts: Tensor, weights: Tensor | None = None) -> Tensor:
        """Sorted rows ``(M, d)`` grouped by expert, ``counts: (E,)``, row weights ``(M,)`` -> ``(M, d)``."""
        weights = rows.new_ones(rows.size(0)) if weights is None else weights
        out = torch.empty_like(rows)
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c:
                out[start : start + c] = self._expert(e, rows[start : start + c].float(), weights[start : start + c])
                start += c
        return out

    @torch.no_grad()
    def gather_combine(self, x: Tensor, order: Tensor, top_k: int, weights: Tensor, counts: Tensor) -> Tensor:
        """``out[t] = sum_i weights[i] * expert(x[t])`` over the copies of token ``t`` (``order``: slot of each copy in
        the ``(N, top_k)`` routing table, grouped by expert)."""
        token = order // top_k  # (M,)
        out = torch.zeros_like(x, dtype=torch.float32)
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c:
                idx = token[start : start + c]
                out.index_add_(0, idx, self._expert(e, x.index_select(0, idx).float(), weights[start : start + c]))
                start += c
        return out.to(x.dtype)
