"""OmniModel: encoders + fusion + MoE decoder, with safetensors save/load and generation.

This is the one place where the packages meet: ``data`` types in, ``encoders`` -> ``fusion`` -> ``moe_core`` out.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.encoders.base import Encoder, FilmParams, TokenSequence
from omnifuse.finetune.format import CONFIG_NAME, WEIGHTS_NAME
from omnifuse.finetune.safe_load import load_checkpoint
from omnifuse.fusion import FusedMemory, ModalityFusion
from omnifuse.moe_core import DecoderOutput, MoEDecoder, MoEDecoderConfig

FORMAT_VERSION = 1


@dataclass
class FusionConfig:
    """Hyper-parameters of the fusion layer; its width and input dims come from the decoder and encoders."""

    n_layers: int = 2
    n_heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0
    modality_dropout: float = 0.0
    gate_floor: float = 0.5
    film: bool = False
    # Question-conditioned vision: FiLM parameters for the image encoder's stages computed from the question's tokens
    # (text or audio, per sample; fusion.QuestionFilm); the image is encoded after the question, conditioned on it.
    vision_film: bool = False
    vision_film_hidden: int = 256
    vision_film_residual: bool = True  # scale = 1 + gamma from zero (True) or gamma from a random start (False)
    vision_film_depth: int = 1  # hidden layers of the FiLM head; 0: FiLM parameters linear in the pooled question
    # With vision_film: False leaves the question's tokens out of the decoder's memory for samples with an image, so
    # the answer is read from the question-shaped image features (ModalityFusion.question_memory).
    question_memory: bool = True
    # Modalities whose tokens skip the fusion's LayerNorms (ModalityFusion.raw_modalities), e.g. [image] for a
    # question-conditioned image whose pooled features say "yes" by their size.
    raw_modalities: tuple[str, ...] = ()
    # Long inputs: a modality's tokens attend to their own modality only within this many positions (plus the null
    # token), and no (N, N) mask is built (ModalityFusion.attention_window). None: full attention.
    attention_window: int | None = None
    # Positions the fusion embeds per modality (learned position embeddings): a long clip's tokens need more.
    max_positions: int = 1024


@dataclass
class Generation:
    """What ``OmniModel.generate`` returns for a batch."""

    texts: list[str]
    tokens: torch.Tensor  # (B, L) generated ids after the task token, right-padded
    modality_weights: torch.Tensor  # (B, M)
    expert_counts: torch.Tensor  # (B, n_moe_layers, E)
    token_experts: torch.Tensor | None = None  # (B, L, n_moe_layers, top_k): each generated token's experts, -1 past
    lengths: torch.Tensor | None = None  # (B,) generated tokens per sample, eos included where emitted


def encode_distinct_images(encoder: nn.Module, images: torch.Tensor, film: FilmParams | None = None) -> TokenSequence:
    """``encoder(images)`` computed once per distinct image of the batch (B, 3, H, W), rows copied back in place.

    VQA manifests ask several questions per image (easy-VQA ~10, VQA v2 ~5); batch inference over them, and training
    with ``data.group_by: image``, see the same image many times in a batch. Duplicates are found by exact content,
    so nothing depends on file names, and the gradients of all copies add up in the one encoding. A batch without
    duplicates runs exactly as before. In training, copies share one dropout mask, and BatchNorm statistics count
    each distinct image once.

    With ``film`` (question-conditioned vision) each row's encoding depends on its own question, so every row is
    encoded: no deduplication.
    """
    if film is not None:
        return encoder(images, film=film)
    flat = images.flatten(1)  # (B, 3*H*W)
    # Rows whose first values already differ are different images: most batches end here, without the full sort.
    if torch.unique(flat[:, :256], dim=0).shape[0] == images.shape[0]:
        return encoder(images)
    distinct, inverse = torch.unique(flat, dim=0, return_inverse=True)  # (U, 3*H*W), (B,)
    if distinct.shape[0] == images.shape[0]:
        return encoder(images)
    sequence = encoder(distinct.view(-1, *images.shape[1:]))  # (U, N, D)
    return TokenSequence(sequence.tokens[inverse], sequence.mask[inverse])  # (B, N, D), (B, N)


def build_module(spec: dict[str, Any]) -> nn.Module:
    """Instantiate ``{"class_path": "pkg.mod.Class", "init_args": {...}}`` (the LightningCLI spec shape)."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"a module spec needs a 'class_path' (and optional 'init_args'); got {spec!r}")
    module_name, _, class_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import class_path {spec['class_path']!r}: {err}") from None
    return cls(**spec.get("init_args", {}))


def _as_encoder(value: Encoder | dict | None, modality: str) -> Encoder | None:
    if value is None:
        return None
    encoder = build_module(value) if isinstance(value, dict) else value
    if getattr(encoder, "modality", None) != modality:
        raise ValueError(
            f"{modality}_encoder must encode {modality!r}, got {type(encoder).__name__} "
            f"(modality={getattr(encoder, 'modality', None)!r})"
        )
    return encoder


def _as_dataclass(value, cls):
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)
    return value


class OmniModel(nn.Module):
    """Image/audio/text encoders -> cross-modal fusion with per-sample modality weights -> shared MoE decoder.

    Any encoder may be ``None``; a sample whose modality has no encoder is treated as not having that modality.
    """

    def __init__(
        self,
        image_encoder: Encoder | dict | None = None,
        audio_encoder: Encoder | dict | None = None,
        text_encoder: Encoder | dict | None = None,
        fusion: FusionConfig | dict | None = None,
        decoder: MoEDecoderConfig | dict | None = None,
    ) -> None:
        super().__init__()
        given = {
            "image": _as_encoder(image_encoder, "image"),
            "audio": _as_encoder(audio_encoder, "audio"),
            "text": _as_encoder(text_encoder, "text"),
        }
        self.encoders = nn.ModuleDict({m: enc for m, enc in given.items() if enc is not None})
        if not self.encoders:
            raise ValueError("OmniModel needs at least one encoder (image_encoder, audio_encoder or text_encoder)")
        self.fusion_config = _as_dataclass(fusion, FusionConfig)
        self.decoder_config = _as_dataclass(decoder, MoEDecoderConfig)
        self.tokenizer = ByteTokenizer()
        self.quantization: str | None = None  # "int8" once tasks/quantize.py has quantized it (inference only)
        if self.decoder_config.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"decoder.vocab_size={self.decoder_config.vocab_size} does not match the tokenizer's "
                f"{self.tokenizer.vocab_size}"
            )
        d_memory = self.decoder_config.d_memory or self.decoder_config.d_model
        self.fusion = ModalityFusion(
            d_model=d_memory,
            in_dims={m: enc.out_dim for m, enc in self.encoders.items()},
            modalities=MODALITIES,
            vision_film_channels=self._vision_film_channels(),
            **asdict(self.fusion_config),
        )
        self.decoder = MoEDecoder(self.decoder_config)
        # Which modality columns this model can see at all: (M,) bool buffer, not a parameter.
        self.register_buffer(
            "has_encoder", torch.tensor([m in self.encoders for m in MODALITIES], dtype=torch.bool), persistent=False
        )

    def _vision_film_channels(self) -> tuple[int, ...]:
        """The image encoder's ``film_channels`` when ``fusion.vision_film`` is on (checked), else ()."""
        if not self.fusion_config.vision_film:
            return ()
        image = self.encoders["image"] if "image" in self.encoders else None  # noqa: SIM401 (ModuleDict has no .get)
        if image is None or not getattr(image, "film_channels", ()):
            raise ValueError(
                "fusion.vision_film needs an image encoder that accepts FiLM (non-empty film_channels: "
                f"timm_image CNNs, conv_image); got {type(image).__name__ if image is not None else None}"
            )
        if not any(m in self.encoders for m in ("text", "audio")):
            raise ValueError("fusion.vision_film needs a question encoder (text_encoder or audio_encoder)")
        return tuple(image.film_channels)

    # ------------------------------------------------------------------ forward

    def encode_modalities(self, batch: MultimodalBatch) -> dict[str, TokenSequence]:
        """Each present modality's encoder output, before fusion.

        With ``fusion.vision_film`` the question modalities are encoded first and the image encoder runs conditioned
        on them (per-sample FiLM from ``fusion.vision_conditioning``; samples without a question: none)."""
        sequences = {}
        # Image last: with vision_film its encoding depends on the question's tokens.
        for modality in sorted(self.encoders, key=lambda m: m == "image"):
            encoder = self.encoders[modality]
            if not batch.has(modality):
                continue
            if modality == "image":
                film = self.fusion.vision_conditioning(sequences, batch.present & self.has_encoder)
                sequences[modality] = encode_distinct_images(encoder, batch.image, film)
            elif modality == "audio":
                sequences[modality] = encoder(batch.audio, batch.audio_mask)
            else:
                sequences[modality] = encoder(batch.text, batch.text_mask)
        return sequences

    def encode(self, batch: MultimodalBatch, sequences: dict[str, TokenSequence] | None = None) -> FusedMemory:
        """Run the encoders of the modalities present in the batch (unless ``sequences`` are given) and fuse them."""
        if sequences is None:
            sequences = self.encode_modalities(batch)
        present = batch.present & self.has_encoder  # (B, M)
        return self.fusion(sequences, present)

    def forward(
        self, batch: MultimodalBatch, sequences: dict[str, TokenSequence] | None = None
    ) -> tuple[DecoderOutput, FusedMemory]:
        """Teacher-forced pass: the decoder reads ``target_ids[:, :-1]`` and predicts ``target_ids[:, 1:]``.

        ``sequences``: encoder outputs already computed with ``encode_modalities`` (a task that also puts a loss on
        an encoder's output passes them, so the encoders run once)."""
        if batch.target_ids is None:
            raise ValueError(f"batch {batch.ids[:3]}... has no targets; use generate() for inference")
        memory = self.encode(batch, sequences)
        output = self.decoder(
            batch.target_ids[:, :-1], memory.tokens, memory.mask, attention_mask=batch.target_mask[:, :-1]
        )
        return output, memory

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def generate(
        self,
        batch: MultimodalBatch,
        max_new_tokens: int = 32,
        strategy: str = "greedy",
        logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        memory: FusedMemory | None = None,
        **kwargs,
    ) -> Generation:
        """Generate each sample's answer, starting from its task token; stops per sequence at ``<eos>``.

        ``memory``: the batch's fused memory when the caller already has it (evaluation computes it for the loss, and
        encoding is most of an evaluation step's time); otherwise the batch is encoded here."""
        if memory is None:
            memory = self.encode(batch)
        prompt = torch.tensor([[self.tokenizer.task_id(t)] for t in batch.tasks], device=memory.tokens.device)
        out = self.decoder.generate(
            memory.tokens,
            memory.mask,
            prompt,
            max_new_tokens=max_new_tokens,
            eos_id=self.tokenizer.eos_id,
            strategy=strategy,
            logits_processor=logits_processor,
            **kwargs,
        )
        return Generation(
            texts=self.tokenizer.decode_batch(out.tokens),
            tokens=out.tokens,
            modality_weights=memory.modality_weights,
            expert_counts=out.expert_counts,
            token_experts=out.token_experts,
            lengths=out.lengths,
        )

    # ------------------------------------------------------------------ persistence

    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description from which ``from_config`` rebuilds this architecture."""
        out = {
            "format_version": FORMAT_VERSION,
            **{f"{m}_encoder": (self.encoders[m].spec if m in self.encoders else None) for m in MODALITIES},
            "fusion": asdict(self.fusion_config),
            "decoder": asdict(self.decoder_config),
        }
        if getattr(self, "quantization", None):
            out["quantization"] = self.quantization  # tasks/quantize.py: the weights are stored quantized
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OmniModel:
        config = dict(config)
        config.pop("format_version", None)
        quantization = config.pop("quantization", None)
        if quantization is not None:
            from omnifuse.tasks.quantize import QUANTIZATIONS, quantize_int8

            if quantization not in QUANTIZATIONS:
                raise ValueError(f"unknown quantization {quantization!r} in the model config; known: {QUANTIZATIONS}")
            return quantize_int8(cls.from_config(config).eval())  # the quantized structure; weights loaded next
        for m in MODALITIES:
            spec = config.get(f"{m}_encoder")
            if spec is not None and "pretrained" in spec.get("init_args", {}):
                # Weights come from model.safetensors; do not read the original pretrained file again.
                spec = {**spec, "init_args": {**spec["init_args"], "pretrained": False}}
                config[f"{m}_encoder"] = spec
        known = {f.name for f in dataclasses.fields(MoEDecoderConfig)}
        config["decoder"] = {k: v for k, v in config.get("decoder", {}).items() if k in known}
        return cls(**config)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (no pickle) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2, default=str) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.quantization:
            from omnifuse.tasks.quantize import pack_tables

            state = pack_tables(self, state)  # lookup tables as int8 + scales
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "omnifuse": str(FORMAT_VERSION)})
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> OmniModel:
        """Load a ``save_pretrained`` folder, or a Lightning ``.ckpt`` written by an omnifuse task."""
        from omnifuse.finetune.lora import merge_lora_state  # local import: keeps this module free of Lightning

        path = Path(path)
        if path.is_dir():
            config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
            for f in (config_file, weights_file):
                if not f.is_file():
                    raise FileNotFoundError(f"{path} is not an omnifuse model folder: {f.name} is missing")
            model = cls.from_config(json.loads(config_file.read_text()))
            state = load_file(str(weights_file), device=str(map_location))
            if model.quantization:
                from omnifuse.tasks.quantize import unpack_tables

                state = unpack_tables(model, state)
            model.load_state_dict(merge_lora_state(state))
            return model
        if path.suffix == ".ckpt":
            return cls.from_checkpoint(load_checkpoint(path, map_location=map_location), str(path))
        raise FileNotFoundError(f"{path}: expected a save_pretrained folder or a .ckpt file")

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], source: str = "checkpoint") -> OmniModel:
        """The model of an already loaded Lightning checkpoint written by an omnifuse task (``source`` names it in
        errors)."""
        from omnifuse.finetune.lora import merge_lora_state

        config = checkpoint.get("omnifuse_model_config")
        if config is None:
            raise ValueError(f"{source} was not written by an omnifuse task (no 'omnifuse_model_config')")
        model = cls.from_config(config)
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        model.load_state_dict(merge_lora_state(state))  # a LoRA run exports with its adapters merged
        return model
