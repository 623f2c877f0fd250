"""``omnifuse score``: a batch job's predictions scored against its manifest, overall and per group of records.

    omnifuse score runs/predict_spoken --manifest datasets/easyvqa/spoken_test.jsonl --by meta.voice

Each task is scored with the metrics its Lightning task logs (the same functions): VQA accuracy (official formula) and
exact match for ``vqa``; BLEU-1..4, ROUGE-L and CIDEr-D for ``caption`` (corpus metrics, so a group's CIDEr-D takes its
IDF from that group's references, as the task's test does for the whole set); validity (``jsonschema``), exact match,
field accuracy and bbox IoU for ``json``. ``--by`` names a record field (``task``, ``meta.voice``,
``meta.answer_type``, ...); each ``--by`` gives its own breakdown. Records of the manifest that the output folder has
no prediction for (an id in ``errors.jsonl``, or a job not finished) are counted and listed, never scored as wrong.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from omnifuse.app.writer import ERRORS_FILE, PREDICTIONS_FILE, output_files
from omnifuse.data.records import Record, read_manifest
from omnifuse.tasks.caption import CAPTION_METRICS, caption_references
from omnifuse.tasks.metrics import VQAAccuracy, caption_scores, json_scores, tokenize_caption
from omnifuse.tasks.structured_task import validate_with_jsonschema
from omnifuse.tasks.vqa import vqa_references

UNSET = "(unset)"  # the group of records that lack the --by field


class ScoreError(Exception):
    """Outputs or a manifest that cannot be scored; the message names the file and line, or the record and field."""


def read_outputs(folder: Path) -> tuple[dict[str, Any], set[str]]:
    """Predictions (id -> value) and errored ids of a predict output folder, every rank's files included. A last line
    cut short by a kill (no newline, not JSON) is skipped: its record counts as not predicted. An id written twice
    with the same prediction (a resumed job) is fine; with two different ones it is refused."""
    predictions: dict[str, Any] = {}
    seen_at: dict[str, str] = {}
    errored: set[str] = set()
    for name in (PREDICTIONS_FILE, ERRORS_FILE):
        for path in output_files(folder, name):
            lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
            for line_no, line in enumerate(lines, start=1):
                if not line.strip() or (line_no == len(lines) and not _is_json(line)):  # blank, or cut by a kill
                    continue
                where = f"{path}:{line_no}"
                try:
                    row = json.loads(line)
                except ValueError as error:
                    raise ScoreError(f"{where}: not JSON ({error})") from None
                if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                    raise ScoreError(f"{where}: field 'id' missing or not a string")
                record_id = row["id"]
                if name == ERRORS_FILE:
                    errored.add(record_id)
                    continue
                if "prediction" not in row:
                    raise ScoreError(f"{where}: record {record_id!r}: field 'prediction' missing")
                if record_id in predictions and predictions[record_id] != row["prediction"]:
                    raise ScoreError(
                        f"{where}: record {record_id!r} has another prediction at {seen_at[record_id]}; "
                        "which one to score is unclear"
                    )
                predictions[record_id] = row["prediction"]
                seen_at.setdefault(record_id, where)
    return predictions, errored


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def field_value(record: Record, field: str) -> str:
    """``record``'s value of a dotted field (``task``, ``meta.voice``) as a group name; ``UNSET`` when absent."""
    head, _, rest = field.partition(".")
    value: Any = getattr(record, head, None) if head != "meta" else record.meta
    for part in rest.split(".") if rest else []:
        value = value.get(part) if isinstance(value, dict) else None
    return UNSET if value is None else str(value)


def score_records(task: str, records: list[Record], predictions: dict[str, Any]) -> dict[str, float]:
    """One task's metrics over ``records`` (all of that task, all with a prediction)."""
    # `omnifuse predict` writes a json record's output parsed when it parses (format_prediction), else as its text;
    # the metrics take text. (An output that was itself a JSON string literal comes back as its bare content.)
    texts = [p if isinstance(p, str) else json.dumps(p) for p in (predictions[r.id] for r in records)]
    if task == "vqa":
        accuracy = VQAAccuracy()
        accuracy.update(texts, [vqa_references(r.meta, r.target) for r in records])
        result = accuracy.compute()
        return {"vqa_accuracy": result["vqa_accuracy"], "exact_match": result["exact_match"]}
    if task == "caption":
        references = {i: caption_references(r.meta, r.target) for i, r in enumerate(records)}
        scores = caption_scores(dict(enumerate(texts)), references, tokenizer=tokenize_caption)
        return {name: float(scores[name]) for name in CAPTION_METRICS}
    if task == "json":
        scores = json_scores(texts, [r.target for r in records], [r.schema for r in records], validate_with_jsonschema)
        return {k: float(v) for k, v in scores.items() if v is not None and k != "n_bbox"}
    raise ValueError(f"no metrics for task {task!r}")


def score(
    records: list[Record], predictions: dict[str, Any], by: list[str]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{breakdown: {group: {task: {metric: value, "n": count}}}}``; breakdown ``"all"`` has the one group ``"all"``.
    Only records with a prediction are scored."""
    scored = [r for r in records if r.id in predictions]
    result: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for field in ["all", *by]:
        groups: dict[str, list[Record]] = defaultdict(list)
        for record in scored:
            groups["all" if field == "all" else field_value(record, field)].append(record)
        result[field] = {}
        for group in sorted(groups):
            by_task: dict[str, list[Record]] = defaultdict(list)
            for record in groups[group]:
                by_task[record.task].append(record)
            result[field][group] = {
                task: {**score_records(task, rs, predictions), "n": len(rs)} for task, rs in sorted(by_task.items())
            }
    return result


def _print(result: dict, missing: list[str], errored: set[str]) -> None:
    for field, groups in result.items():
        print(f"\n{'all records' if field == 'all' else f'by {field}'}:")
        for group, tasks in groups.items():
            for task, metrics in tasks.items():
                figures = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n")
                label = "" if field == "all" else f"{group:<24} "
                print(f"  {label}{task:<8} n={int(metrics['n']):<6} {figures}")
    if missing:
        in_errors = [i for i in missing if i in errored]
        print(
            f"\n{len(missing)} records have no prediction ({len(in_errors)} in {ERRORS_FILE}, "
            f"{len(missing) - len(in_errors)} not in the output at all), e.g. {', '.join(missing[:5])}"
        )


def _manifest_records(manifest: Path, errored: set[str]) -> tuple[list[Record], list[str]]:
    """The manifest's records, and the ids of those that cannot be read but that the job reported in its errors file
    (e.g. a missing audio file: not predicted, listed as missing). Any other bad record stops the scoring."""
    records: list[Record] = []
    unusable: list[str] = []
    for item in read_manifest(manifest):
        if isinstance(item, Record):
            records.append(item)
        elif item.record_id in errored:
            unusable.append(item.record_id)
        else:
            raise ScoreError(f"{manifest}: {item}")
    return records, unusable


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="omnifuse score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="an `omnifuse predict` output folder (predictions.jsonl, errors)")
    parser.add_argument("--manifest", type=Path, required=True, help="the manifest that was predicted, with targets")
    parser.add_argument("--by", action="append", default=[], help="a record field to group by (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        parser.error(f"--manifest {args.manifest}: no such file")
    if not args.output.is_dir():
        parser.error(f"{args.output} is not a folder (pass the --trainer.callbacks output_dir of omnifuse predict)")
    try:
        predictions, errored = read_outputs(args.output)
        records, unusable = _manifest_records(args.manifest, errored)
        known = {r.id for r in records} | set(unusable)
        foreign = sorted(set(predictions) - known)
        if foreign:
            raise ScoreError(
                f"{args.output}: {len(foreign)} predictions for ids not in {args.manifest} (another manifest's "
                f"output?), e.g. {', '.join(foreign[:5])}"
            )
        for field in args.by:
            if records and all(field_value(r, field) == UNSET for r in records):
                raise ScoreError(f"--by {field}: no record of {args.manifest} has this field (e.g. meta.voice, task)")
    except ScoreError as error:
        raise SystemExit(f"omnifuse score: {error}") from None
    missing = [*unusable, *(r.id for r in records if r.id not in predictions)]
    result = score(records, predictions, args.by)
    _print(result, missing, errored)
    if args.json:
        args.json.write_text(json.dumps({"scores": result, "missing": missing}, indent=1))
    return 0
