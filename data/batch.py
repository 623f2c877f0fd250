"""The batch type every model component consumes: padded tensors, masks and per-sample modality flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

# Fixed modality order: column m of ``present`` / ``modality_weights`` is MODALITIES[m].
MODALITIES: tuple[str, ...] = ("image", "audio", "text")


@dataclass
class MultimodalBatch:
    """A collated batch. Masks are bool with True = real data (False = padding).

    A modality tensor is ``None`` when no sample in the batch has that modality; otherwise samples without it hold
    zeros there and ``present[b, m]`` is False.
    """

    ids: list[str]
    tasks: list[str]
    present: torch.Tensor  # (B, M) bool, M = len(MODALITIES)
    image: torch.Tensor | None = None  # (B, 3, H, W) float32 in [0, 1]; encoders normalise
    audio: torch.Tensor | None = None  # (B, S) float32 mono waveform at the data module's sample rate
    audio_mask: torch.Tensor | None = None  # (B, S) bool
    text: torch.Tensor | None = None  # (B, T) long, tokenizer ids of the question / prompt text
    text_mask: torch.Tensor | None = None  # (B, T) bool
    target_ids: torch.Tensor | None = None  # (B, L) long: [task token] + target bytes + [eos], right-padded
    target_mask: torch.Tensor | None = None  # (B, L) bool
    targets: list[Any] = field(default_factory=list)  # raw targets (str, or JSON value for task "json"); None if absent
    schemas: list[dict | None] = field(default_factory=list)  # per-sample JSON Schema (task "json"), else None
    meta: list[dict] = field(default_factory=list)  # free per-sample extras (e.g. all reference answers)
    # Records of this batch that failed to load (predict mode): (id, reason). They are not in the tensors above, so a
    # batch may have len 0 and still carry failures; the prediction writer sends them to errors.jsonl.
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultimodalBatch:
        """Move every tensor field to ``device``; lists are shared, not copied."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=non_blocking)
            moved[f.name] = value
        return MultimodalBatch(**moved)

    def select(self, index: list[int]) -> MultimodalBatch:
        """The sub-batch of rows ``index`` (in that order); ``failed`` stays with the original batch."""
        rows = torch.as_tensor(index, dtype=torch.long)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "failed":
                value = []
            elif isinstance(value, torch.Tensor):
                value = value.index_select(0, rows.to(value.device))
            elif isinstance(value, list) and len(value) == len(self.ids):
                value = [value[i] for i in index]
            picked[f.name] = value
        return MultimodalBatch(**picked)

    def has(self, modality: str) -> bool:
        """True when at least one sample carries ``modality``."""
        return bool(self.present[:, MODALITIES.index(modality)].any())
