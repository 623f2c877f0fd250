"""Module groups of an OmniModel, freezing and staged unfreezing.

* ``freeze``: module groups by name (:data:`MODULE_GROUPS`) or ``fnmatch`` patterns over module paths, frozen with
  Lightning's :class:`~lightning.pytorch.callbacks.BaseFinetuning` helpers. A frozen router also stops its
  auxiliary-loss-free balancing bias (its ``bias_update_rate`` is 0 while frozen).
* :class:`FinetuneSchedule`: a ``BaseFinetuning`` callback that unfreezes groups at given epochs (``{epoch: groups}``
  from YAML), adds them to the optimizer as new parameter groups that follow the task's LR schedule, and keeps them
  synchronised under DDP.

The model is taken by duck typing (``model.encoders``, ``model.fusion``, ``model.decoder``), so this package needs
nothing of ``omnifuse.tasks``: the tasks build on it, not the other way round.
"""


from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

LORA_MARK = "_lora_"  # adapter tensors are named ``<param>_lora_A`` / ``_lora_B`` / ``_lora_scale``


# ---------------------------------------------------------------------------------------------------- module groups


def _encoder(name: str) -> Callable[[nn.Module], list[nn.Module]]:
    return lambda model: [model.encoders[name]] if name in model.encoders else []


def _blocks(model: nn.Module) -> list[nn.Module]:
    decoder = model.decoder
    return list(decoder.blocks) + ([decoder.mtp.block] if decoder.mtp is not None else [])


def _moe_layers(model: nn.Module) -> list[nn.Module]:
    return list(model.decoder.moe_layers)


#: Named module groups of an :class:`~omnifuse.tasks.model.OmniModel` (for ``freeze``, ``FinetuneSchedule`` and
#: ``lora.targets`` / ``lora.trainable``).
MODULE_GROUPS: dict[str, Callable[[nn.Module], list[nn.Module]]] = {
    "image_encoder": _encoder("image"),
    "audio_encoder": _encoder("audio"),
    "text_encoder": _encoder("text"),
    "encoders": lambda m: list(m.encoders.values()),
    "fusion": lambda m: [m.fusion],
    "modality_embeddings": lambda m: list(m.fusion.embed.values()),  # per-modality input projections
    "decoder_attention": lambda m: [a for b in _blocks(m) for a in (b.self_attn, b.cross_attn)],
    "decoder_ffn": lambda m: [b.ffn for b in _blocks(m) if not getattr(b, "is_moe", False)],  # dense FFNs
    "experts": lambda m: [x for layer in _moe_layers(m) for x in (layer.experts, layer.shared) if x is not None],
    "router": lambda m: [layer.router for layer in _moe_layers(m)],
    "decoder_embeddings": lambda m: [m.decoder.embed],  # tied with the output head
    "mtp": lambda m: [m.decoder.mtp] if m.decoder.mtp is not None else [],
    "decoder": lambda m: [m.decoder],
}


def resolve_modules(model: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    """Modules of ``model`` named by group names (:data:`MODULE_GROUPS`) or ``fnmatch`` patterns over module paths
    (``"decoder.blocks.0.*"``, ``"fusion.embed.audio"``); no duplicates, in the order given.

    An unknown group name or a pattern that matches nothing raises ``ValueError`` (a typo must not silently leave a
    model unfrozen); a known group this model does not have (``audio_encoder`` on an image+text model) is empty.
    """
    out: list[nn.Module] = []
    seen: set[int] = set()
    named = dict(model.named_modules())
    for name in names:
        if name in MODULE_GROUPS:
            found = MODULE_GROUPS[name](model)
        elif any(c in name for c in "*?[") or "." in name or name in named:
            found = [m for path, m in named.items() if path and fnmatch.fnmatchcase(path, name)]
            if not found:
                raise ValueError(f"module pattern {name!r} matches no module of the model")
        else:
            raise ValueError(
                f"unknown module group {name!r}; known groups: {', '.join(MODULE_GROUPS)} "
                "(or an fnmatch pattern over module paths such as 'decoder.blocks.0.*')"
            )
        for m in found:
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _routers(modules: Iterable[nn.Module]) -> list[nn.Module]:
    from omnifuse.moe_core.router import Router

    return [m for mod in modules for m in mod.modules() if isinstance(m, Router)]


def _set_router_bias_frozen(modules: Iterable[nn.Module], frozen: bool) -> None:
    """A frozen router keeps its balancing bias: its bias step is 0 until it is unfrozen (counts are still reset)."""
    for router in _routers(modules):
        if frozen:
            if not hasattr(router, "_unfrozen_bias_update_rate"):
                router._unfrozen_bias_update_rate = router.bias_update_rate
            router.bias_update_rate = 0.0
        elif hasattr(router, "_unfrozen_bias_update_rate"):
            router.bias_update_rate = router._unfrozen_bias_update_rate
            del router._unfrozen_bias_update_rate


def _is_adapter(param_name: str) -> bool:
    return LORA_MARK in param_name.rsplit(".", 1)[-1]


def freeze_modules(modules: list[nn.Module], train_bn: bool = False) -> None:
    """``BaseFinetuning.freeze`` (BatchNorm statistics frozen too unless ``train_bn``), routers' biases stopped;
    LoRA adapters inside the modules stay trainable."""
    BaseFinetuning.freeze(modules, train_bn=train_bn)
    _set_router_bias_frozen(modules, True)
    for module in modules:
        for name, p in module.named_parameters():
            if _is_adapter(name):
                p.requires_grad_(True)


def unfreeze_modules(modules: list[nn.Module]) -> None:
    """``BaseFinetuning.make_trainable`` and restart the routers' bias updates."""
    BaseFinetuning.make_trainable(modules)
    _set_router_bias_frozen(modules, False)


def freeze_groups(model: nn.Module, names: Iterable[str], train_bn: bool = False) -> list[nn.Module]:
    """Freeze the groups / patterns ``names`` of ``model``; returns the modules frozen."""
    modules = resolve_modules(model, names)
    freeze_modules(modules, train_bn=train_bn)
    return modules


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared parameters counted once)."""
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_summary(module: nn.Module) -> str:
    trainable, total = count_parameters(module)
    return f"trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / max(total, 1):.2f}%)"


@rank_zero_only
def _report(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- schedule


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    """The optimizer rule of every task (``parameter_groups``) and of late-unfrozen groups: no weight decay on norms,
    biases and embeddings (1-D tensors and embedding tables)."""
    return p.ndim < 2 or "embed" in name or "norm" in name


class FinetuneSchedule(BaseFinetuning):
    """Staged unfreezing from YAML: the groups listed under an epoch are frozen before training and unfrozen when
    that epoch starts, e.g. ``unfreeze: {1: [fusion], 3: [image_encoder, text_encoder]}``.

    Unfrozen parameters join the optimizer as new parameter groups (weight decay as in ``OmniTask``) with
    ``lr_ratio`` times the task's learning rate, and follow the task's warm-up/cosine schedule (the ``LambdaLR`` is
    extended to the new groups). Resuming from a checkpoint restores the groups (Lightning's ``BaseFinetuning`` state)
    and makes the groups of past epochs trainable again. Under DDP, parameters unfrozen after the model was wrapped
    are not known to DDP's reducer, so their gradients are averaged here before each optimizer step.

    Args:
        unfreeze: epoch -> group names or module patterns (see :data:`MODULE_GROUPS`).
        lr_ratio: learning rate of an unfrozen group relative to the first parameter group's.
        train_bn: keep BatchNorm layers of the scheduled groups training while frozen (default: frozen too).
    """

    def __init__(self, unfreeze: dict[int, list[str]], lr_ratio: float = 0.1, train_bn: bool = False) -> None:
        super().__init__()
        if not unfreeze:
            raise ValueError("FinetuneSchedule needs at least one {epoch: [groups]} entry")
        self.unfreeze = {int(epoch): list(groups) for epoch, groups in unfreeze.items()}
        if min(self.unfreeze) < 0:
            raise ValueError(f"unfreeze epochs must be >= 0, got {sorted(self.unfreeze)}")
        if lr_ratio <= 0:
            raise ValueError(f"lr_ratio must be > 0, got {lr_ratio}")
        self.lr_ratio = lr_ratio
        self.train_bn = train_bn
        self._late_params: list[nn.Parameter] = []  # unfrozen after the model was wrapped (DDP does not see them)

    def _modules(self, pl_module: L.LightningModule, epochs: Iterable[int]) -> list[nn.Module]:
        names = [g for e in sorted(epochs) for g in self.unfreeze[e]]
        return resolve_modules(pl_module.model, names)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            raise NotImplementedError("FinetuneSchedule cannot unfreeze parameters of an FSDP-sharded model")
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        freeze_modules(self._modules(pl_module, self.unfreeze), train_bn=self.train_bn)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        due = [e for e in self.unfreeze if e <= epoch]
        if not due:
            return
        modules = self._modules(pl_module, due)
        unfreeze_modules(modules)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.filter_params(modules, train_bn=True) if id(p) not in in_optimizer]
        self._track_late(params)
        if not params:
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        # The task's configured LR (group 0 may be a group scaled by optimizer.lr_scale); lr_scale itself applies to the
        # parameters trainable at the start, not to groups unfrozen here.
        config = getattr(pl_module, "optimizer_config", None)
        base = optimizer.param_groups[0]
        lr = self.lr_ratio * (config.lr if config is not None else base.get("initial_lr", base["lr"]))
        decay = [p for p in params if not no_weight_decay(names.get(id(p), ""), p)]
        no_decay = [p for p in params if no_weight_decay(names.get(id(p), ""), p)]
        weight_decay = max((g.get("weight_decay", 0.0) for g in optimizer.param_groups), default=0.0)
        for group_params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if group_params:
                optimizer.add_param_group({"params": group_params, "lr": lr, "initial_lr": lr, "weight_decay": wd})
        self._sync_schedulers(pl_module.trainer)
        _report(
            f"FinetuneSchedule epoch {epoch}: unfroze {sorted(g for e in due if e == epoch for g in self.unfreeze[e])}"
            f" (lr x{self.lr_ratio}); {trainable_summary(pl_module)}"
        )

    def _track_late(self, params: Iterable[nn.Parameter]) -> None:
        known = {id(p) for p in self._late_params}
        self._late_params += [p for p in params if id(p) not in known]

    @staticmethod
    def _sync_schedulers(trainer: L.Trainer) -> None:
        """Extend each ``LambdaLR`` to parameter groups added after it was built (also after a resume: the lambdas
        are not part of its state)."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                continue
            groups = scheduler.optimizer.param_groups
            while len(scheduler.lr_lambdas) < len(groups):
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
            while len(scheduler.base_lrs) < len(groups):
                group = groups[len(scheduler.base_lrs)]
                scheduler.base_lrs.append(group.setdefault("initial_lr", group["lr"]))
            step = max(scheduler.last_epoch, 0)
            for group, base_lr, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base_lr * fn(step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resume (loops restored, no on_train_epoch_start when restarting mid-epoch): past groups trainable.
        due = [e for e in self.unfreeze if e <= trainer.current_epoch]
        if due and trainer.global_step > 0:
            modules = self._modules(pl_module, due)
            unfreeze_modules(modules)
            self._track_late(self.filter_params(modules, train_bn=True))
            self._sync_schedulers(trainer)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._late_params or trainer.world_size < 2:
            return
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        grads = [p.grad for p in self._late_params if p.requires_grad]
        if any(g is None for g in grads):
            # A parameter without a gradient on this rank: give it a zero one so every rank reduces the same list.
            for p in self._late_params:
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in self._late_params if p.requires_grad]
        if not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat /= trainer.world_size
        for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)
