"""LoRA adapters for OmniModel: linear layers (attention projections, fusion, dense FFNs, shared experts) and the
stacked routed experts (per-expert low-rank deltas).

* ``nn.Linear`` ``y = x W^T + b`` gains ``weight_lora_A: (r, in)`` and ``weight_lora_B: (out, r)``:
  ``y += scale * (dropout(x) A^T) B^T`` (computed on the activations, the weight is never materialised).
* ``RoutedExperts`` (``w_gate, w_up: (E, d, h)``, ``w_down: (E, h, d)``, used as ``x @ W[e]``) gains per expert
  ``<w>_lora_A: (E, in, r)`` and ``<w>_lora_B: (E, r, out)``: ``W[e] + scale * A[e] @ B[e]``, so every expert of
  the layer has its own low-rank delta. The experts' kernels (loop or grouped GEMM) read the adapted weight.

``B`` starts at 0, so a freshly adapted model computes exactly what its base computes. The base tensors keep their
names (``...qkv.weight``, ``...experts.w_gate``); the adapters add ``<param>_lora_A``, ``<param>_lora_B`` and a
``<param>_lora_scale`` buffer (``alpha / r``), so a state dict is self-describing: :func:`merge_lora_state` folds the
adapters into the base weights without knowing the config, and :func:`save_lora_adapters` writes only the adapters
(a small safetensors file whose metadata holds the :class:`LoRAConfig`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnifuse.finetune.freezing import LORA_MARK, freeze_modules, resolve_modules, unfreeze_modules
from omnifuse.finetune.safe_load import load_checkpoint
from omnifuse.moe_core.experts import RoutedExperts

ADAPTERS_NAME = "adapters.safetensors"
EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


@dataclass
class LoRAConfig:
    """Low-rank adapters (``OmniTask(lora=...)``; YAML ``model.init_args.lora``).

    Args:
        r: rank of each adapter.
        alpha: the adapter output is scaled by ``alpha / r``.
        dropout: dropout on the input of linear adapters (expert adapters have none).
        targets: module groups or patterns whose linear layers / stacked experts get adapters (group names in
            :data:`omnifuse.finetune.freezing.MODULE_GROUPS`: ``decoder_attention``, ``experts``, ``fusion``, ...).
        trainable: groups trained in full beside the adapters (e.g. ``[audio_encoder, modality_embeddings]``).
        train_new: also train in full the tensors ``init_from`` did not provide (a new encoder, a new modality
            projection); everything else of the base model is frozen.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["decoder_attention"])
    trainable: list[str] = field(default_factory=list)
    train_new: bool = True

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target group")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


# ---------------------------------------------------------------------------------------------------- the adapters


def _add_adapter(module: nn.Module, param: str, a: Tensor, b: Tensor, scale: float) -> None:
    module.register_parameter(f"{param}_lora_A", nn.Parameter(a))
    module.register_parameter(f"{param}_lora_B", nn.Parameter(b))
    module.register_buffer(f"{param}_lora_scale", torch.tensor(float(scale), device=a.device))


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank adapter; made by :func:`add_lora` (the instance's class is swapped in place,
    so parents and parameter names are untouched)."""

    lora_dropout: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)  # (..., out)
        h = F.linear(self.lora_dropout(x), self.weight_lora_A.to(x.dtype))  # (..., r)
        return out + F.linear(h, self.weight_lora_B.to(x.dtype)) * self.weight_lora_scale.to(x.dtype)

    def merged_weight(self) -> Tensor:
        return self.weight + self.weight_lora_scale * (self.weight_lora_B @ self.weight_lora_A)  # (out, in)


def _expert_weight(name: str) -> property:
    def get(self: LoRARoutedExperts) -> Tensor:
        w = self._parameters[name]  # (E, in, out)
        a = self._parameters.get(f"{name}_lora_A")
        if a is None:
            return w
        b = self._parameters[f"{name}_lora_B"]
        return w + self._buffers[f"{name}_lora_scale"] * torch.bmm(a, b)  # (E, in, r) @ (E, r, out)

    return property(get, doc=f"``{name}`` plus its per-expert low-rank delta")


class LoRARoutedExperts(RoutedExperts):
    """``RoutedExperts`` whose ``w_gate`` / ``w_up`` / ``w_down`` read as base + per-expert low-rank delta; the base
    tensors stay registered (and saved) under their own names."""

    w_gate = _expert_weight("w_gate")
    w_up = _expert_weight("w_up")
    w_down = _expert_weight("w_down")


def add_lora(module: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> bool:
    """Give one ``nn.Linear`` or ``RoutedExperts`` its adapters (in place). Returns False for other modules and
    for a module that already has adapters."""
    scale = alpha / r
    if isinstance(module, (LoRALinear, LoRARoutedExperts)):
        return False
    if type(module) is nn.Linear:
        w = module.weight
        a = torch.empty(r, module.in_features, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear (and peft): U(-1/sqrt(in), 1/sqrt(in))
        b = torch.zeros(module.out_features, r, device=w.device, dtype=w.dtype)
        _add_adapter(module, "weight", a, b, scale)
        module.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        module.__class__ = LoRALinear
        return True
    if type(module) is RoutedExperts:
        for name in EXPERT_WEIGHTS:
            w = module._parameters[name]  # (E, in, out)
            e, d_in, d_out = w.shape
            bound = 1.0 / math.sqrt(d_in)
            a = torch.empty(e, d_in, r, device=w.device, dtype=w.dtype).uniform_(-bound, bound)
            b = torch.zeros(e, r, d_out, device=w.device, dtype=w.dtype)
            _add_adapter(module, name, a, b, scale)
        module.__class__ = LoRARoutedExperts
        return True
    return False


def _lora_targets(modules: list[nn.Module]) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` / ``RoutedExperts`` inside ``modules`` (deduplicated)."""
    out, seen = [], set()
    for root in modules:
        for name, m in root.named_modules():
            if id(m) not in seen and type(m) in (nn.Linear, RoutedExperts, LoRALinear, LoRARoutedExperts):
                seen.add(id(m))
                out.append((name, m))
    return out


def apply_lora(model: nn.Module, config: LoRAConfig, new_keys: list[str] | None = None) -> int:
    """Add adapters to the ``config.targets`` of ``model`` and freeze everything else except the adapters,
    ``config.trainable`` groups and (with ``config.train_new``) the parameters named in ``new_keys``.
    Returns the number of adapted layers."""
    targets = _lora_targets(resolve_modules(model, config.targets))
    adapted = sum(add_lora(m, config.r, config.alpha, config.dropout) for _, m in targets)
    if adapted == 0 and not any(isinstance(m, (LoRALinear, LoRARoutedExperts)) for _, m in targets):
        raise ValueError(f"LoRA targets {config.targets} contain no linear layer or routed experts")
    freeze_modules([model])  # the base model; adapters stay trainable
    if config.trainable:
        unfreeze_modules(resolve_modules(model, config.trainable))
    if config.train_new and new_keys:
        params = dict(model.named_parameters())
        for key in new_keys:
            if key in params:
                params[key].requires_grad_(True)
    return adapted


def lora_state(module: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors of ``module``'s state dict (``*_lora_A``, ``*_lora_B``, ``*_lora_scale``)."""
    return {k: v for k, v in module.state_dict().items() if LORA_MARK in k.rsplit(".", 1)[-1]}


def _split_lora_key(key: str) -> tuple[str, str] | None:
    """``decoder.blocks.0.self_attn.qkv.weight_lora_A`` -> (``...qkv.weight``, ``A``)."""
    head, _, tail = key.rpartition(".")
    base, mark, kind = tail.rpartition(LORA_MARK)
    if not mark or kind not in ("A", "B", "scale"):
        return None
    return (f"{head}.{base}" if head else base), kind


def merge_lora_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with every adapter folded into its base weight and the adapter entries dropped
    (``W + scale * B @ A`` for a linear weight ``(out, in)``, ``W[e] + scale * A[e] @ B[e]`` for stacked experts).
    A state without adapters is returned as is."""
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        split = _split_lora_key(key)
        if split is not None:
            parts.setdefault(split[0], {})[split[1]] = value
    if not parts:
        return state
    out = {k: v for k, v in state.items() if _split_lora_key(k) is None}
    for base, p in parts.items():
        if base not in out or set(p) != {"A", "B", "scale"}:
            raise ValueError(f"incomplete LoRA adapter for {base!r}: have {sorted(p)}, base present: {base in out}")
        w = out[base]
        a, b, scale = p["A"].to(torch.float32), p["B"].to(torch.float32), p["scale"].to(torch.float32)
        delta = b @ a if w.ndim == 2 else torch.bmm(a, b)  # (out, in) or (E, in, out)
        out[base] = (w.to(torch.float32) + scale * delta).to(w.dtype)
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter of ``model`` into its base weight, in place; the modules become plain ``nn.Linear`` /
    ``RoutedExperts`` again (for export: the result loads into a model built without LoRA)."""
    for m in list(model.modules()):
        if isinstance(m, LoRALinear):
            with torch.no_grad():
                merged = m.merged_weight()
                m.weight.copy_(merged)
            for name in ("weight_lora_A", "weight_lora_B"):
                del m._parameters[name]
            del m._buffers["weight_lora_scale"]
            del m._modules["lora_dropout"]
            m.__class__ = nn.Linear
        elif isinstance(m, LoRARoutedExperts):
            with torch.no_grad():
                merged = {name: getattr(m, name).detach().clone() for name in EXPERT_WEIGHTS}
                for name, value in merged.items():
                    m._parameters[name].copy_(value)
            for name in EXPERT_WEIGHTS:
                m._parameters.pop(f"{name}_lora_A", None)
                m._parameters.pop(f"{name}_lora_B", None)
                m._buffers.pop(f"{name}_lora_scale", None)
            m.__class__ = RoutedExperts
    return model


def save_lora_adapters(model: nn.Module, path: str | Path, config: LoRAConfig | None = None) -> Path:
    """Write only the adapters of ``model`` to a safetensors file (``path`` may be a folder: ``adapters.safetensors``
    inside it). The metadata records ``config`` so :func:`load_lora_adapters` can rebuild them."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / ADAPTERS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in lora_state(model).items()}
    if not state:
        raise ValueError("the model has no LoRA adapters to save")
    metadata = {"format": "pt", "omnifuse_lora": json.dumps(asdict(config) if config is not None else {})}
    save_file(state, str(path), metadata=metadata)
    return path


def load_lora_adapters(model: nn.Module, path: str | Path, merge: bool = False) -> nn.Module:
    """Add to ``model`` (a base model, e.g. ``OmniModel.from_pretrained(base)``) the adapters saved at ``path`` and
    load their values; with ``merge=True`` fold them into the base weights right away."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / ADAPTERS_NAME
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("omnifuse_lora") or "{}")
    state = load_file(str(path))
    config = LoRAConfig(**meta) if meta else LoRAConfig()
    modules = dict(model.named_modules())
    for key in state:
        split = _split_lora_key(key)
        owner = split[0].rpartition(".")[0] if split else None
        if owner not in modules:
            raise ValueError(f"{path}: adapter {key!r} has no module {owner!r} in the model")
        add_lora(modules[owner], config.r, config.alpha, config.dropout)
    missing = set(lora_state(model)) - set(state)
    if missing:
        raise ValueError(f"{path} lacks adapters the model expects: {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)
    return merge_lora(model) if merge else model


def export_adapters(checkpoint: str | Path, out: str | Path) -> Path:
    """Extract the adapters of a LoRA fine-tuning checkpoint (``.ckpt``) into a small safetensors file."""
    from safetensors.torch import save_file

    ckpt = load_checkpoint(checkpoint)
    state = {
        k.removeprefix("model."): v.contiguous()
        for k, v in ckpt["state_dict"].items()
        if k.startswith("model.") and _split_lora_key(k) is not None
    }
    if not state:
        raise ValueError(f"{checkpoint} has no LoRA adapters")
    lora = (ckpt.get("hyper_parameters") or {}).get("lora")
    if lora is not None and not isinstance(lora, dict):
        lora = asdict(lora)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / ADAPTERS_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"format": "pt", "omnifuse_lora": json.dumps(lora or {})})
    return out


class SaveLoRAAdapters(L.Callback):
    """Write the task's adapters alone (``dirpath/adapters.safetensors``) whenever Lightning saves a checkpoint and
    when training ends. Without ``dirpath``: ``<trainer.default_root_dir>/adapters`` (the run folder under the CLI)."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and lora_state(pl_module.model):
            config = pl_module.hparams.get("lora")
            config = LoRAConfig(**config) if isinstance(config, dict) else config
            dirpath = self.dirpath if self.dirpath is not None else Path(trainer.default_root_dir) / "adapters"
            save_lora_adapters(pl_module.model, dirpath, config)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module)


__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "LoRARoutedExperts",
    "SaveLoRAAdapters",
    "add_lora",
    "apply_lora",
    "export_adapters",
    "load_lora_adapters",
    "lora_state",
    "merge_lora",
    "merge_lora_state",
    "save_lora_adapters",
]
