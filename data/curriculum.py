"""Curriculum learning: train on the easiest records first and let the harder ones in over the first epochs.

``data.curriculum: {score: ..., start: 0.25, epochs: 2, schedule: sqrt}``. Each training record gets a difficulty
(higher = harder) from ``score``:

* ``text_length`` / ``target_length``: characters of the record's ``text`` / of its ``target`` (as JSON when it is
  not a string); a record without one counts as 0;
* ``meta.<key>``: a number the manifest carries (a human rating, a source's difficulty level);
* ``file:<path>`` (relative to the working directory): a JSONL file of ``{"id": ..., "<score_field>": number}`` rows, e.g. the ``predictions.jsonl`` of
  ``omnifuse predict`` run by a reference model with ``--model.init_args.generation.with_loss true``, whose rows then
  carry each record's teacher-forced ``loss`` (the loss of the reference model is the difficulty).

Epoch ``e`` trains on the easiest fraction ``c(e)`` of the records (the *competence* of Platanios et al., "Competence-
based curriculum learning for neural machine translation", NAACL 2019): ``linear``: ``c = start + (1 - start) e /
epochs``; ``sqrt``: ``c = sqrt(start^2 + (1 - start^2) e / epochs)`` (more of the data early); from ``epochs`` on,
``c = 1``, i.e. the whole set. An epoch keeps its length (``len(train)`` samples): the pool is shuffled and repeated
as often as it takes, so steps, schedules and checkpoints mean what they mean without a curriculum. Ties in
difficulty keep manifest order. Seeded, sharded over DDP ranks and resumable like the plain shuffle
(:class:`~omnifuse.data.sampler.ResumableSampler`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omnifuse.data.records import Record, RecordError

SCHEDULES = ("linear", "sqrt")


@dataclass
class CurriculumConfig:
    score: str = "text_length"  # text_length | target_length | meta.<key> | file:<path>
    start: float = 0.25  # fraction of the records (the easiest) in the first epoch
    epochs: int = 2  # epochs until every record is in
    schedule: str = "sqrt"  # linear | sqrt
    score_field: str = "loss"  # with file:<path>: the field of each row that holds the difficulty

    def __post_init__(self) -> None:
        if not 0.0 < self.start <= 1.0:
            raise ValueError(f"curriculum.start must be in (0, 1], got {self.start}")
        if self.epochs < 1:
            raise ValueError(f"curriculum.epochs must be >= 1, got {self.epochs}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"curriculum.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        ok = self.score in ("text_length", "target_length") or self.score.startswith(("meta.", "file:"))
        if not ok or self.score in ("meta.", "file:"):
            raise ValueError(
                f"curriculum.score must be text_length, target_length, meta.<key> or file:<path>, got {self.score!r}"
            )

    def competence(self, epoch: int) -> float:
        """The fraction of the records (the easiest) that epoch ``epoch`` (0-based) trains on."""
        progress = min(1.0, max(0, epoch) / self.epochs)
        if self.schedule == "linear":
            return self.start + (1.0 - self.start) * progress
        return math.sqrt(self.start**2 + (1.0 - self.start**2) * progress)


def _length(value) -> int:
    if value is None:
        return 0
    return len(value) if isinstance(value, str) else len(json.dumps(value, ensure_ascii=False))


def difficulties(records: Sequence[Record], config: CurriculumConfig) -> list[float]:
    """One difficulty per record (higher = harder). A ``meta.<key>`` or ``file:`` score that a record lacks, or that is
    not a number, raises ``RecordError`` naming the record and the field."""
    if config.score == "text_length":
        return [float(_length(r.text)) for r in records]
    if config.score == "target_length":
        return [float(_length(r.target)) for r in records]
    if config.score.startswith("meta."):
        key = config.score[len("meta.") :]
        out = []
        for r in records:
            value = (r.meta or {}).get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RecordError(r.id, config.score, f"curriculum score must be a finite number, got {value!r}")
            out.append(float(value))
        return out
    path = Path(config.score[len("file:") :])
    if not path.is_file():
        raise FileNotFoundError(f"curriculum score file not found: {path}")
    scores: dict[str, float] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"curriculum score file {path}, line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"curriculum score file {path}, line {n}: not a JSON object")
        value = row.get(config.score_field)
        if "id" in row and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            scores[str(row["id"])] = float(value)
    out = []
    for r in records:
        if r.id not in scores:
            raise RecordError(r.id, config.score, f"no numeric {config.score_field!r} for this id in {path}")
        out.append(scores[r.id])
    return out


def easiest_first(scores: Sequence[float]) -> list[int]:
    """Record indices from the easiest to the hardest (ties: manifest order)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


def pool(order: Sequence[int], fraction: float) -> list[int]:
    """The first ``ceil(fraction * n)`` indices of ``order`` (at least one)."""
    return list(order[: max(1, math.ceil(fraction * len(order) - 1e-9))])
