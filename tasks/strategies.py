"""Scale-out helpers for the tasks: DDP's unused-parameter setting, an FSDP strategy that suits an OmniModel, and
expert parallelism under Lightning's DDP.

* :func:`enable_ddp_unused_parameters`: the fusion layer leaves a modality's projection unused in a batch without
  that modality, which plain DDP treats as an error.
* :class:`FSDPMixedPrecision` (a YAML-friendly FSDP ``MixedPrecision`` that keeps buffers, e.g. the router biases,
  in fp32) and :class:`OmniFSDPStrategy`.
* :class:`ExpertParallelStrategy`: DDP with each MoE layer's routed experts sharded over the ranks.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, StrategyRegistry
from torch import nn
from torch.distributed.fsdp import MixedPrecision
from torch.distributed.fsdp.wrap import ModuleWrapPolicy


def enable_ddp_unused_parameters(trainer: L.Trainer | None) -> bool:
    """Turn on DDP's ``find_unused_parameters`` when the strategy is plain ``ddp`` (the user did not choose).

    A batch in which no sample has, say, audio leaves the audio encoder and the fusion layer's audio projection
    without gradients, which plain DDP treats as an error. ``ddp_find_unused_parameters_false`` (an explicit choice)
    and ``static_graph`` are left alone. Call before the strategy wraps the model (``LightningModule.setup``).
    Returns True when it changed the setting.
    """
    from lightning.pytorch.strategies import DDPStrategy

    strategy = getattr(trainer, "strategy", None)
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if not isinstance(strategy, DDPStrategy) or not isinstance(kwargs, dict):
        return False
    if "find_unused_parameters" in kwargs or kwargs.get("static_graph"):
        return False
    kwargs["find_unused_parameters"] = True
    return True


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FSDPMixedPrecision(MixedPrecision):
    """``torch.distributed.fsdp.MixedPrecision`` with dtypes given by name, so a YAML config can set it::

        strategy:
          class_path: lightning.pytorch.strategies.FSDPStrategy
          init_args:
            mixed_precision:
              class_path: omnifuse.tasks.strategies.FSDPMixedPrecision
              init_args: {param_dtype: bfloat16, reduce_dtype: float32, buffer_dtype: float32}

    Lightning's own FSDP ``bf16-mixed`` casts buffers to bf16; the routers' balancing bias (steps of 1e-3) and
    token counts need fp32, hence ``buffer_dtype: float32`` by default.
    """

    def __init__(
        self,
        param_dtype: str = "bfloat16",
        reduce_dtype: str = "float32",
        buffer_dtype: str = "float32",
        keep_low_precision_grads: bool = False,
        cast_forward_inputs: bool = False,
    ) -> None:
        for name, value in (
            ("param_dtype", param_dtype),
            ("reduce_dtype", reduce_dtype),
            ("buffer_dtype", buffer_dtype),
        ):
            if value not in _DTYPES:
                raise ValueError(f"{name} must be one of {sorted(_DTYPES)}, got {value!r}")
        super().__init__(
            param_dtype=_DTYPES[param_dtype],
            reduce_dtype=_DTYPES[reduce_dtype],
            buffer_dtype=_DTYPES[buffer_dtype],
            keep_low_precision_grads=keep_low_precision_grads,
            cast_forward_inputs=cast_forward_inputs,
        )


def fsdp_wrap_classes() -> set[type[nn.Module]]:
    """The classes worth an FSDP unit each: decoder blocks, fusion blocks, encoder transformer blocks."""
    from omnifuse.encoders.layers import TransformerBlock
    from omnifuse.fusion.attention import CrossModalBlock
    from omnifuse.moe_core.decoder import DecoderBlock

    return {DecoderBlock, CrossModalBlock, TransformerBlock}


class OmniFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with what an omnifuse model needs, settable from YAML:

    * mixed precision by dtype names (:class:`FSDPMixedPrecision`; buffers fp32 by default so the routers' balancing
      bias and token counts keep their precision - Lightning's own bf16 setting casts buffers to bf16);
    * one FSDP unit per decoder / fusion / encoder transformer block (:class:`OmniWrapPolicy`), and the same blocks
      recomputed in the backward with ``activation_checkpointing: true``;
    * full (single-file) checkpoints by default, which ``omnifuse export`` and ``init_from`` read like any other.
    """

    def __init__(
        self,
        param_dtype: str = "bfloat16",
        reduce_dtype: str = "float32",
        buffer_dtype: str = "float32",
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: str = "full",
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
    ) -> None:
        super().__init__(
            mixed_precision=FSDPMixedPrecision(param_dtype, reduce_dtype, buffer_dtype),
            auto_wrap_policy=OmniWrapPolicy(),
            activation_checkpointing_policy=OmniWrapPolicy() if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
        )


class OmniWrapPolicy(ModuleWrapPolicy):
    """FSDP ``ModuleWrapPolicy`` over :func:`fsdp_wrap_classes` (also usable as the activation-checkpointing
    policy); a YAML config names it by ``class_path``."""

    def __init__(self) -> None:
        super().__init__(fsdp_wrap_classes())


def _refuse_what_expert_parallelism_breaks(trainer: L.Trainer) -> None:
    """Settings whose per-rank decisions would silently desynchronise the replicated weights when each rank holds
    different expert gradients: a norm computed per rank, a loss scaler skipping the step on one rank only, a schedule
    that all-reduces the gradients of groups it unfreezes (the experts included)."""
    from omnifuse.finetune.freezing import FinetuneSchedule

    if trainer.gradient_clip_val and trainer.gradient_clip_algorithm != "value":
        raise ValueError(
            "gradient clipping by norm is not supported with expert parallelism (each rank holds different expert "
            "gradients, so the norms would differ per rank): use --trainer.gradient_clip_algorithm value, or none"
        )
    if "16-mixed" in str(trainer.precision) and "bf16" not in str(trainer.precision):
        raise ValueError(
            "fp16 mixed precision is not supported with expert parallelism (its loss scaler could skip a step on one "
            "rank only): use bf16-mixed or 32-true"
        )
    if any(isinstance(c, FinetuneSchedule) for c in trainer.callbacks):
        raise ValueError("FinetuneSchedule does not combine with expert parallelism yet: use freeze (static) instead")


class ExpertParallelStrategy(DDPStrategy):
    """DDP with the routed experts of every MoE layer sharded over the ranks (``moe_core.parallel``), from YAML::

        trainer:
          devices: 2
          strategy: {class_path: omnifuse.tasks.strategies.ExpertParallelStrategy}

    (``configs/expert_parallel.yaml`` is that overlay). Rank ``r`` owns experts ``[r E/W, (r+1) E/W)`` of each MoE
    layer and token copies travel to their expert's rank by all-to-all; everything else is replicated and all-reduced
    by DDP as usual. What it takes care of:

    * the expert parameters are left out of DDP's all-reduce (each rank owns its own), and their gradients, which the
      all-to-all backward sums over every rank's tokens, are divided by the world size, as DDP's mean is for the
      replicated parameters: a step equals a single-process step on the global batch;
    * the routers' balancing bias already uses the all-reduced token counts (``update_router_biases``);
    * checkpoints hold full, gathered tensors (model and optimizer state), so a single process loads, tests, predicts
      and exports them like any other, and an expert-parallel run resumes from them (or from a single-process one);
    * validation, test and prediction run on a full copy of the experts gathered once per loop: ranks generate
      different numbers of tokens, so they cannot meet in per-token all-to-alls.

    ``n_routed_experts`` must be divisible by the number of ranks. Refused, because each rank holds different expert
    gradients: gradient clipping by norm (clipping by value works), fp16 loss scaling (bf16 works), FinetuneSchedule
    (static ``freeze`` works); LoRA adapters on the routed experts.
    """

    def configure_ddp(self) -> None:
        from torch.nn.parallel import DistributedDataParallel

        from omnifuse.moe_core.parallel import apply_expert_parallel, expert_parallel_layers

        module = self.model
        decoder = getattr(getattr(module, "model", None), "decoder", None)
        if decoder is None or not getattr(decoder, "moe_layers", None):
            raise ValueError("ExpertParallelStrategy needs an omnifuse task whose decoder has MoE layers")
        trainer = module.trainer
        _refuse_what_expert_parallelism_breaks(trainer)
        apply_expert_parallel(decoder)
        world = self.world_size
        ignored = []
        for name, layer in expert_parallel_layers(module).items():
            for weight in ("w_gate", "w_up", "w_down"):
                ignored.append(f"{name}.experts.{weight}")
                param = getattr(layer.experts, weight)
                if not getattr(param, "_omnifuse_mean_over_ranks", False):  # once, even if fit runs again
                    param.register_hook(lambda grad: grad / world)
                    param._omnifuse_mean_over_ranks = True
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
        super().configure_ddp()

    # ------------------------------------------------------------------ full checkpoints

    def _layers(self) -> dict:
        from omnifuse.moe_core.parallel import expert_parallel_layers

        return expert_parallel_layers(self.lightning_module) if self.lightning_module is not None else {}

    def _expert_keys(self) -> dict[str, object]:
        """State-dict key of every sharded expert tensor -> its layer."""
        return {f"{n}.experts.{w}": layer for n, layer in self._layers().items() for w in ("w_gate", "w_up", "w_down")}

    def _optimizer_expert_indices(self, optimizer) -> dict[int, object]:
        """Index (as in ``optimizer.state_dict()``) of every sharded expert parameter -> its layer."""
        by_id = {id(getattr(layer.experts, w)): layer for layer in self._layers().values()
                 for w in ("w_gate", "w_up", "w_down")}  # fmt: skip
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {i: by_id[id(p)] for i, p in enumerate(params) if id(p) in by_id}

    def lightning_module_state_dict(self) -> dict:
        from omnifuse.moe_core.parallel import gather_experts

        state = super().lightning_module_state_dict()
        for key, layer in self._expert_keys().items():
            state[key] = gather_experts(state[key], layer.group)
        return state

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        from omnifuse.moe_core.parallel import shard_experts

        state = dict(checkpoint["state_dict"])
        for key, layer in self._expert_keys().items():
            if key in state and state[key].size(0) == layer.n_experts:
                state[key] = shard_experts(state[key], layer.rank, layer.world)
        super().load_model_state_dict({**checkpoint, "state_dict": state}, strict=strict)

    def optimizer_state(self, optimizer) -> dict:
        from omnifuse.moe_core.parallel import gather_experts

        state = super().optimizer_state(optimizer)
        for index, layer in self._optimizer_expert_indices(optimizer).items():
            if index in state.get("state", {}):
                entry = dict(state["state"][index])  # a copy: the optimizer's own state stays sharded
                for k, v in entry.items():
                    if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == layer.n_local:
                        entry[k] = gather_experts(v, layer.group)
                state["state"][index] = entry
        return state

    def load_optimizer_state_dict(self, checkpoint) -> None:
        from omnifuse.moe_core.parallel import shard_experts

        states = []
        for optimizer, opt_state in zip(self.optimizers, checkpoint["optimizer_states"], strict=True):
            opt_state = {**opt_state, "state": dict(opt_state.get("state", {}))}
            for index, layer in self._optimizer_expert_indices(optimizer).items():
                if index in opt_state["state"]:
                    entry = dict(opt_state["state"][index])
                    for k, v in entry.items():
                        if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == layer.n_experts:
                            entry[k] = shard_experts(v, layer.rank, layer.world)
                    opt_state["state"][index] = entry
            states.append(opt_state)
        super().load_optimizer_state_dict({**checkpoint, "optimizer_states": states})

    # ------------------------------------------------------------------ evaluation on gathered experts

    def _gather(self) -> None:
        for layer in self._layers().values():
            layer.gather_for_eval()

    def _release(self) -> None:
        for layer in self._layers().values():
            layer.release_full()

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._gather()

    def on_validation_end(self) -> None:
        self._release()
        super().on_validation_end()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._gather()

    def on_test_end(self) -> None:
        self._release()
        super().on_test_end()

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._gather()

    def on_predict_end(self) -> None:
        self._release()
        super().on_predict_end()


# `--trainer.strategy expert_parallel` on the command line (a YAML config may also give the class_path).
StrategyRegistry.register(
    "expert_parallel",
    ExpertParallelStrategy,
    description="DDP with the routed experts of every MoE layer sharded over the ranks (omnifuse)",
    override=True,
)
