"""Native text encoder: a bidirectional transformer over byte-tokenizer ids."""

from __future__ import annotations

import string
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from omnifuse.encoders.base import Encoder, TokenSequence
from omnifuse.encoders.layers import TransformerBlock
from omnifuse.encoders.registry import register_encoder
from omnifuse.encoders.utils import safe_key_mask, zero_masked

# ASCII whitespace and punctuation end a word; every other byte (letters, digits, UTF-8 multi-byte sequences) is inside.
_WHITESPACE_BYTES = torch.tensor([b in b" \t\n\r\x0b\x0c" for b in range(256)])
_PUNCTUATION_BYTES = torch.tensor([b < 128 and chr(b) in string.punctuation for b in range(256)])
_SEPARATOR_BYTES = _WHITESPACE_BYTES | _PUNCTUATION_BYTES
TOKEN_UNITS = ("byte", "word")
_BYTE_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def _byte_table(name: str, device: torch.device) -> torch.Tensor:
    """``_SEPARATOR_BYTES`` / ``_PUNCTUATION_BYTES`` on ``device``, copied there once (not on every call)."""
    key = (name, device)
    if key not in _BYTE_TABLES:
        _BYTE_TABLES[key] = {"separator": _SEPARATOR_BYTES, "punctuation": _PUNCTUATION_BYTES}[name].to(device)
    return _BYTE_TABLES[key]
_HASH_MODULUS = 2_147_483_647  # 2**31 - 1, prime; each term (byte + 1) * power < 2**40, far from int64 overflow
_HASH_BASE = 257


def hash_powers(n: int, device: torch.device | None = None) -> torch.Tensor:
    """``257**i mod (2**31 - 1)`` for i < n (n,) long."""
    powers = [1] * max(n, 1)
    for i in range(1, n):
        powers[i] = powers[i - 1] * _HASH_BASE % _HASH_MODULUS
    return torch.tensor(powers[:n], dtype=torch.long, device=device)


def word_bucket_ids(
    ids: torch.Tensor, mask: torch.Tensor, buckets: int, powers: torch.Tensor | None = None
) -> torch.Tensor:
    """Per byte, ``1 + hash(word) % buckets`` for the word it belongs to, 0 for separators and padding (B, T) long.

    ``ids`` (B, T) byte-tokenizer ids (0..255 are bytes; larger ids, e.g. pad or special tokens, are separators).
    The hash is the polynomial ``sum((byte_i + 1) * 257**i) mod (2**31 - 1)`` over the word's bytes, so it depends only on
    the word: the same word anywhere in any text lands in the same bucket. ``powers``: ``hash_powers(>= T)``, if
    the caller keeps them.
    """
    B, T = ids.shape
    is_byte = (ids >= 0) & (ids < 256) & mask
    separator = ~is_byte | _byte_table("separator", ids.device)[ids.clamp(0, 255)]  # (B, T)
    in_word = ~separator
    previous_in_word = F.pad(in_word[:, :-1], (1, 0), value=False)
    starts = in_word & ~previous_in_word  # (B, T) first byte of each word
    word_index = starts.long().cumsum(dim=1)  # (B, T): 1, 2, ... per word (valid where in_word)
    positions = torch.arange(T, device=ids.device).expand(B, T)
    start_position = torch.where(starts, positions, 0).cummax(dim=1).values  # (B, T) start of the current word
    offset = positions - start_position  # (B, T) position inside the word
    if powers is None or powers.shape[0] < T:
        powers = hash_powers(T, ids.device)
    terms = torch.where(in_word, (ids.clamp(0, 255) + 1) * powers[offset] % _HASH_MODULUS, 0)  # (B, T)
    hashes = torch.zeros(B, T + 1, dtype=torch.long, device=ids.device)  # per word index (0 unused)
    hashes.scatter_add_(1, torch.where(in_word, word_index, 0), terms)
    hashes = hashes % _HASH_MODULUS
    word_hash = hashes.gather(1, word_index)  # (B, T)
    return torch.where(in_word, 1 + word_hash % buckets, 0)


def word_units(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the ids of each row into units: a word (a maximal run of bytes that are not ASCII whitespace or
    punctuation), a single punctuation byte, or a single non-byte id (a special or task token). Whitespace belongs
    to no unit, nor does padding.

    ``ids``, ``mask`` (B, T) -> ``unit`` (B, T) long, the 0-based unit index of each id (-1: in no unit), and
    ``starts`` (B, T) bool, True on the first id of each unit."""
    is_byte = (ids >= 0) & (ids < 256)
    byte = ids.clamp(0, 255)
    in_word = mask & is_byte & ~_byte_table("separator", ids.device)[byte]
    single = mask & ((is_byte & _byte_table("punctuation", ids.device)[byte]) | ~is_byte)
    previous_in_word = F.pad(in_word[:, :-1], (1, 0), value=False)
    starts = (in_word & ~previous_in_word) | single  # (B, T)
    unit = starts.long().cumsum(dim=1) - 1
    return torch.where(in_word | single, unit, -1), starts


@register_encoder("text")
class TextEncoder(Encoder):
    """Ids (B, T) + mask (B, T) -> tokens (B, N, d_model): one token per input id (``units="byte"``, N = T) or one
    per word (``units="word"``, N = the most words in a row of the batch).

    Defaults match the byte tokenizer (ids 0..255 = UTF-8 bytes, then ``<pad> <bos> <eos>`` and task tokens:
    vocab 262, pad 256). Ids under the mask are replaced by ``pad_id`` before the embedding, so padding may hold
    anything. Sequences longer than ``max_len`` are cut to their first ``max_len`` ids (with a warning).

    ``word_buckets > 0`` adds to every byte of a word the embedding of that whole word, hashed into ``word_buckets``
    buckets (the hashing trick of fastText, Joulin et al. 2017; no vocabulary file, any language). A word is a
    maximal run of bytes that are not ASCII whitespace or punctuation (so UTF-8 letters of any script stay inside
    words); separators get no word embedding. Bytes alone make a word's identity something the layers must
    assemble from its letters; with the word embedding it is there from the start. No shipped recipe uses it yet:
    in the easy-VQA probes (README) it did not by itself make yes/no questions bind to the image.

    ``units="word"``: the transformer runs over words instead of bytes (``word_units``: a word, a punctuation mark
    or a special token is one unit; whitespace is dropped). A unit's input is the mean of its ids' embeddings, plus
    its word's hashed embedding with ``word_buckets``, plus the position of the unit. An English question is ~5x
    fewer words than bytes, so attention and feed-forward cost ~5x less; ``max_len`` then counts units. A text with
    no unit (only whitespace) has no valid token, like an empty one.
    """

    modality = "text"

    def __init__(
        self,
        vocab_size: int = 262,
        d_model: int = 192,
        n_layers: int = 2,
        n_heads: int = 4,
        max_len: int = 512,
        pad_id: int = 256,
        ffn_mult: int = 4,
        dropout: float = 0.0,
        word_buckets: int = 0,
        units: str = "byte",
    ) -> None:
        super().__init__()
        if word_buckets < 0:
            raise ValueError(f"word_buckets must be >= 0, got {word_buckets}")
        if units not in TOKEN_UNITS:
            raise ValueError(f"units must be one of {TOKEN_UNITS}, got {units!r}")
        self.units = units
        self.pad_id = pad_id
        self.word_buckets = word_buckets
        # Bucket 0 is "not in a word" (separators, padding) and stays a zero vector.
        self.word_embed = nn.Embedding(word_buckets + 1, d_model, padding_idx=0) if word_buckets else None
        if word_buckets:
            # Byte mode cuts inputs to max_len ids; word mode reads whole texts, whose words can be longer.
            self.register_buffer("hash_powers", hash_powers(max_len), persistent=False)
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([TransformerBlock(d_model, n_heads, ffn_mult, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def num_tokens(self, seq_len: int) -> int:
        """Most tokens for inputs of ``seq_len`` ids: ``min(seq_len, max_len)`` (word units: at most that many)."""
        return min(seq_len, self.max_len)

    def _word_inputs(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Word-unit inputs (B, N, D) and their mask (B, N) from ids (B, T) whose padding is already ``pad_id``."""
        unit, starts = word_units(ids, mask)  # (B, T) each
        B, T = ids.shape
        counts = (unit.max(dim=1).values + 1) if T else ids.new_zeros(B)  # (B,) units per row
        n = int(counts.max()) if B else 0
        if n > self.max_len:
            warnings.warn(f"text of {n} words cut to max_len={self.max_len}", stacklevel=3)
        n = min(n, self.max_len)
        keep = (unit >= 0) & (unit < n)  # (B, T)
        slot = torch.where(keep, unit, n)  # ids in no kept unit go to a spare slot n, dropped below
        x = self.embed(ids)  # (B, T, D)
        if self.word_embed is not None:
            powers = self.hash_powers if self.hash_powers.shape[0] >= T else None
            # Added once per unit, on its first id, so the mean below leaves the word's own embedding whole.
            words = self.word_embed(torch.where(starts, word_bucket_ids(ids, mask, self.word_buckets, powers), 0))
        index = slot[..., None].expand_as(x)  # (B, T, D)
        sums = x.new_zeros(B, n + 1, x.shape[-1]).scatter_add(1, index, x)  # (B, n + 1, D)
        size = torch.zeros(B, n + 1, dtype=x.dtype, device=x.device).scatter_add(1, slot, keep.to(x.dtype))
        units = sums[:, :n] / size[:, :n, None].clamp(min=1)
        if self.word_embed is not None:
            units = units + x.new_zeros(B, n + 1, x.shape[-1]).scatter_add(1, index, words)[:, :n]
        unit_mask = torch.arange(n, device=ids.device) < counts[:, None]  # (B, n)
        return units + self.pos[:n], unit_mask

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TokenSequence:
        """``ids`` (B, T) long, ``mask`` (B, T) bool -> TokenSequence (B, N, out_dim), tokens 0 under its mask (N = T
        for byte units, the most words in a row for word units)."""
        if self.units == "byte" and ids.shape[1] > self.max_len:
            warnings.warn(f"text of {ids.shape[1]} ids cut to max_len={self.max_len}", stacklevel=2)
            ids, mask = ids[:, : self.max_len], mask[:, : self.max_len]
        ids = torch.where(mask, ids, self.pad_id)  # (B, T)
        if self.units == "word":
            x, mask = self._word_inputs(ids, mask)  # (B, N, D), (B, N)
        else:
            x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, T, D)
            if self.word_embed is not None:
                x = x + self.word_embed(word_bucket_ids(ids, mask, self.word_buckets, self.hash_powers))
        x = self.drop(x)
        key_mask = safe_key_mask(mask)
        for block in self.blocks:
            x = block(x, key_mask)
        return TokenSequence(zero_masked(self.norm(x), mask), mask)
