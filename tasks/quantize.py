"""INT8 weight quantization of a trained :class:`~omnifuse.tasks.model.OmniModel` for CPU inference.

``quantize_int8(model)`` replaces, in place:

* every ``nn.Linear`` (encoders, fusion, FiLM generator, decoder attention, shared experts, dense FFNs) by a
  :class:`QuantizedLinear`: per-output-channel symmetric int8 weights, fp32 bias, run by PyTorch's dynamic quantized
  linear kernel (activations quantized per call, int8 GEMM: fbgemm / onednn on x86);
* every MoE layer's routed experts by :class:`~omnifuse.moe_core.quantized.QuantizedRoutedExperts`.

The other 2-D weights outside the decoder that no int8 kernel runs (the encoders' embeddings, position tables, the
in-projections ``nn.MultiheadAttention`` keeps) are rounded to int8 per row too: stored int8, held dequantized in
memory, computed in fp32. Left in fp32: the routers (their scores pick the experts: rounding there would change
routing, not just values), the decoder's embedding (it is the tied output head), norms, convolutions, and the
linears ``nn.MultiheadAttention`` reads by attribute. Weights are stored as int8 tensors with their scales (buffers), so a quantized model's state is plain
tensors: ``save_pretrained`` writes it with safetensors and ``config.json`` records ``"quantization": "int8"``;
``from_pretrained`` rebuilds the quantized structure and loads it. Inference only (no gradients); CPU kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omnifuse.moe_core.experts import RoutedExperts
from omnifuse.moe_core.quantized import QuantizedRoutedExperts, pack, qlinear, quantize_per_channel

QUANTIZATIONS = ("int8",)
MIN_TABLE = 4096  # smaller 2-D parameters stay fp32 (their bytes do not matter)


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with per-output-channel symmetric int8 weights (``weight_int8``, ``weight_scale``) and an fp32
    bias; ``(..., in) -> (..., out)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> QuantizedLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        with torch.no_grad():
            q.weight_int8, q.weight_scale = quantize_per_channel(linear.weight.detach().float())
            if linear.bias is not None:
                q.bias.copy_(linear.bias.detach().float())
        return q

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # new values: repack on the next forward

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if self._packed is None:
            self._packed = pack(self.weight_int8, self.weight_scale, self.bias)
        lead = x.shape[:-1]
        y = qlinear(x.reshape(-1, self.in_features).float(), self._packed)  # (M, out)
        return y.reshape(*lead, self.out_features).to(x.dtype)


def _kept_fp32(model: nn.Module) -> set[int]:
    """ids of the linears that stay fp32: those inside ``nn.MultiheadAttention`` (it reads ``out_proj.weight``) and
    those whose weight is shared with another module (tied)."""
    keep: set[int] = set()
    owners: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            keep.update(id(m) for m in module.modules() if isinstance(m, nn.Linear))
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    for module in model.modules():
        if isinstance(module, nn.Linear) and owners.get(id(module.weight), 0) > 1:
            keep.add(id(module))
    return keep


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize ``model`` in place (see the module docstring) and mark it (``model.quantization = "int8"``); returns it.
    Put the model in eval mode first: the result is for inference only."""
    lora = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("LoRA")})
    if lora:
        raise ValueError(
            f"the model has unmerged LoRA adapters ({', '.join(lora)}): merge them first (an export or "
            "OmniModel.from_pretrained does), quantizing would drop them"
        )
    keep = _kept_fp32(model)
    replacements: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and id(child) not in keep:
                replacements.append((parent, name, QuantizedLinear.from_float(child)))
            elif isinstance(child, RoutedExperts):
                replacements.append((parent, name, QuantizedRoutedExperts.from_float(child)))
    for parent, name, new in replacements:
        setattr(parent, name, new)
    # The remaining 2-D weights outside the decoder (whose embedding is the tied output head): embeddings, position
    # tables, MultiheadAttention's in-projections. Rounded to int8 per row as well: stored int8 on disk, held
    # dequantized in memory, so what the model computes is what a loaded export computes.
    model.int8_tables = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and p.is_floating_point() and p.numel() >= MIN_TABLE and not name.startswith("decoder."):
                values, scale = quantize_per_channel(p.float())
                p.copy_(values.float() * scale[:, None])
                model.int8_tables.append(name)
    model.quantization = "int8"
    return model.eval()


def pack_tables(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A quantized model's state for the file: each lookup table as ``<name>.int8`` + ``<name>.int8_scale``."""
    state = dict(state)
    for name in getattr(model, "int8_tables", ()):
        values, scale = quantize_per_channel(state.pop(name).float())  # exact: the table holds int8 * scale already
        state[f"{name}.int8"], state[f"{name}.int8_scale"] = values, scale
    return state


def unpack_tables(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`pack_tables`: lookup tables back to fp32 (int8 values times their row scales)."""
    state = dict(state)
    for name in getattr(model, "int8_tables", ()):
        values, scale = state.pop(f"{name}.int8"), state.pop(f"{name}.int8_scale")
        state[name] = values.float() * scale.float()[:, None]
    return state
