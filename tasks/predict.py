"""Inference: turn a batch into prediction rows and error rows, from Lightning (``omnifuse predict``) or Python.

``predict_batch`` is the one implementation of "what a prediction looks like"; ``OmniTask.predict_step`` and
``Predictor`` both call it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.records import RecordError, parse_record
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
        from omnifuse.tasks.structured import JsonSchemaLogitsProcessor

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
    from omnifuse.tasks.structured import SchemaError, compile_schema

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


class Predictor:
    """Batch inference from Python.

    >>> predictor = Predictor.from_pretrained("runs/easyvqa/export")            # doctest: +SKIP
    >>> out = predictor.predict([{"id": "q1", "task": "vqa", "image": "a.png", "text": "what shape?"}], root=".")
    >>> out["predictions"][0]["prediction"]                                      # doctest: +SKIP
    'circle'

    Every input id comes back exactly once, in ``predictions`` or in ``errors`` (with the field and the reason).
    """

    def __init__(
        self,
        model: OmniModel,
        generation: GenerationConfig | None = None,
        batch_size: int = 32,
        image_size: int | None = 64,
        sample_rate: int = 16000,
        max_audio_seconds: float | None = 8.0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.generation = generation or GenerationConfig()
        self.batch_size = batch_size
        self.dataset_kwargs = {"image_size": image_size, "sample_rate": sample_rate, "max_audio_seconds": max_audio_seconds}
        self.device = torch.device(device)
        self.collate = Collator(model.tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> Predictor:
        """From a ``save_pretrained`` folder or an omnifuse ``.ckpt``. A ``.ckpt`` also brings the task's decoding
        settings (e.g. the JSON recipe's 160-token budget), unless ``generation`` is given."""
        if Path(path).suffix != ".ckpt":
            return cls(OmniModel.from_pretrained(path), **kwargs)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # read once for model and settings
        saved = (checkpoint.get("hyper_parameters") or {}).get("generation")
        if "generation" not in kwargs and isinstance(saved, (dict, GenerationConfig)):
            kwargs["generation"] = GenerationConfig(**saved) if isinstance(saved, dict) else saved
        return cls(OmniModel.from_checkpoint(checkpoint, str(path)), **kwargs)

    def predict(self, records: str | Path | Iterable[dict], root: str | Path = ".") -> dict[str, list[dict]]:
        """Predict a JSONL manifest (path) or raw record dicts (paths inside resolve against ``root``)."""
        predictions: list[dict] = []
        errors: list[dict] = []
        for out in self.iter_predict(records, root):
            predictions += out["predictions"]
            errors += out["errors"]
        return {"predictions": predictions, "errors": errors}

    def iter_predict(self, records: str | Path | Iterable[dict], root: str | Path = ".") -> Iterator[dict]:
        """Like ``predict``, one batch at a time (for streams larger than memory)."""
        if isinstance(records, (str, Path)):
            dataset = ManifestDataset(records, mode="predict", **self.dataset_kwargs)
        else:
            dataset = ManifestDataset(list(_parse_all(records, Path(root))), mode="predict", **self.dataset_kwargs)
        for start in range(0, len(dataset), self.batch_size):
            samples = [dataset[i] for i in range(start, min(len(dataset), start + self.batch_size))]
            batch = self.collate(samples).to(self.device)
            with torch.inference_mode():
                yield predict_batch(self.model, batch, self.generation)


def _parse_all(raws: Iterable[dict], root: Path):
    for i, raw in enumerate(raws, start=1):
        try:
            yield parse_record(raw, root, require_target=False, line_no=i)
        except RecordError as err:
            yield err
