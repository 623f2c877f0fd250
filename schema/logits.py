"""Token masks for JSON-Schema-constrained generation: :class:`JsonSchemaLogitsProcessor`.

Called by the decoder once per step with ``seqs`` (prompt + generated tokens, ``(R, t)``) and ``logits``
(``(R, V)``); returns the logits with every token that would break the schema set to ``-inf``.

* **Exact for byte vocabularies.** The recogniser gives the set of next *characters* that keep a valid
  completion reachable; :func:`~.charset.allowed_bytes` turns it into the set of next UTF-8 bytes (so partial
  multi-byte characters are tracked and only valid continuations are allowed). Masks are cached per
  ``(allowed byte set, EOS allowed)`` - a handful of distinct tensors per schema - so a step costs one
  recogniser transition per row plus a dictionary lookup.
* **Any multi-character vocabulary** works too: tokens longer than one byte are checked by walking their bytes
  through the recogniser along a trie of the vocabulary (cached per recogniser state).
* **EOS only in accepting states**; after EOS (or a pad token) a row may only emit EOS/pad.
* **Whitespace cap**: at most ``max_consecutive_whitespace`` structural whitespace bytes in a row (whitespace
  inside strings is content and is not capped).
* **Budget awareness**: a token is allowed only if the shortest completion after it still fits in the
  remaining ``max_new_tokens`` (counted in bytes, i.e. assuming single-byte tokens exist for the completion),
  so an output cut at the cap is still complete, valid JSON.
* **Batched, per-row schemas, beam search**: rows are ``B * num_beams`` sample-major; each row's state is found
  by its generated prefix (a dict keyed by ``(sample, prefix)``) and advanced by one token from its parent
  prefix, so reordering beams between steps is free. Rows whose schema is None pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .charset import WS_BITS, WS_CODES, allowed_bytes
from .compiled import CompiledSchema, compile_schema
from .errors import SchemaError
from .recogniser import RecState

_WS = frozenset(WS_CODES)


class _Entry:
    """Per-prefix decoding state of one row: recogniser state, structural-whitespace run, finished flag."""

    __slots__ = ("state", "ws_run", "finished")

    def __init__(self, state: RecState | None, ws_run: int = 0, finished: bool = False) -> None:
        self.state = state
        self.ws_run = ws_run
        self.finished = finished


class JsonSchemaLogitsProcessor:
    """Masks logits so that every sequence is (a prefix of) a valid instance of its row's JSON Schema.

    Args:
        schemas: one JSON Schema (or None: unconstrained) per *sample*; ``len(schemas) * num_beams`` rows.
        token_bytes: the bytes a token id stands for, None for special tokens.
        vocab_size: ``V``, the logits width.
        eos_id: end-of-sequence id (allowed only where the text is a complete instance).
        max_new_tokens: the generation budget, for budget-aware masking (None disables it).
        prompt_len: number of leading positions of ``seqs`` that are prompt (the padded prompt width), not
            generated text; None: the width of ``seqs`` at the first call (nothing generated yet).
        num_beams: beams per sample (rows are sample-major).
        max_consecutive_whitespace: cap on consecutive structural whitespace bytes.
        pad_id: optional pad id, allowed (besides EOS) once a row has finished.
        formats: ``"assert"`` or ``"annotation"`` (see :func:`~.compiled.compile_schema`).
        resources: schema documents by URI that the schemas' ``$ref`` may point into (see ``compile_schema``).
    """

    def __init__(
        self,
        schemas: Sequence[dict | bool | None],
        token_bytes: Callable[[int], bytes | None],
        vocab_size: int,
        eos_id: int,
        max_new_tokens: int | None,
        prompt_len: int | None,
        num_beams: int = 1,
        max_consecutive_whitespace: int = 2,
        pad_id: int | None = None,
        formats: str = "assert",
        resources: Mapping | None = None,
    ) -> None:
        self.compiled: list[CompiledSchema | None] = []
        for i, s in enumerate(schemas):
            if s is None:
                self.compiled.append(None)
                continue
            c = compile_schema(s, formats, resources)
            try:
                c.check_generation(max_new_tokens)
            except SchemaError as e:
                raise SchemaError(f"sample {i}: {e}", None) from e
            self.compiled.append(c)
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.pad_id = None if pad_id is None else int(pad_id)
        self.max_new_tokens = max_new_tokens
        self.prompt_len = None if prompt_len is None else int(prompt_len)
        self.num_beams = int(num_beams)
        self.max_ws = int(max_consecutive_whitespace)

        self._tok: list[bytes | None] = []
        byte_index = torch.full((self.vocab_size,), 256, dtype=torch.long)
        self._multi: dict = {}  # trie over tokens of >= 2 bytes: {byte: (ids ending here, children)}
        self._has_multi = False
        for t in range(self.vocab_size):
            b = token_bytes(t)
            b = None if b is None or len(b) == 0 else bytes(b)
            self._tok.append(b)
            if b is None or t in (self.eos_id, self.pad_id):
                continue
            if len(b) == 1:
                byte_index[t] = b[0]
            else:
                self._has_multi = True
                node = self._multi
                for i, byte in enumerate(b):
                    ids, children = node.setdefault(byte, ([], {}))
                    if i == len(b) - 1:
                        ids.append(t)
                    node = children
        self._byte_index = byte_index  # (V,) byte value of single-byte tokens, 256 otherwise
        # mask bank: each distinct mask is stored once as a row of a (K, V) bool tensor (True = disallowed), so
        # a step gathers the whole (R, V) mask with one indexing operation; rows are appended in place
        self._bank_cap_rows = max(256, (1 << 26) // max(1, self.vocab_size))
        self._bank_keys: dict = {}
        self._bank_cpu = torch.zeros(0, self.vocab_size, dtype=torch.bool)
        self._bank_n = 0
        self._bank_dev: dict = {}
        self._bank_clear()
        self._prev: dict = {}
        self._cur: dict = {}
        self._cur_len = -1
        self.reset()

    def reset(self) -> None:
        """Forget per-prefix states (call between independent ``generate`` calls)."""
        self._prev, self._cur, self._cur_len = {}, {}, -1

    def _bank_clear(self) -> None:
        self._bank_keys = {}
        self._bank_cpu = torch.zeros(64, self.vocab_size, dtype=torch.bool)
        self._bank_n = 0
        self._bank_dev = {}
        self._bank_add("pass", torch.zeros(self.vocab_size, dtype=torch.bool))  # row 0: unconstrained
        eos_only = torch.ones(self.vocab_size, dtype=torch.bool)
        eos_only[self.eos_id] = False
        if self.pad_id is not None:
            eos_only[self.pad_id] = False
        self._bank_add("eos", eos_only)  # row 1: finished rows

    def _bank_add(self, key, disallowed: torch.Tensor) -> int:
        if self._bank_n >= self._bank_cap_rows:
            self._bank_clear()  # also forgets the keys, so callers simply re-add
        if self._bank_n == self._bank_cpu.shape[0]:
            self._bank_cpu = torch.cat([self._bank_cpu, torch.zeros_like(self._bank_cpu)])
        i = self._bank_n
        self._bank_cpu[i] = disallowed
        self._bank_n += 1
        self._bank_keys[key] = i
        return i

    def _bank_on(self, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return self._bank_cpu
        t, synced = self._bank_dev.get(device, (None, 0))
        if t is None or t.shape[0] < self._bank_cpu.shape[0]:
            t, synced = self._bank_cpu.to(device), self._bank_n
        elif synced < self._bank_n:
            t[synced : self._bank_n] = self._bank_cpu[synced : self._bank_n].to(device)
            synced = self._bank_n
        self._bank_dev[device] = (t, synced)
        return t

    # -----------------------------------------------------------------------------------------------------
    def __call__(self, seqs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        n_rows, width = seqs.shape
        if n_rows != len(self.compiled) * self.num_beams:
            raise ValueError(f"expected {len(self.compiled) * self.num_beams} rows, got {n_rows}")
        if all(c is None for c in self.compiled):
            return logits
        if self.prompt_len is None:
            self.prompt_len = width
        gen_len = width - self.prompt_len
        if gen_len != self._cur_len:
            if gen_len == self._cur_len + 1:
                self._prev, self._cur = self._cur, {}
            else:
                self._prev, self._cur = {}, {}
            self._cur_len = gen_len
        gen = seqs[:, self.prompt_len :].tolist() if gen_len > 0 else [[] for _ in range(n_rows)]
        remaining = None if self.max_new_tokens is None else self.max_new_tokens - gen_len
        ids = []
        for r in range(n_rows):
            sample = r // self.num_beams
            comp = self.compiled[sample]
            if comp is None:
                ids.append(0)
                continue
            entry = self._entry(sample, comp, gen[r])
            ids.append(self._row_mask(comp, entry, remaining))
        if all(i == 0 for i in ids):
            return logits
        bank = self._bank_on(logits.device)
        disallowed = bank[torch.tensor(ids, device=logits.device)]  # (n_rows, V)
        return logits.masked_fill(disallowed, float("-inf"))

    # per-row state -----------------------------------------------------------------------------------------
    def _entry(self, sample: int, comp: CompiledSchema, prefix: list[int]) -> _Entry:
        key = (sample, tuple(prefix))
        e = self._cur.get(key)
        if e is not None:
            return e
        parent = self._prev.get((sample, key[1][:-1])) if prefix else None
        if parent is None:
            e = _Entry(comp.initial_state)
            for t in prefix:
                e = self._advance(comp, e, t)
        else:
            e = self._advance(comp, parent, prefix[-1])
        self._cur[key] = e
        return e

    def _advance(self, comp: CompiledSchema, e: _Entry, t: int) -> _Entry:
        if e.finished:
            return e
        if t == self.eos_id or t == self.pad_id:
            return _Entry(e.state, e.ws_run, True)
        data = self._tok[t] if 0 <= t < self.vocab_size else None
        if data is None or e.state is None:
            return _Entry(None, 0, True)
        m = comp.machine
        state, ws = e.state, e.ws_run
        for b in data:
            ws = ws + 1 if (b in _WS and not state[1] and not m.in_string(state)) else 0
            state = m.step_byte(state, b)
            if state is None:
                return _Entry(None, 0, True)  # a token the mask did not allow: stop this row
        return _Entry(state, ws, False)

    # masks -------------------------------------------------------------------------------------------------
    def _row_mask(self, comp: CompiledSchema, e: _Entry, remaining: int | None) -> int:
        """Index into the mask bank of this row's mask."""
        if e.finished or e.state is None:
            return 1
        m = comp.machine
        state = e.state
        bits = allowed_bytes(m.allowed(state), state[1])
        in_str = bool(state[1]) or m.in_string(state)
        if not in_str and e.ws_run >= self.max_ws:
            bits &= ~WS_BITS
        eos_ok = m.accepting(state)
        budget = None
        if remaining is not None:
            cost = m.cost(state)
            if cost is not None and remaining - 1 < cost + comp.budget_slack():
                budget = remaining - 1
                bits = m.bytes_within(state, bits, budget)
        if not self._has_multi:
            if bits == 0 and not eos_ok:
                return 1  # cannot happen for a consistent state; never leave a row without options
            key = (bits, eos_ok)
            i = self._bank_keys.get(key)
            return i if i is not None else self._bank_add(key, ~self._mask_from_bits(bits, eos_ok))
        key = (state, e.ws_run if not in_str else -1, budget)
        i = self._bank_keys.get(key)
        if i is not None:
            return i
        mask = self._mask_from_bits(bits, eos_ok)
        for tid in self._multi_allowed(comp, state, e.ws_run, budget):
            mask[tid] = True
        if not mask.any():
            return 1
        return self._bank_add(key, ~mask)

    def _mask_from_bits(self, bits: int, eos_ok: bool) -> torch.Tensor:
        """Allowed-token mask (V,) for single-byte tokens from a 256-bit byte set, plus EOS."""
        table = torch.zeros(257, dtype=torch.bool)
        idx = [i for i in range(256) if (bits >> i) & 1]
        if idx:
            table[idx] = True
        mask = table[self._byte_index]  # (V,)
        mask[self.eos_id] = eos_ok
        return mask

    def _multi_allowed(self, comp: CompiledSchema, state: RecState, ws_run: int, budget: int | None) -> list[int]:
        """Tokens of two or more bytes whose every byte keeps the text valid (trie walk with pruning)."""
        m = comp.machine
        out: list[int] = []
        stack = [(self._multi, state, ws_run, 0)]
        while stack:
            node, st, ws, depth = stack.pop()
            in_str = bool(st[1]) or m.in_string(st)
            bits = allowed_bytes(m.allowed(st), st[1])
            if not in_str and ws >= self.max_ws:
                bits &= ~WS_BITS
            for byte, (ids, children) in node.items():
                if not (bits >> byte) & 1:
                    continue
                ns = m.step_byte(st, byte)
                if ns is None:
                    continue
                ws2 = ws + 1 if (byte in _WS and not in_str) else 0
                # a multi-byte token still costs one token of the budget
                if ids and (budget is None or ((c := m.cost(ns)) is not None and c <= budget)):
                    out.extend(ids)
                if children:
                    stack.append((children, ns, ws2, depth + 1))
        return out
