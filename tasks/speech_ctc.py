"""Auxiliary CTC loss on the audio encoder: its tokens learn to spell the utterance's transcript.

The answer loss reaches the audio encoder only through the fusion and the decoder, one short answer per question, so
the encoder learns which spoken word was said slowly (easy-VQA's yes/no questions turn on one colour or shape word).
When training records carry the transcript of their audio (``meta.transcript`` in the spoken manifests), a linear CTC
head over the audio tokens gives every frame a direct target: joint CTC / attention training, as in speech
recognition (Watanabe et al., 2017). The head is used for training only; inference reads audio alone, and exported
models (``save_pretrained``, ``OmniModel.from_checkpoint``) do not contain it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.encoders.base import TokenSequence
from omnifuse.finetune.safe_load import load_checkpoint


@dataclass
class SpeechCTCConfig:
    """``weight`` multiplies the CTC loss in the training loss; ``transcript_key`` is the ``meta`` key of a record
    that holds the text spoken in its audio. Records with audio but no transcript add nothing to this loss."""

    weight: float = 0.3
    transcript_key: str = "transcript"


class SpeechCTCHead(nn.Module):
    """Linear map from audio tokens to UTF-8 bytes plus the CTC blank (class 256)."""

    blank = 256

    def __init__(self, d_in: int, config: SpeechCTCConfig) -> None:
        super().__init__()
        if config.weight <= 0:
            raise ValueError(f"speech_ctc.weight must be > 0 (got {config.weight}); leave speech_ctc out to disable it")
        self.config = config
        self.proj = nn.Linear(d_in, self.blank + 1)
        self._warned_unalignable = False

    def transcripts(self, batch: MultimodalBatch) -> tuple[list[int], list[list[int]]]:
        """Rows of the batch that have audio and a transcript, and each row's transcript as byte ids."""
        key = self.config.transcript_key
        has_audio = batch.present[:, MODALITIES.index("audio")].tolist()
        rows, targets = [], []
        for row, (meta, audio) in enumerate(zip(batch.meta, has_audio, strict=True)):
            text = meta.get(key) if audio else None
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"record {batch.ids[row]!r}: meta.{key} must be a string, got {type(text).__name__}")
            if text:
                rows.append(row)
                targets.append(list(text.encode("utf-8")))
        return rows, targets

    def forward(self, audio: TokenSequence, batch: MultimodalBatch) -> torch.Tensor | None:
        """Mean CTC loss (per target byte, as ``F.ctc_loss``'s ``mean``) over the rows with a transcript that the
        audio can align, or None when there are none."""
        rows, targets = self.transcripts(batch)
        # CTC needs a token per byte plus a blank between two equal bytes; rows whose audio is too short are dropped.
        lengths = audio.mask.sum(dim=1).tolist()
        needed = [len(t) + sum(a == b for a, b in zip(t, t[1:], strict=False)) for t in targets]
        short = [i for i, row in enumerate(rows) if needed[i] > lengths[row]]
        if short and not self._warned_unalignable:
            self._warned_unalignable = True
            i = short[0]
            rank_zero_warn(
                f"speech_ctc: the transcript of record {batch.ids[rows[i]]!r} needs {needed[i]} audio tokens and its "
                f"audio has {lengths[rows[i]]}; such records add no CTC loss (reduce the audio encoder's subsampling "
                "or raise max_audio_seconds)"
            )
        keep = sorted(set(range(len(rows))) - set(short))
        if not keep:
            return None
        rows, targets = [rows[i] for i in keep], [targets[i] for i in keep]
        index = torch.as_tensor(rows, device=audio.tokens.device)
        log_probs = F.log_softmax(self.proj(audio.tokens.index_select(0, index)).float(), dim=-1)  # (N, T, C)
        return F.ctc_loss(
            log_probs.transpose(0, 1),  # (T, N, C)
            torch.tensor([b for t in targets for b in t], device=log_probs.device),
            audio.mask.index_select(0, index).sum(dim=1),
            torch.tensor([len(t) for t in targets], device=log_probs.device),
            blank=self.blank,
            reduction="mean",
        )

    @torch.no_grad()
    def greedy_decode(self, audio: TokenSequence) -> list[str]:
        """Best-path transcripts of a batch of audio tokens (collapse repeats, drop blanks): for probing the head."""
        best = self.proj(audio.tokens).argmax(dim=-1).masked_fill(~audio.mask, self.blank)
        texts = []
        for row in best.tolist():
            out, previous = bytearray(), self.blank
            for c in row:
                if c != previous and c != self.blank:
                    out.append(c)
                previous = c
            texts.append(out.decode("utf-8", errors="replace"))
        return texts


def init_head_from(head: SpeechCTCHead, path: str | Path, audio_encoder_loaded: bool) -> str:
    """Load ``head`` from the ``speech_ctc.*`` entries of the Lightning checkpoint at ``path`` (``init_from``) when it
    has a head of the same shape; returns the line the ``init_from`` report prints. The head spells bytes from the
    source's audio features, so it stays new unless every audio encoder tensor was loaded from the same source (none
    under ``init_skip`` or shape-mismatched); exported models (folders, ``.safetensors``) never contain it."""
    path = Path(path)
    if not audio_encoder_loaded:
        return "  speech_ctc head: new (the audio encoder it reads was not loaded from init_from)"
    if path.suffix != ".ckpt":
        return "  speech_ctc head: new (exported models leave the training-only head out)"
    raw = load_checkpoint(path)
    state = {
        k.removeprefix("speech_ctc."): v for k, v in raw.get("state_dict", {}).items() if k.startswith("speech_ctc.")
    }
    if not state:
        return "  speech_ctc head: new (the source was trained without speech_ctc)"
    own = head.state_dict()
    if state.keys() != own.keys() or any(state[k].shape != own[k].shape for k in own):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        return f"  speech_ctc head: new (the source's head has other shapes: {shapes})"
    head.load_state_dict(state)
    return f"  speech_ctc head: loaded ({len(state)} tensors)"
