"""Structured output: JSON generated under each record's JSON Schema, scored for validity and per-field accuracy."""

from __future__ import annotations

from typing import Any

import jsonschema
import referencing
import referencing.jsonschema

from omnifuse.data.batch import MultimodalBatch
from omnifuse.tasks.inference import schema_resources
from omnifuse.tasks.metrics import json_scores
from omnifuse.tasks.module import OmniTask


def validate_with_jsonschema(instance: Any, schema: dict, resources: dict | None = None) -> bool:
    """An independent validator for the metric: the ``jsonschema`` library, not our own recogniser; the validator of
    the draft the schema declares (2020-12 when it declares none), with ``resources`` (URI -> schema document, read in
    that draft unless they declare their own) in its ``referencing`` registry."""
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    if not resources:
        return validator(schema).is_valid(instance)
    spec = referencing.jsonschema.specification_with(validator.META_SCHEMA["$schema"])
    registry = referencing.Registry().with_resources(
        (uri, referencing.Resource.from_contents(doc, default_specification=spec)) for uri, doc in resources.items()
    )
    return validator(schema, registry=registry).is_valid(instance)


class StructuredTask(OmniTask):
    """``json`` records: teacher-forced training on the compact JSON target; generation under the record's schema.

    Metrics: ``validity`` (parses and validates with ``jsonschema``), ``exact_match``, ``field_accuracy`` (mean over
    the target's top-level fields) and ``bbox_iou`` (for targets with a ``bbox`` [x0, y0, x1, y1]).
    """

    task = "json"
    monitor = "val/field_accuracy"
    monitor_mode = "max"

    def reset_metrics(self) -> None:
        self._predictions: list[str] = []
        self._targets: list[Any] = []
        self._schemas: list[dict | None] = []

    def update_metrics(self, predictions: list[str], batch: MultimodalBatch) -> None:
        self._predictions += predictions
        self._targets += list(batch.targets)
        self._schemas += list(batch.schemas)

    def compute_metrics(self) -> dict[str, float]:
        if not self._predictions:
            return {}
        generation = getattr(self, "generation_config", None)  # (the metric alone, as omnifuse score uses it: none)
        resources = schema_resources(generation) if generation is not None else {}
        scores = json_scores(
            self._predictions, self._targets, self._schemas,
            validate=lambda instance, schema: validate_with_jsonschema(instance, schema, resources),
        )  # fmt: skip
        return {
            k: float(v)
            for k, v in scores.items()
            if k in ("validity", "exact_match", "field_accuracy", "bbox_iou") and v is not None
        }
