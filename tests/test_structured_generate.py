"""Generator guarantee: whatever the logits, every output parses with ``json.loads`` and validates.

Generation is simulated the way the decoder will drive the processor (prompt + generated ids, one call per
step, Gumbel-max sampling from the masked logits, rows padded after EOS). Every supported schema of the
vendored test suite plus omnifuse's own schemas (scene, nested, recursive, formats, patterns, non-ASCII) is
generated with random logits (several seeds), with a policy that prefers whitespace, and with budgets down to
the shortest instance; each output is checked with ``json.loads`` and the ``jsonschema`` validator.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch

from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.tasks.structured import (
    JsonSchemaLogitsProcessor,
    SchemaError,
    UnsupportedSchemaError,
    compile_schema,
)

TOK = ByteTokenizer()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: one intra-op thread avoids contention on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


WS_IDS = [ord(c) for c in " \t\n\r"]
DRAFT = Path(__file__).parent / "json_schema_suite" / "draft2020-12"

SCENE = {
    "type": "object",
    "properties": {
        "shape": {"enum": ["circle", "rectangle", "triangle"]},
        "color": {"enum": ["red", "green", "blue", "yellow", "teal", "brown", "gray", "black"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 3},
        "answer": {"type": "string", "maxLength": 24},
    },
    "required": ["shape", "color", "answer"],
    "additionalProperties": False,
}
NESTED = {
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "number", "minimum": -1, "maximum": 1}, "y": {"type": "number"}},
            "required": ["x", "y"],
            "additionalProperties": False,
        },
        "tree": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "minLength": 1, "maxLength": 8},
                "children": {"type": "array", "items": {"$ref": "#/$defs/tree"}, "maxItems": 3},
            },
            "required": ["label"],
        },
    },
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "when": {"type": "string", "format": "date-time"},
        "points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "minItems": 1, "maxItems": 4},
        "tree": {"$ref": "#/$defs/tree"},
        "tags": {"type": "array", "prefixItems": [{"const": "v1"}, {"type": "boolean"}], "items": {"type": "null"}},
        "score": {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5}, {"type": "null"}]},
        "kind": {"oneOf": [{"type": "string", "pattern": "^[a-z]{2,4}-\\d+$"}, {"type": "integer", "minimum": 10}]},
        "ratio": {"type": "number", "minimum": 0.1, "maximum": 0.1},
        "big": {"type": "integer", "exclusiveMinimum": 1e15},
        "word": {"enum": ["naïve", "日本", "😀x", 'a"b\\c', "tab\there"]},
        "mail": {"type": "string", "format": "email", "maxLength": 30},
        "ip": {"type": "string", "format": "ipv4"},
        "day": {"type": "string", "format": "date"},
        "note": {"type": "string", "minLength": 3, "maxLength": 5},
        "extra": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "minProperties": 2,
            "maxProperties": 3,
        },
    },
    "required": ["id", "points", "tree", "word", "extra"],
    "additionalProperties": False,
}
OWN_SCHEMAS = [
    SCENE,
    NESTED,
    {"type": "array", "items": {"type": "number", "minimum": -1.5, "maximum": 2.25}, "minItems": 2, "maxItems": 5},
    {"type": "string", "pattern": "^[a-c]+x$", "maxLength": 6},
    {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
    {"type": "integer", "minimum": 123456, "maximum": 123470},
    {"type": "number", "exclusiveMinimum": 0.1, "exclusiveMaximum": 0.1000001},
    {"enum": [1.5, -2, 1e-7, 3.0]},
    {"const": {"a": [1, {"b": None}], "c": "é"}},
    {"type": "string", "minLength": 4, "maxLength": 4},
    {"type": "object", "required": ["a", "b"], "maxProperties": 3, "additionalProperties": {"type": "boolean"}},
    {"type": ["string", "null"], "pattern": "\\d{3}"},
    {
        "type": "object",
        "properties": {
            "n": {"type": "number", "not": {"type": "integer"}, "minimum": 2, "maximum": 3},
            "s": {"type": "string", "not": {"enum": ["", "a", "b"]}, "maxLength": 1},
            "c": {"if": {"minimum": 0}, "then": {"maximum": 3}, "else": {"const": -1}},
            "o": {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "string", "pattern": "^a"}]},
        },
        "required": ["n", "c"],
        "dependentRequired": {"n": ["s"], "s": ["o"]},
        "additionalProperties": {"not": {"type": ["object", "array", "string"]}},
    },
    True,
]


def generate(
    schemas: list,
    *,
    seed: int,
    max_new: int,
    ws_bias: float = 0.0,
    formats: str = "assert",
    num_beams: int = 1,
    vocab=None,
) -> list[bytes]:
    """Sample one output per row; returns the generated bytes up to (not including) EOS."""
    token_bytes, vocab_size, eos, pad = vocab or (TOK.token_bytes, TOK.vocab_size, TOK.eos_id, TOK.pad_id)
    g = torch.Generator().manual_seed(seed)
    rows = len(schemas) * num_beams
    proc = JsonSchemaLogitsProcessor(
        schemas, token_bytes, vocab_size, eos, max_new, prompt_len=2, num_beams=num_beams, pad_id=pad, formats=formats
    )
    seqs = torch.tensor([[TOK.bos_id, TOK.task_id("json")]] * rows)
    finished = torch.zeros(rows, dtype=torch.bool)
    for _ in range(max_new):
        logits = torch.randn(rows, vocab_size, generator=g) * 2.0
        if ws_bias:
            logits[:, WS_IDS] += ws_bias
        masked = proc(seqs, logits)
        gumbel = -torch.log(-torch.log(torch.rand(rows, vocab_size, generator=g).clamp_min(1e-20)))
        nxt = (masked + gumbel).argmax(-1)
        assert torch.isfinite(masked.gather(1, nxt[:, None])).all(), "sampled a masked token"
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        finished |= nxt == eos
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        if finished.all():
            break
    outs = []
    for row in seqs[:, 2:].tolist():
        data = bytearray()
        for t in row:
            if t in (eos, pad):
                break
            data += token_bytes(t)
        outs.append(bytes(data))
    return outs


def check_valid(schema, data: bytes, formats: str = "assert") -> None:
    text = data.decode("utf-8")  # strict: the mask only allows valid UTF-8
    value = json.loads(text)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER if formats == "assert" else None
    jsonschema.Draft202012Validator(schema, format_checker=checker).validate(value)


def _suite_schemas() -> list:
    out = []
    for path in sorted(DRAFT.glob("*.json")):
        for group in json.loads(path.read_text(encoding="utf-8")):
            try:
                compiled = compile_schema(group["schema"], formats="annotation")
            except UnsupportedSchemaError:
                continue
            if compiled.satisfiable and compiled.min_chars <= 64:
                out.append(group["schema"])
    return out


SUITE_SCHEMAS = _suite_schemas()


def _structural_ws_runs(text: str) -> int:
    """Longest run of whitespace outside strings."""
    longest = run = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch in " \t\n\r":
            run += 1
            longest = max(longest, run)
            continue
        run = 0
        if ch == '"':
            in_str = True
    return longest


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suite_schemas_random_logits(seed: int) -> None:
    outs = generate(SUITE_SCHEMAS, seed=seed, max_new=96, formats="annotation")
    for schema, data in zip(SUITE_SCHEMAS, outs):
        check_valid(schema, data, formats="annotation")


def test_suite_schemas_prefer_whitespace() -> None:
    outs = generate(SUITE_SCHEMAS, seed=7, max_new=96, ws_bias=12.0, formats="annotation")
    for schema, data in zip(SUITE_SCHEMAS, outs):
        check_valid(schema, data, formats="annotation")
        assert _structural_ws_runs(data.decode()) <= 2


@pytest.mark.parametrize("extra", [0, 2])
def test_suite_schemas_tiny_budget(extra: int) -> None:
    by_budget: dict[int, list] = {}
    for schema in SUITE_SCHEMAS:
        budget = compile_schema(schema, formats="annotation").min_chars + extra
        by_budget.setdefault(budget, []).append(schema)
    for budget, schemas in sorted(by_budget.items()):
        for data, schema in zip(generate(schemas, seed=budget, max_new=budget, formats="annotation"), schemas):
            assert len(data) <= budget
            check_valid(schema, data, formats="annotation")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_own_schemas_random_and_whitespace(seed: int) -> None:
    outs = generate(OWN_SCHEMAS, seed=seed, max_new=400, ws_bias=8.0 if seed % 2 else 0.0)
    for schema, data in zip(OWN_SCHEMAS, outs):
        check_valid(schema, data)


@pytest.mark.parametrize("extra", [0, 1, 5, 40])
def test_own_schemas_budget(extra: int) -> None:
    for i, schema in enumerate(OWN_SCHEMAS):
        budget = compile_schema(schema).min_chars + extra
        for seed in range(2):
            (data,) = generate([schema], seed=100 * i + seed, max_new=budget, ws_bias=6.0 * seed)
            assert len(data) <= budget
            check_valid(schema, data)


def test_beam_rows_reordered_between_steps() -> None:
    """Rows are keyed by their generated prefix: shuffling beams between steps changes nothing."""
    schemas = [SCENE, None, NESTED]
    nb = 3
    g = torch.Generator().manual_seed(0)
    proc = JsonSchemaLogitsProcessor(
        schemas, TOK.token_bytes, TOK.vocab_size, TOK.eos_id, 200, prompt_len=1, num_beams=nb
    )
    seqs = torch.full((len(schemas) * nb, 1), TOK.bos_id)
    for _ in range(40):
        logits = torch.randn(seqs.shape[0], TOK.vocab_size, generator=g)
        masked = proc(seqs, logits)
        fresh = JsonSchemaLogitsProcessor(
            schemas, TOK.token_bytes, TOK.vocab_size, TOK.eos_id, 200, prompt_len=1, num_beams=nb
        )(seqs, logits)
        torch.testing.assert_close(masked, fresh)
        assert torch.equal(masked[nb : 2 * nb], logits[nb : 2 * nb]), "rows without a schema pass through"
        nxt = masked.argmax(-1)
        # beam search: each sample's beams pick parents among that sample's beams (sample-major rows)
        parents = torch.cat([b * nb + torch.randint(0, nb, (nb,), generator=g) for b in range(len(schemas))])
        seqs = torch.cat([seqs[parents], nxt[parents][:, None]], dim=1)


def test_eos_only_when_accepting_and_only_eos_after_eos() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 2}
    proc = JsonSchemaLogitsProcessor(
        [schema], TOK.token_bytes, TOK.vocab_size, TOK.eos_id, 50, prompt_len=0, pad_id=TOK.pad_id
    )
    rec = compile_schema(schema).recogniser()
    prefix: list[int] = []
    for ch in "[1, 23]":
        out = proc(torch.tensor([prefix], dtype=torch.long).reshape(1, -1), torch.zeros(1, TOK.vocab_size))
        assert bool(torch.isfinite(out[0, TOK.eos_id])) == rec.accepting
        rec.feed(ch)
        prefix.append(ord(ch))
    out = proc(torch.tensor([prefix]), torch.zeros(1, TOK.vocab_size))
    assert torch.isfinite(out[0, TOK.eos_id])
    after = proc(torch.tensor([prefix + [TOK.eos_id]]), torch.zeros(1, TOK.vocab_size))
    assert set(torch.isfinite(after[0]).nonzero().flatten().tolist()) == {TOK.eos_id, TOK.pad_id}


def test_byte_mask_is_exact() -> None:
    """Along random generations, a byte is allowed iff feeding it keeps a completion that validates."""
    g = torch.Generator().manual_seed(3)
    for schema in [SCENE, NESTED, {"type": "string", "pattern": "^(ab|é)+$", "maxLength": 5}]:
        compiled = compile_schema(schema)
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        (data,) = generate([schema], seed=5, max_new=400)
        for cut in sorted(set(torch.randint(0, len(data) + 1, (12,), generator=g).tolist())):
            rec = compiled.recogniser()
            assert rec.feed(data[:cut])
            allowed = rec.allowed_bytes()
            for b in range(256):
                trial = rec.copy()
                ok = trial.feed(bytes([b])) and trial.min_chars_to_complete is not None
                if (allowed >> b) & 1:
                    assert ok
                    completion = trial.shortest_completion()
                    full = data[:cut] + bytes([b]) + completion
                    validator.validate(json.loads(full.decode("utf-8")))
                    assert len(completion) == trial.min_chars_to_complete
                elif b < 0x80 and ok:
                    # a byte the mask refuses can only be a number spelling outside the generation grammar
                    assert chr(b) in "eE.0123456789-+", (data[:cut], chr(b))


def _toy_vocab():
    """A multi-character vocabulary: all single bytes plus JSON chunks and split UTF-8 sequences."""
    chunks = [
        b'{"',
        b'":',
        b'",',
        b'"}',
        b"true",
        b"null",
        b"  ",
        b"\n  ",
        b"shape",
        b'"circle"',
        b"re",
        b"ed",
        b"\xc3",
        b"\xc3\xa9",
        b"\xa9x",
        b"12",
        b".5",
        b"-0",
        b"\\u00",
        b"\xe6\x97\xa5",
        b"\xe6\x97",
        b'"]',
    ]
    table = [bytes([i]) for i in range(256)] + chunks + [None, None]
    eos, pad = len(table) - 2, len(table) - 1
    return (lambda t: table[t]), len(table), eos, pad


def test_multi_character_vocabulary() -> None:
    vocab = _toy_vocab()
    schemas = [SCENE, NESTED, {"type": "array", "items": {"type": "number", "maximum": 0.75}, "minItems": 1}]
    for seed in range(3):
        outs = generate(schemas, seed=seed, max_new=300, vocab=vocab, ws_bias=4.0 * (seed == 1))
        for schema, data in zip(schemas, outs):
            check_valid(schema, data)
    # tiny budget with multi-byte tokens
    for schema in schemas:
        budget = compile_schema(schema).min_chars
        (data,) = generate([schema], seed=9, max_new=budget, vocab=vocab)
        check_valid(schema, data)


def test_multi_character_mask_matches_byte_walk() -> None:
    token_bytes, vocab_size, eos, pad = _toy_vocab()
    compiled = compile_schema(SCENE)
    proc = JsonSchemaLogitsProcessor(
        [SCENE], token_bytes, vocab_size, eos, None, prompt_len=0, pad_id=pad, max_consecutive_whitespace=100
    )
    for prefix in [b"", b'{"sha', b'{"shape":"c', b'{"answer":"\xc3', b'{"answer":"x", "count":']:
        ids = list(prefix)
        out = proc(torch.tensor([ids], dtype=torch.long).reshape(1, -1), torch.zeros(1, vocab_size))
        rec = compiled.recogniser()
        assert rec.feed(prefix)
        for t in range(vocab_size):
            data = token_bytes(t)
            if data is None:
                continue
            trial = rec.copy()
            ok = True
            for b in data:
                if not (trial.allowed_bytes() >> b) & 1 or not trial.feed(bytes([b])):
                    ok = False
                    break
            assert bool(torch.isfinite(out[0, t])) == ok, (prefix, data)


def test_unsatisfiable_and_too_small_budget_are_refused() -> None:
    with pytest.raises(SchemaError):
        JsonSchemaLogitsProcessor([False], TOK.token_bytes, TOK.vocab_size, TOK.eos_id, 10, prompt_len=0)
    with pytest.raises(SchemaError):
        JsonSchemaLogitsProcessor([SCENE], TOK.token_bytes, TOK.vocab_size, TOK.eos_id, 10, prompt_len=0)


def test_scores_of_allowed_tokens_unchanged() -> None:
    proc = JsonSchemaLogitsProcessor([SCENE], TOK.token_bytes, TOK.vocab_size, TOK.eos_id, 100, prompt_len=0)
    logits = torch.randn(1, TOK.vocab_size)
    out = proc(torch.zeros(1, 0, dtype=torch.long), logits)
    keep = torch.isfinite(out)
    assert torch.equal(out[keep], logits[keep])
    assert keep.sum() == 5 and keep[0, ord("{")]  # '{' and the four whitespace bytes
    assert not math.isfinite(out[0, TOK.eos_id].item())
