"""Patterns that the two regex engines read differently stay sound where they must *not* match.

ECMA-262 (the specification's dialect; ``regress`` here) and Python's ``re`` (the ``jsonschema`` validator's) disagree
on ``\\d \\w \\s`` (ASCII vs Unicode), ``.`` (CR, LS, PS), ``$`` (Python also matches before a final newline) and
``\\p{..}`` (Unicode versions; Python has none). Where a pattern must match, the compiler takes what both engines
match; where it must not (``not``, a failed ``if``, the other branches of a ``oneOf``, ``maxContains``, the proofs
that ``oneOf`` branches are disjoint), it must exclude what *either* engine matches. Every string the recogniser
accepts is checked against both engines' validators: no accepted instance may be invalid under either.
"""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
from jsonschema import validators

from omnifuse.schema import SchemaError, compile_schema

regress = pytest.importorskip("regress")


def ecma_validator(schema):
    """The 2020-12 validator with ``pattern`` run by regress (ECMA-262, u flag) instead of Python's ``re``."""

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and regress.Regex(patrn, "u").find(instance) is None:
            yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(validator, patterns, instance, schema):
        if validator.is_type(instance, "object"):
            for patrn, subschema in patterns.items():
                for name, value in instance.items():
                    if regress.Regex(patrn, "u").find(name) is not None:
                        yield from validator.descend(value, subschema, path=name, schema_path=patrn)

    return validators.extend(
        jsonschema.Draft202012Validator, {"pattern": pattern, "patternProperties": pattern_properties}
    )(schema)


def valid_under_both(schema, instance) -> bool:
    ecma = ecma_validator(schema).is_valid(instance)
    if "\\p" in json.dumps(schema) or "\\P" in json.dumps(schema):
        return ecma  # Python's re cannot read \p: the ECMA-262 engine is the only reader
    return ecma and jsonschema.Draft202012Validator(schema).is_valid(instance)


TRICKY = ["a", "1", "٣", "é", "ʕ", "€", "\u1c89", "\r", "\n", "a\n", "\u2028", "\u3000", "\x1c", " ", "_", "Z", ""]

CASES = [
    ({"type": "string", "not": {"pattern": "^\\p{L}$"}}, "ʕ"),
    ({"type": "string", "not": {"pattern": "\\P{L}"}}, "€"),
    ({"type": "string", "if": {"pattern": "^\\p{Lu}$"}, "then": {"maxLength": 0}}, "\u1c89"),
    ({"type": "string", "oneOf": [{"const": "\u1c89"}, {"pattern": "^\\p{Lu}$"}]}, "\u1c89"),
    ({"type": "string", "oneOf": [{"enum": ["€"]}, {"pattern": "^\\P{L}$"}]}, "€"),
    ({"type": "array", "contains": {"type": "string", "pattern": "^\\p{L}$"}, "minContains": 0, "maxContains": 0}, ["ʕ"]),
    ({"type": "object", "dependentSchemas": {"a": {"not": {"properties": {"b": {"pattern": "^\\p{L}$"}}}}}},
     {"a": 1, "b": "ʕ"}),
    ({"not": {"pattern": "^\\d$"}}, "٣"),
    ({"not": {"pattern": "^.$"}}, "\r"),
    ({"not": {"pattern": "^.$"}}, "\u2028"),
    ({"not": {"pattern": "^\\w$"}}, "é"),
    ({"not": {"pattern": "^\\s$"}}, "\u3000"),
    ({"oneOf": [{"pattern": "^é$"}, {"pattern": "^\\w$"}]}, "é"),
    ({"not": {"pattern": "^a$"}}, "a\n"),
    ({"oneOf": [{"pattern": "^a$"}, {"const": "a\n"}]}, "a\n"),
    ({"type": "string", "pattern": "^\\S$"}, "\x1c"),
    # a branch whose strings only the wider reading admits is not empty to the oneOf proofs
    ({"oneOf": [{"enum": ["٣"], "pattern": "^\\d$"}, {"const": "٣"}]}, "٣"),
    ({"oneOf": [{"enum": ["a\n"], "pattern": "^a$"}, {"const": "a\n"}]}, "a\n"),
    ({"oneOf": [{"type": "object", "required": ["a"], "properties": {"a": {"enum": ["٣"], "pattern": "^\\d$"}}},
                {"type": "object", "required": ["a"], "properties": {"a": {"const": "٣"}}}]}, {"a": "٣"}),
    # names: a name neither reading settles is not judged by the lower one alone
    ({"patternProperties": {"^\\S$": False}}, {"\x1c": 1}),
    ({"patternProperties": {"^\\D$": False}}, {"٣": 1}),
    ({"patternProperties": {"^\\W$": False}}, {"é": 1}),
    ({"patternProperties": {"^\\S$": {"type": "integer"}}, "unevaluatedProperties": True}, {"\x1c": "x"}),
    ({"oneOf": [{"type": "object", "minProperties": 1, "patternProperties": {"\\n": True},
                 "additionalProperties": False}, {"type": "object", "additionalProperties": {"const": 1}}]}, {"\n": 1}),
]  # fmt: skip


@pytest.mark.parametrize(("schema", "instance"), CASES)
def test_what_either_engine_matches_is_excluded_under_a_complement(schema, instance) -> None:
    """Each a string one engine matches and the other does not, where the schema needs the pattern not to match (a
    review found every one of these accepted)."""
    assert not valid_under_both(schema, instance)
    try:
        compiled = compile_schema(schema)
    except SchemaError:
        return  # refused: fails closed
    assert not compiled.accepts(json.dumps(instance))


@pytest.mark.parametrize(
    "pattern",
    ["^[^\\x00-\\p{Zl}]$", "^[\\p{Zl}-\\u3000]$", "^[\\d-z]$", "^a{,2}$", "^a{,}$", "^\\p{L}\\-$", "^[\\p{L}\\:]$", "^\\p{L}{$",
     "^\\p{L}}$", "^\\p{L}]$"],
)  # fmt: skip
def test_patterns_the_engines_cannot_agree_on_are_refused(pattern: str) -> None:
    """A class escape as a range end; ``{,n}`` (Python: ``{0,n}``, ECMA-262: text); escapes and lone braces that the
    u flag, which ``\\p`` needs, makes errors."""
    with pytest.raises(SchemaError):
        compile_schema({"type": "string", "pattern": pattern})


ATOMS = ["a", "é", "1", "\\d", "\\w", "\\s", "\\D", "\\W", "\\S", ".", "[^a]", "[^\\d]", "[\\w.]", "\\p{L}", "\\P{L}",
         "\\p{Lu}", "[^\\p{N}]", "\\p{Cc}"]  # fmt: skip


def random_pattern(rng: random.Random) -> str:
    parts = [rng.choice(ATOMS) + rng.choice(["", "", "?", "+", "*", "{1,2}"]) for _ in range(rng.randint(1, 3))]
    body = "".join(parts)
    if rng.random() < 0.3:
        body = f"{body}|{rng.choice(ATOMS)}"
    return ("^" if rng.random() < 0.7 else "") + f"(?:{body})" + ("$" if rng.random() < 0.7 else "")


def random_schema(rng: random.Random, pattern: str) -> dict:
    other = random_pattern(rng)
    return rng.choice(
        [
            {"type": "string", "not": {"pattern": pattern}},
            {"type": "string", "oneOf": [{"pattern": pattern}, {"pattern": other}]},
            {"type": "string", "oneOf": [{"pattern": pattern}, {"enum": rng.sample(TRICKY, 3)}]},
            {"type": "string", "if": {"pattern": pattern}, "then": {"maxLength": 0}, "else": {"pattern": other}},
            {"type": "array", "items": {"type": "string"}, "contains": {"pattern": pattern}, "maxContains": 0},
        ]
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_patterns_in_negative_places_accept_only_what_both_engines_validate(seed: int) -> None:
    rng = random.Random(seed)
    checked = 0
    for _ in range(60):
        schema = random_schema(rng, random_pattern(rng))
        try:
            compiled = compile_schema(schema)
        except SchemaError:
            continue
        for _ in range(12):
            text = "".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 3)))
            instance = [text] if schema.get("type") == "array" else text
            if compiled.accepts(json.dumps(instance)):
                checked += 1
                assert valid_under_both(schema, instance), (schema, instance)
    assert checked > 50  # the check ran on accepted instances, not only on refusals
