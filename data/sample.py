"""``Sample``: one record after loading, what the dataset yields and the collator consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Sample:
    """A loaded record. ``error`` is set (and the tensors are None) when the record failed in predict mode.

    ``image`` is ``(3, H, W)`` float32 in [0, 1]; ``audio`` is ``(S,)`` float32 mono; ``text`` is raw text (the
    collator tokenises it, so truncation and padding happen in one place).
    """

    id: str
    task: str | None
    image: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    text: str | None = None
    target: Any = None
    schema: dict | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None  # "field 'image': <reason>" for a record that could not be used

    @classmethod
    def failed(cls, record_id: str, reason: str, task: str | None = None) -> Sample:
        return cls(id=record_id, task=task, error=reason)
