"""Scale-out helpers for the tasks: DDP's unused-parameter setting and an FSDP strategy that suits an OmniModel.

* :func:`enable_ddp_unused_parameters`: the fusion layer leaves a modality's projection unused in a batch without
  that modality, which plain DDP treats as an error.
* :class:`FSDPMixedPrecision` (a YAML-friendly FSDP ``MixedPrecision`` that keeps buffers, e.g. the router biases,
  in fp32) and :class:`OmniFSDPStrategy`.
"""


from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
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
