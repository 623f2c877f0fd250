"""Collation: a list of ``Sample`` -> one ``MultimodalBatch`` (padding, masks, per-sample modality flags)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.sample import Sample
from omnifuse.data.tokenizer import ByteTokenizer


def serialize_target(task: str, target: Any) -> str:
    """The exact text the decoder learns: strings as they are; task ``json`` targets as compact JSON.

    Compact separators and ``ensure_ascii=False`` keep the byte sequence short and make it the one canonical spelling
    of a value, so ``json.loads`` of the decoded text gives the value back.
    """
    if task == "json":
        return json.dumps(target, ensure_ascii=False, separators=(",", ":"))
    if not isinstance(target, str):
        raise TypeError(f"task {task!r} needs a string target, got {type(target).__name__}")
    return target


class Collator:
    """Turn samples into a ``MultimodalBatch``; picklable, so it works in DataLoader worker processes.

    - ``present[b, m]`` says whether sample ``b`` has modality ``MODALITIES[m]``; a modality no sample has is ``None``,
      otherwise samples without it hold zeros (images) or an all-False mask row (audio, text).
    - ``text``: tokenizer ids without bos/eos, cut to ``max_text_len``.
    - ``target_ids``: ``[task token] + target bytes + [eos]`` cut to ``max_target_len`` (a cut target loses its eos:
      the decoder is not taught to stop where the text does not end). A sample without a target (inference) gets just
      its task token; ``target_ids`` is ``None`` when no sample has a target.
    - Samples with ``error`` set go to ``failed`` as ``(id, reason)`` and are left out of everything else.
    """

    def __init__(self, tokenizer: ByteTokenizer | None = None, max_text_len: int = 256, max_target_len: int = 512):
        if max_text_len < 1 or max_target_len < 2:
            raise ValueError("max_text_len must be >= 1 and max_target_len >= 2 (task token + at least one more)")
        self.tokenizer = tokenizer or ByteTokenizer()
        self.max_text_len = max_text_len
        self.max_target_len = max_target_len

    def __call__(self, samples: Sequence[Sample]) -> MultimodalBatch:
        failed = [(s.id, s.error) for s in samples if s.error is not None]
        ok = [s for s in samples if s.error is None]
        B = len(ok)
        flags = [[getattr(s, m) is not None for m in MODALITIES] for s in ok]
        present = torch.tensor(flags, dtype=torch.bool).reshape(B, len(MODALITIES))  # (B, M), also right when B == 0
        batch = MultimodalBatch(
            ids=[s.id for s in ok],
            tasks=[s.task for s in ok],
            present=present,
            targets=[s.target for s in ok],
            schemas=[s.schema for s in ok],
            meta=[dict(s.meta) for s in ok],
            failed=failed,
        )
        if B == 0:
            return batch
        batch.image = self._images(ok)
        batch.audio, batch.audio_mask = self._audio(ok)
        batch.text, batch.text_mask = self._text(ok)
        batch.target_ids, batch.target_mask = self._targets(ok)
        return batch

    @staticmethod
    def _images(samples: Sequence[Sample]) -> torch.Tensor | None:
        images = [s.image for s in samples]
        shapes = {tuple(x.shape) for x in images if x is not None}
        if not shapes:
            return None
        if len(shapes) > 1:
            raise ValueError(
                f"images in one batch must share a size, got {sorted(shapes)}; set the dataset's image_size "
                f"(ids: {[s.id for s in samples]})"
            )
        (shape,) = shapes
        out = torch.zeros((len(images), *shape), dtype=torch.float32)  # (B, 3, H, W); absent images stay zero
        for b, x in enumerate(images):
            if x is not None:
                out[b] = x
        return out

    @staticmethod
    def _audio(samples: Sequence[Sample]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        waves = [s.audio for s in samples]
        if all(w is None for w in waves):
            return None, None
        width = max(w.shape[0] for w in waves if w is not None)
        audio = torch.zeros((len(waves), width), dtype=torch.float32)  # (B, S), right-padded with zeros
        mask = torch.zeros((len(waves), width), dtype=torch.bool)
        for b, w in enumerate(waves):
            if w is not None:
                audio[b, : w.shape[0]] = w
                mask[b, : w.shape[0]] = True
        return audio, mask

    def _text(self, samples: Sequence[Sample]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if all(s.text is None for s in samples):
            return None, None
        seqs = [self.tokenizer.encode(s.text)[: self.max_text_len] if s.text is not None else [] for s in samples]
        return self.tokenizer.pad(seqs)  # (B, T) ids, (B, T) mask

    def _targets(self, samples: Sequence[Sample]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if all(s.target is None for s in samples):
            return None, None
        seqs = []
        for s in samples:
            seq = [self.tokenizer.task_id(s.task)]
            if s.target is not None:
                seq += self.tokenizer.encode(serialize_target(s.task, s.target), add_eos=True)
            seqs.append(seq[: self.max_target_len])
        return self.tokenizer.pad(seqs)  # (B, L) ids, (B, L) mask
