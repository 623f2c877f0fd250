"""Lossless byte-level tokenizer shared by the decoder and the native text encoder.

Ids 0..255 are the UTF-8 bytes themselves; special tokens follow. Any string (hence any JSON text) round-trips
exactly: ``decode(encode(s)) == s``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

TASKS: tuple[str, ...] = ("vqa", "caption", "json")
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>") + tuple(f"<{t}>" for t in TASKS)


class ByteTokenizer:
    """UTF-8 bytes + ``<pad> <bos> <eos>`` + one start token per task (``<vqa> <caption> <json>``)."""

    n_bytes = 256

    def __init__(self) -> None:
        self.special_ids = {tok: self.n_bytes + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.pad_id = self.special_ids["<pad>"]
        self.bos_id = self.special_ids["<bos>"]
        self.eos_id = self.special_ids["<eos>"]

    @property
    def vocab_size(self) -> int:
        return self.n_bytes + len(SPECIAL_TOKENS)

    def task_id(self, task: str) -> int:
        """Id of the decoder start token for ``task``; unknown tasks fail with the list of known ones."""
        try:
            return self.special_ids[f"<{task}>"]
        except KeyError:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None

    def token_bytes(self, token_id: int) -> bytes | None:
        """The bytes a token stands for, or None for a special token (used by constrained decoding)."""
        return bytes([token_id]) if 0 <= token_id < self.n_bytes else None

    def token_label(self, token_id: int) -> str:
        """A readable name for one token: its character for printable ASCII, ``<0xNN>`` for any other byte (one
        byte of a multi-byte UTF-8 character, a control byte), the token's name for a special token."""
        data = self.token_bytes(token_id)
        if data is None:
            names = {v: k for k, v in self.special_ids.items()}
            return names.get(token_id, f"<id {token_id}>")
        return data.decode("ascii") if 0x20 <= data[0] < 0x7F else f"<0x{data[0]:02X}>"

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
        """Bytes back to text; special tokens are skipped, decoding stops at the first ``<eos>`` by default.

        Invalid UTF-8 (possible from an unconstrained model) is replaced with U+FFFD rather than raising.
        """
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos_id and stop_at_eos:
                break
            if 0 <= i < self.n_bytes:
                out.append(i)
        return out.decode("utf-8", errors="replace")

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False, max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(ids (B, T) long, mask (B, T) bool)``; ``max_length`` truncates each sequence."""
        seqs = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        if max_length is not None:
            seqs = [s[:max_length] for s in seqs]
        return self.pad(seqs)

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(s) for s in seqs), default=0)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[row, : len(s)] = True
        return ids, mask

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]], stop_at_eos: bool = True) -> list[str]:
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return [self.decode(r, stop_at_eos=stop_at_eos) for r in rows]
