"""Inference: turn a batch into prediction rows and error rows.

``predict_batch`` is the one implementation of "what a prediction looks like"; ``OmniTask.predict_step`` (``omnifuse
predict``) and ``omnifuse.app.predictor.Predictor`` (Python) both call it.
"""

from __future__ import annotations

import json
from typing import Any

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.tasks.config import GenerationConfig
from omnifuse.tasks.model import OmniModel


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
        )
    return kwargs


def drop_unusable_schemas(batch: MultimodalBatch, max_new_tokens: int) -> tuple[MultimodalBatch, list[dict]]:
    """Rows whose schema cannot be enforced become errors, not crashes: an unsupported keyword, an invalid schema, a
    schema no instance satisfies, or one whose shortest instance does not fit in ``max_new_tokens``."""
    if not any(schema is not None for schema in batch.schemas):
        return batch, []
    from omnifuse.schema import SchemaError, compile_schema

    keep, errors = [], []
    for row, schema in enumerate(batch.schemas):
        try:
            if schema is not None:
                compile_schema(schema).check_generation(max_new_tokens)
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


def predict_batch(model: OmniModel, batch: MultimodalBatch, config: GenerationConfig) -> dict[str, list[dict]]:
    """Predictions for the good rows of ``batch`` and ``{"id", "error"}`` rows for the bad ones."""
    errors = [{"id": rid, "error": reason} for rid, reason in batch.failed]
    batch, schema_errors = drop_unusable_schemas(batch, config.max_new_tokens)
    errors += schema_errors
    predictions: list[dict] = []
    if len(batch) == 0:
        return {"predictions": predictions, "errors": errors}
    generation = model.generate(batch, **generation_kwargs(config, batch, model.tokenizer))
    weights = generation.modality_weights.float().cpu()
    counts = generation.expert_counts.cpu()
    present = batch.present.cpu()
    for row, rid in enumerate(batch.ids):
        predictions.append(
            {
                "id": rid,
                "task": batch.tasks[row],
                "prediction": format_prediction(batch.tasks[row], generation.texts[row]),
                "modality_weights": {m: round(float(weights[row, i]), 6) for i, m in enumerate(MODALITIES) if present[row, i]},
                # Per MoE layer: {expert index: number of generated tokens it processed}.
                "experts": [{str(e): int(c) for e, c in enumerate(layer.tolist()) if c} for layer in counts[row]],
            }
        )
    return {"predictions": predictions, "errors": errors}
