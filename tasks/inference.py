"""Inference: turn a batch into prediction rows and error rows.

``predict_batch`` is the one implementation of "what a prediction looks like"; ``OmniTask.predict_step`` (``omnifuse
predict``) and ``omnifuse.app.predictor.Predictor`` (Python) both call it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.fusion.embedding import TooManyTokensError
from omnifuse.moe_core.attention import SequenceTooLongError
from omnifuse.tasks.config import GenerationConfig
from omnifuse.tasks.model import OmniModel


def read_schema_resources(files: dict[str, str]) -> dict[str, Any]:
    """{URI: local file} -> {URI: schema document}, each set of files read once (``generation.schema_resources``)."""
    return _read_resources(tuple(sorted(files.items()))) if files else {}


@functools.cache
def _read_resources(files: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out = {}
    for uri, path in files:
        try:
            out[uri] = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"generation.schema_resources[{uri!r}]: file not found: {path}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"generation.schema_resources[{uri!r}]: {path} is not a JSON document ({e})") from None
    return out


def schema_resources(config: GenerationConfig) -> dict[str, Any]:
    """The schema documents of ``config.schema_resources``, read once per set of files: {URI: document}."""
    return read_schema_resources(config.schema_resources)


def generation_kwargs(config: GenerationConfig, batch: MultimodalBatch, tokenizer: ByteTokenizer) -> dict[str, Any]:
    """Keyword arguments for ``OmniModel.generate``; rows that carry a JSON Schema are decoded under it."""
    kwargs: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "strategy": config.strategy}
    if config.strategy == "beam":
        kwargs.update(num_beams=config.num_beams, length_penalty=config.length_penalty)
    elif config.strategy == "sample":
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
    if any(schema is not None for schema in batch.schemas):
        from omnifuse.schema import JsonSchemaLogitsProcessor

        kwargs["logits_processor"] = JsonSchemaLogitsProcessor(
            schemas=list(batch.schemas),
            token_bytes=tokenizer.token_bytes,
            vocab_size=tokenizer.vocab_size,
            eos_id=tokenizer.eos_id,
            max_new_tokens=config.max_new_tokens,
            prompt_len=None,  # taken from the prompt width on the first call
            num_beams=config.num_beams if config.strategy == "beam" else 1,
            pad_id=tokenizer.pad_id,
            resources=schema_resources(config),
        )
    return kwargs


def drop_unusable_schemas(
    batch: MultimodalBatch, max_new_tokens: int, resources: dict | None = None
) -> tuple[MultimodalBatch, list[dict]]:
    """Rows whose schema cannot be enforced become errors, not crashes: an unsupported keyword, an invalid schema, a
    schema no instance satisfies, or one whose shortest instance does not fit in ``max_new_tokens``."""
    if not any(schema is not None for schema in batch.schemas):
        return batch, []
    from omnifuse.schema import SchemaError, compile_schema

    keep, errors = [], []
    for row, schema in enumerate(batch.schemas):
        try:
            if schema is not None:
                compile_schema(schema, resources=resources).check_generation(max_new_tokens)
            keep.append(row)
        except SchemaError as err:
            errors.append({"id": batch.ids[row], "error": f"record {batch.ids[row]!r}: field 'schema': {err}"})
    return (batch if len(keep) == len(batch) else batch.select(keep)), errors


def format_prediction(task: str, text: str) -> Any:
    """The value written for a prediction: parsed JSON for ``json`` records (the text itself if it does not parse)."""
    if task == "json":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def drop_unreadable_rows(model: OmniModel, batch: MultimodalBatch) -> tuple[MultimodalBatch, list[dict]]:
    """Rows with no input the model has an encoder for become errors: a prediction would come from no input at all
    (the decoder's prior). The error names the modalities the record has and those the model reads."""
    readable = model.has_encoder.cpu()  # (M,)
    present = batch.present.cpu()  # (B, M)
    usable = (present & readable).any(dim=1)  # (B,)
    if bool(usable.all()):
        return batch, []
    reads = ", ".join(m for i, m in enumerate(MODALITIES) if readable[i])
    keep, errors = [], []
    for row, rid in enumerate(batch.ids):
        if usable[row]:
            keep.append(row)
            continue
        has = [m for i, m in enumerate(MODALITIES) if present[row, i]] or ["no input"]
        errors.append(
            {
                "id": rid,
                "error": f"record {rid!r}: field {has[0]!r}: the model has no encoder for {' or '.join(has)}, and the "
                f"record has no other input (the model reads {reads}); nothing to predict from",
            }
        )
    return batch.select(keep), errors


def ignored_modalities(model: OmniModel, batch: MultimodalBatch) -> list[list[str]]:
    """Per row, the modalities it has that the model has no encoder for (they play no part in its prediction)."""
    readable = model.has_encoder.cpu().tolist()
    return [
        [m for m, has, reads in zip(MODALITIES, row, readable, strict=True) if has and not reads]
        for row in batch.present.cpu().tolist()
    ]


def _without_padding(batch: MultimodalBatch) -> MultimodalBatch:
    """``batch`` with the audio and text tensors cut to their longest real length (padding is masked everywhere, so
    predictions do not change): a row taken out of a batch no longer carries the width of the batch's longest clip."""
    for data, mask in (("audio", "audio_mask"), ("text", "text_mask")):
        m = getattr(batch, mask)
        if m is None or not bool(m.any()):
            continue
        width = int(m.nonzero()[:, 1].max()) + 1  # right padding: the last real column + 1
        setattr(batch, data, getattr(batch, data)[:, :width])
        setattr(batch, mask, m[:, :width])
    return batch


@torch.no_grad()
def record_losses(model: OmniModel, batch: MultimodalBatch, memory) -> list[float | None]:
    """Each row's teacher-forced cross-entropy on its target, averaged over the target's tokens (None: no target)."""
    out = model.decoder(batch.target_ids[:, :-1], memory.tokens, memory.mask, attention_mask=batch.target_mask[:, :-1])
    labels = batch.target_ids[:, 1:].masked_fill(~batch.target_mask[:, 1:], -100)  # (B, T-1); -100: not a target
    ce = F.cross_entropy(out.logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (B, T-1)
    counts = (labels != -100).sum(dim=1)  # (B,)
    totals = ce.sum(dim=1)
    return [float(t / c) if c > 0 else None for t, c in zip(totals.tolist(), counts.tolist(), strict=True)]


def predict_batch(model: OmniModel, batch: MultimodalBatch, config: GenerationConfig) -> dict[str, list[dict]]:
    """Predictions for the good rows of ``batch`` and ``{"id", "error"}`` rows for the bad ones.

    A row with no input the model can read is an error; a row with some is predicted from those, and its prediction
    lists the others under ``ignored_modalities``."""
    errors = [{"id": rid, "error": reason} for rid, reason in batch.failed]
    batch, unreadable = drop_unreadable_rows(model, batch)
    errors += unreadable
    batch, schema_errors = drop_unusable_schemas(batch, config.max_new_tokens, schema_resources(config))
    errors += schema_errors
    predictions: list[dict] = []
    if len(batch) == 0:
        return {"predictions": predictions, "errors": errors}
    try:
        memory = model.encode(batch)  # once, for the generation and (with_loss) the teacher-forced loss
        generation = model.generate(batch, memory=memory, **generation_kwargs(config, batch, model.tokenizer))
        losses = record_losses(model, batch, memory) if config.with_loss and batch.target_ids is not None else None
    except (TooManyTokensError, SequenceTooLongError) as e:
        # A record the model cannot take (a clip with more tokens than the fusion has positions, a sequence past the
        # decoder's length). One by one, so the others are still predicted; any other error still stops the job.
        if len(batch) == 1:
            return {"predictions": [], "errors": [*errors, {"id": batch.ids[0], "error": f"record {batch.ids[0]!r}: "
                                                          f"the model cannot take this record: {e}"}]}  # fmt: skip
        for row in range(len(batch)):
            one = predict_batch(model, _without_padding(batch.select([row])), config)
            predictions += one["predictions"]
            errors += one["errors"]
        return {"predictions": predictions, "errors": errors}
    weights = generation.modality_weights.float().cpu()
    counts = generation.expert_counts.cpu()
    token_ids = generation.tokens.cpu().tolist()
    routes = generation.token_experts.cpu().tolist() if generation.token_experts is not None else None
    lengths = generation.lengths.cpu().tolist() if generation.lengths is not None else None
    present = batch.present.cpu() & model.has_encoder.cpu()  # (B, M): the inputs the prediction was made from
    ignored = ignored_modalities(model, batch)
    for row, rid in enumerate(batch.ids):
        prediction = {
            "id": rid,
            "task": batch.tasks[row],
            "prediction": format_prediction(batch.tasks[row], generation.texts[row]),
            "modality_weights": {
                m: round(float(weights[row, i]), 6) for i, m in enumerate(MODALITIES) if present[row, i]
            },
            # Per MoE layer: {expert index: number of generated tokens it processed}.
            "experts": [{str(e): int(c) for e, c in enumerate(layer.tolist()) if c} for layer in counts[row]],
        }
        if routes is not None and lengths is not None:
            # Per generated token (eos included): its label and, per MoE layer, the experts that produced it.
            n = lengths[row]
            prediction["token_experts"] = [
                {"token": model.tokenizer.token_label(tok), "experts": [[e for e in ids if e >= 0] for ids in layers]}
                for tok, layers in zip(token_ids[row][:n], routes[row][:n], strict=True)
            ]  # (an unused slot of adaptive routing, -1, is left out)
        if losses is not None and losses[row] is not None:
            prediction["loss"] = round(losses[row], 6)
        if ignored[row]:
            prediction["ignored_modalities"] = ignored[row]  # the record has them, the model has no encoder for them
        predictions.append(prediction)
    return {"predictions": predictions, "errors": errors}
