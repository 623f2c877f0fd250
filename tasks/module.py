"""The task LightningModules: one base that trains and evaluates an OmniModel, small per-task parts on top.

Training is the same for every task: teacher-forced cross-entropy on the target tokens plus the router losses (and the
optional multi-token-prediction loss). Tasks differ in how they generate (beam search for captions, a JSON Schema
logits mask for structured output) and in what they measure.
"""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.encoders.base import Encoder
from omnifuse.finetune.freezing import no_weight_decay
from omnifuse.finetune.lora import LoRAConfig
from omnifuse.finetune.safe_load import register_safe_types
from omnifuse.finetune.setup import setup_finetuning
from omnifuse.fusion import FusedMemory
from omnifuse.moe_core import MoEDecoderConfig
from omnifuse.tasks.config import GenerationConfig, OptimizerConfig
from omnifuse.tasks.distill import DistillConfig, distillation_loss
from omnifuse.tasks.inference import generation_kwargs, predict_batch
from omnifuse.tasks.model import FusionConfig, Generation, OmniModel
from omnifuse.tasks.speech_ctc import SpeechCTCConfig, SpeechCTCHead, init_head_from
from omnifuse.tasks.strategies import enable_ddp_unused_parameters

IGNORE_INDEX = -100

# Lightning's own checkpoint loads (``--ckpt_path``, ``load_from_checkpoint``) run with ``weights_only=True`` like
# omnifuse's: let them rebuild the config dataclasses a task built in Python keeps in its hyper-parameters.
register_safe_types()


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a lower precision (bf16 / fp16 logits: the loss needs fp32), else unchanged (a
    float64 run keeps float64 losses)."""
    return x if x.dtype == torch.float64 else x.float()


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, random) as tensors and plain Python values, so that checkpoints
    holding them still load with ``torch.load(weights_only=True)`` (numpy arrays would not)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_initialized():  # never start CUDA just to read its RNG
        states["cuda"] = torch.cuda.get_rng_state()  # this process's device (under DDP, rank 0's device)
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])  # onto this process's current device


def gather_from_ranks(obj: Any) -> list[Any]:
    """``[obj]`` in one process; every rank's ``obj`` (in rank order) when several processes run (DDP), so metrics
    that are not means of per-batch values (CIDEr-D, accuracy per answer type) are computed over all the data."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, obj)
        return gathered
    return [obj]


ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")


def adamw_kernel(groups: list[dict], cfg: OptimizerConfig, clips_mixed_precision: bool = False) -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments (``fused`` / ``foreach``) for ``cfg.implementation``.

    ``auto`` picks the fused kernel where every parameter is a floating tensor on a device torch has fused AdamW for
    (its update is the same arithmetic as the for-loop reference, in one kernel per parameter), and otherwise leaves
    the choice to torch (e.g. a meta or integer parameter, a device without the kernel). A fused AdamW unscales
    gradients itself, so Lightning cannot clip them under mixed precision: with ``clips_mixed_precision`` (a
    ``*-mixed`` precision and ``gradient_clip_val``) ``auto`` leaves fused out and ``fused`` is an error."""
    if cfg.implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"optimizer.implementation must be one of {ADAMW_IMPLEMENTATIONS}, got {cfg.implementation!r}")
    if cfg.implementation == "fused":
        if clips_mixed_precision:
            raise ValueError(
                "optimizer.implementation 'fused' cannot be combined with gradient clipping under mixed precision "
                "(the fused kernel unscales gradients itself): use 'auto' or 'foreach', or drop gradient_clip_val"
            )
        return {"fused": True}
    if cfg.implementation == "foreach":
        return {"foreach": True}
    if cfg.implementation == "for-loop":
        return {"foreach": False}
    supported = _fused_adamw_devices()
    params = [p for g in groups for p in g["params"]]
    if clips_mixed_precision:
        return {}
    if params and all(p.is_floating_point() and p.device.type in supported for p in params):
        return {"fused": True}
    return {}


def _fused_adamw_devices() -> set[str]:
    """Device types with torch's fused AdamW kernel. torch keeps the list in a private helper; if a later release
    moves it, fall back to the devices torch's AdamW documentation names (CPU and CUDA are what the recipes use)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return set(_get_fused_kernels_supported_devices())
    except ImportError:  # pragma: no cover - depends on the torch release
        return {"cpu", "cuda", "mps", "xpu"}


def warmup_cosine(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, trainer: Any = None) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry for ``cfg``: linear warm-up over ``cfg.warmup_steps``, then a cosine from
    ``lr`` to ``cfg.min_lr_ratio * lr`` at the trainer's last step, stepped every optimizer step."""
    total = max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1
    warmup = min(cfg.warmup_steps, max(total - 1, 0))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda), "interval": "step"}


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, lr_scale: dict[str, float] | None = None
) -> list[dict]:
    """AdamW parameter groups of ``model``'s trainable parameters: (decay, no-decay) per learning-rate scale.

    No weight decay on norms, biases and embeddings (1-D tensors and embedding tables). ``lr_scale`` maps name
    prefixes to multipliers of ``lr`` (longest prefix wins); unscaled parameters come first, so without ``lr_scale``
    the groups are exactly [decay, no-decay].
    """
    lr_scale = dict(lr_scale or {})
    for prefix, scale in lr_scale.items():
        if scale < 0:
            raise ValueError(f"optimizer.lr_scale[{prefix!r}] must be >= 0, got {scale}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    all_names = [n for n, _ in model.named_parameters()]
    unmatched = [k for k in lr_scale if not any(n == k or n.startswith(k + ".") for n in all_names)]
    if unmatched:
        raise ValueError(f"optimizer.lr_scale prefixes {unmatched} match no parameter of the model")

    def scale_of(name: str) -> float:
        hits = [k for k in lr_scale if name == k or name.startswith(k + ".")]
        return lr_scale[max(hits, key=len)] if hits else 1.0

    groups: dict[tuple[float, bool], list] = {}
    for name, p in named:
        groups.setdefault((scale_of(name), no_weight_decay(name, p)), []).append(p)
    scales = sorted({s for s, _ in groups}, key=lambda s: (s != 1.0, s))  # scale 1 first
    out = []
    for scale in scales:
        for no_decay in (False, True):
            if (scale, no_decay) in groups:
                out.append(
                    {
                        "params": groups[(scale, no_decay)],
                        "weight_decay": 0.0 if no_decay else weight_decay,
                        "lr": lr * scale,
                    }
                )
    return out


class OmniTask(L.LightningModule):
    """Base task: an ``OmniModel`` trained with teacher forcing, evaluated by generation.

    Encoders are injected (``class_path`` / ``init_args`` in YAML); fusion, decoder, optimiser and generation settings
    are plain dataclasses so a config file spells out every knob.
    """

    task: str = ""
    #: metric that ModelCheckpoint should monitor, and whether higher is better
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    @staticmethod
    def default_generation() -> GenerationConfig:
        """Decoding used when the config gives no ``generation`` (a task may override it)."""
        return GenerationConfig()

    def __init__(
        self,
        image_encoder: Encoder | None = None,
        audio_encoder: Encoder | None = None,
        text_encoder: Encoder | None = None,
        fusion: FusionConfig | None = None,
        decoder: MoEDecoderConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        generation: GenerationConfig | None = None,
        eval_generate: bool = True,
        init_from: str | None = None,
        freeze: list[str] | None = None,
        lora: LoRAConfig | None = None,
        init_skip: list[str] | None = None,
        speech_ctc: SpeechCTCConfig | None = None,
        distill: DistillConfig | None = None,
    ) -> None:
        super().__init__()
        self.model = OmniModel(image_encoder, audio_encoder, text_encoder, fusion=fusion, decoder=decoder)
        # Fine-tuning (tasks/finetune.py): load matching weights of another run, add LoRA adapters, freeze groups.
        self.init_report = setup_finetuning(
            self.model, init_from=init_from, freeze=freeze, lora=lora, init_skip=init_skip
        )
        # Training-only auxiliary loss: the audio encoder's tokens spell the record's transcript (tasks/speech_ctc.py).
        self.speech_ctc = None
        if speech_ctc is not None:
            if "audio" not in self.model.encoders:
                raise ValueError("speech_ctc needs an audio_encoder (it is a loss on the audio encoder's tokens)")
            self.speech_ctc = SpeechCTCHead(self.model.encoders["audio"].out_dim, speech_ctc)
            if self.init_report is not None:  # the head lives outside self.model: load_matching_weights skips it
                audio = [k for k in self.model.state_dict() if k.startswith("encoders.audio.")]
                loaded = set(self.init_report.loaded)
                audio_loaded = bool(audio) and all(k in loaded for k in audio)
                print(init_head_from(self.speech_ctc, init_from, audio_encoder_loaded=audio_loaded), flush=True)
            if not any(p.requires_grad for p in self.model.encoders["audio"].parameters()):
                rank_zero_warn(
                    "speech_ctc is set but the audio encoder is frozen: the CTC loss can only train its head"
                )
        self.optimizer_config = optimizer or OptimizerConfig()
        # Distillation: the teacher is loaded on first use (fit start), never at construction, so a distilled
        # student's checkpoint tests, predicts and exports without its teacher's file.
        self.distill_config = DistillConfig(**distill) if isinstance(distill, dict) else distill
        self._teacher: list[OmniModel] = []  # a list: an nn.Module attribute would join the student's state
        adamw_kernel([], self.optimizer_config)  # an unknown implementation fails here, not at the first step
        self.generation_config = generation or self.default_generation()
        self.eval_generate = eval_generate
        self.save_hyperparameters(ignore=["image_encoder", "audio_encoder", "text_encoder"])
        # Store encoders as specs (never as pickled modules) so load_from_checkpoint can rebuild them.
        for m in MODALITIES:
            enc = self.model.encoders[m] if m in self.model.encoders else None  # noqa: SIM401 (ModuleDict has no .get)
            self.hparams[f"{m}_encoder"] = enc.spec if enc is not None else None
        self.reset_metrics()

    # ------------------------------------------------------------------ per-task parts (overridden)

    def reset_metrics(self) -> None:
        """Clear the accumulated evaluation state."""

    def update_metrics(self, predictions: list[str], batch: MultimodalBatch) -> None:
        """Accumulate one batch of generated texts against ``batch.targets``."""

    def compute_metrics(self) -> dict[str, float]:
        """Metrics over everything accumulated since ``reset_metrics``."""
        return {}

    def generation_kwargs(self, batch: MultimodalBatch) -> dict[str, Any]:
        """Keyword arguments for ``OmniModel.generate`` (strategy, JSON Schema logits mask...)."""
        return generation_kwargs(self.generation_config, batch, self.model.tokenizer)

    # ------------------------------------------------------------------ training

    def teacher(self) -> OmniModel:
        """The distillation teacher (``distill.teacher``), loaded once, frozen, in eval mode, on this task's device.
        Held outside the module tree, so it is in no checkpoint, export, optimizer or ``.train()`` call."""
        if not self._teacher:
            teacher = OmniModel.from_pretrained(self.distill_config.teacher).eval()
            teacher.requires_grad_(False)
            self._teacher.append(teacher)
        teacher = self._teacher[0]
        if next(teacher.parameters()).device != self.device:
            teacher.to(self.device)
        return teacher

    def _losses(self, batch: MultimodalBatch, auxiliary: bool = True) -> tuple[dict[str, torch.Tensor], Any, Any]:
        """Training losses; ``auxiliary=False`` (evaluation) leaves out the training-only ``speech_ctc`` and
        ``distill`` terms, so ``val/loss`` compares across runs with and without them."""
        sequences = self.model.encode_modalities(batch)
        output, memory = self.model(batch, sequences)
        labels = batch.target_ids[:, 1:].masked_fill(~batch.target_mask[:, 1:], IGNORE_INDEX)  # (B, T-1)
        ce = F.cross_entropy(at_least_fp32(output.logits.flatten(0, 1)), labels.flatten(), ignore_index=IGNORE_INDEX)
        losses = {"ce": ce, "router": output.router_loss}
        if output.mtp_logits is not None and labels.shape[1] > 1:
            # MTP position t predicts token t+2, i.e. labels[:, t+1].
            mtp = F.cross_entropy(
                at_least_fp32(output.mtp_logits[:, :-1].flatten(0, 1)), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
            losses["mtp"] = self.model.decoder_config.mtp_loss_coef * mtp
        if output.exit_logits and self.model.decoder_config.exit_loss_coef > 0:
            # Early exit: each exit layer learns to predict the next token through the shared head.
            exit_ce = torch.stack([
                F.cross_entropy(at_least_fp32(e.flatten(0, 1)), labels.flatten(), ignore_index=IGNORE_INDEX)
                for e in output.exit_logits
            ]).mean()  # fmt: skip
            losses["exit"] = self.model.decoder_config.exit_loss_coef * exit_ce
        if auxiliary and self.speech_ctc is not None and "audio" in sequences:
            ctc = self.speech_ctc(sequences["audio"], batch)
            if ctc is not None:
                losses["ctc"] = self.speech_ctc.config.weight * ctc
        if auxiliary and self.distill_config is not None and self.distill_config.weight > 0:
            teacher = self.teacher()
            with torch.no_grad():
                teacher_output, _ = teacher(batch, teacher.encode_modalities(batch))
            kd = distillation_loss(output.logits, teacher_output.logits, labels, self.distill_config.temperature)
            losses["distill"] = self.distill_config.weight * kd
        losses["loss"] = sum(losses.values())
        return losses, output, memory

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
        losses, output, memory = self._losses(batch)
        bs = len(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        for name in ("ce", "router", "mtp", "ctc", "distill", "exit"):
            if name in losses:
                self.log(f"train/{name}", losses[name], batch_size=bs)
        for i, stats in enumerate(output.router_stats):
            self.log(f"router/layer{i}_max_over_mean", float(stats.max_over_mean), batch_size=bs)
            if stats.experts_per_token is not None:  # adaptive routing (decoder.top_p)
                self.log(f"router/layer{i}_experts_per_token", float(stats.experts_per_token), batch_size=bs)
        self._log_modality_weights("train", memory.modality_weights, batch, bs)
        return losses["loss"]

    def _log_modality_weights(self, stage: str, weights: torch.Tensor, batch: MultimodalBatch, bs: int) -> None:
        # Mean weight per modality over the samples that have it (an absent modality has weight 0 by construction).
        for m, name in enumerate(MODALITIES):
            has = batch.present[:, m]
            if has.any():
                self.log(f"{stage}/weight_{name}", weights[has, m].float().mean(), batch_size=int(has.sum()))

    def on_fit_start(self) -> None:
        if self.distill_config is not None and self.distill_config.weight > 0:
            self.teacher()  # a missing or unsafe teacher fails now, not at the first step
        # Adam's second-moment estimates decay into denormal floats, which x86 CPUs process ~100x slower: measured,
        # the optimizer step was over half of each easy-VQA training step until denormals were flushed to zero.
        # The flag is process state (it also changes Python float arithmetic), so it is held only while fitting.
        torch.set_flush_denormal(True)

    def on_fit_end(self) -> None:
        torch.set_flush_denormal(False)

    def setup(self, stage: str) -> None:
        # Plain `ddp`: a batch without some modality leaves its encoder/projection unused -> find_unused_parameters.
        enable_ddp_unused_parameters(self._trainer)
        # Before the first step: a train / val / test record whose only inputs the model cannot read fails (or is
        # skipped with data.skip_bad_records) now, instead of being learned or scored from no input at all.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if stage in ("fit", "validate", "test") and hasattr(datamodule, "check_inputs"):
            datamodule.check_inputs(self.model.encoders.keys())

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # DeepSeek-V3 auxiliary-loss-free balancing: nudge the routing biases once per optimizer step.
        self.model.decoder.update_router_biases()

    def configure_optimizers(self):
        cfg = self.optimizer_config
        groups = parameter_groups(self.model, cfg.weight_decay, cfg.lr, cfg.lr_scale)
        if self.speech_ctc is not None:  # after the model's groups: FinetuneSchedule reads group 0's settings
            groups += parameter_groups(self.speech_ctc, cfg.weight_decay, cfg.lr)
        trainer = self._trainer
        clips_mixed = (
            trainer is not None
            and "mixed" in str(trainer.precision)
            and bool(trainer.gradient_clip_val)
            and float(trainer.gradient_clip_val) > 0
        )
        kernel = adamw_kernel(groups, cfg, clips_mixed_precision=clips_mixed)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kernel)
        return {"optimizer": optimizer, "lr_scheduler": warmup_cosine(optimizer, cfg, self._trainer)}

    # ------------------------------------------------------------------ evaluation

    def _eval_step(self, stage: str, batch: MultimodalBatch) -> None:
        if len(batch) == 0:
            return
        losses, _, memory = self._losses(batch, auxiliary=False)
        self.log(f"{stage}/loss", losses["loss"], prog_bar=stage == "val", batch_size=len(batch), sync_dist=True)
        self._log_modality_weights(stage, memory.modality_weights, batch, len(batch))
        if self.eval_generate:
            generation = self.generate(batch, memory)  # the loss's memory: the encoders run once per batch
            self.update_metrics(generation.texts, batch)

    def _eval_epoch_end(self, stage: str) -> None:
        if self.eval_generate:
            for name, value in self.compute_metrics().items():
                self.log(f"{stage}/{name}", value, prog_bar=stage == "val", sync_dist=True)
        self.reset_metrics()

    def on_validation_epoch_start(self) -> None:
        self.reset_metrics()

    def validation_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.reset_metrics()

    def test_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ inference

    def generate(self, batch: MultimodalBatch, memory: FusedMemory | None = None) -> Generation:
        return self.model.generate(batch, memory=memory, **self.generation_kwargs(batch))

    def predict_step(self, batch: MultimodalBatch, batch_idx: int) -> dict[str, list[dict]]:
        """Predictions for the good records and (id, reason) for the bad ones; the writer persists both."""
        return predict_batch(self.model, batch, self.generation_config)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lets OmniModel.from_pretrained(<file>.ckpt) rebuild the architecture without the training config.
        checkpoint["omnifuse_model_config"] = self.model.config()
        # The global RNGs (torch, CUDA, numpy, random) drive dropout and modality dropout; a run resumed from this
        # checkpoint continues with the same draws as an uninterrupted one (the data order has its own seeds).
        checkpoint["omnifuse_rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The speech_ctc head is training-only: a checkpoint may be tested, or used to predict, with or without it.
        state = checkpoint.get("state_dict", {})
        head = [k for k in state if k.startswith("speech_ctc.")]
        if self.speech_ctc is None:
            for key in head:
                del state[key]
        elif not head:
            rank_zero_warn("the checkpoint has no speech_ctc head; it starts from its fresh initialisation")
            state.update({f"speech_ctc.{k}": v for k, v in self.speech_ctc.state_dict().items()})
        if "omnifuse_rng_states" in checkpoint and self._trainer is not None and self.trainer.state.fn == "fit":
            set_rng_states(checkpoint["omnifuse_rng_states"])
