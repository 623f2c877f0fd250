"""``uniqueItems`` over scalar items (schema/unique.py; arrays and objects as items:
test_structured_unique_compound.py) and ``contains`` / ``minContains`` / ``maxContains`` against the reference
validator: verdicts on arrays with repeats in every spelling JSON allows (``1`` / ``1.0``, escaped and raw strings)
and with too few / too many matching items, and random-logit generation that never repeats an item, never opens an
item no value is left for, reaches the matches it needs, and fits every budget (the shortest one included)."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema

from .test_structured_generate import _single_thread, check_generation, check_valid, check_verdicts, generate  # noqa: F401  (autouse fixture)

SCHEMAS = [
    {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}, "uniqueItems": True},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True},  # at most three items
    {"type": "array", "items": {"type": "string", "pattern": "^[ab]$"}, "uniqueItems": True, "minItems": 1},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}, "uniqueItems": True, "maxItems": 3},
    {
        "type": "array",
        "prefixItems": [{"const": "x"}],
        "items": {"type": "string", "maxLength": 1},
        "uniqueItems": True,
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
        "required": ["tags"],
    },  # fmt: skip
    {"type": "array", "contains": {"type": "integer", "minimum": 2}},
    {"type": "array", "contains": {"const": 1}, "minContains": 2, "maxContains": 3, "maxItems": 5},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "contains": {"type": "number"}},
    {
        "type": "array",
        "items": {"type": ["string", "integer"]},
        "contains": {"type": "string"},
        "minContains": 0,
        "maxContains": 1,
        "uniqueItems": True,
    },  # fmt: skip
    {
        "type": "array",
        "items": {"type": "string"},
        "contains": {"enum": ["a", "b"]},
        "uniqueItems": True,
        "maxItems": 3,
    },
]
SCHEMAS += [  # complements (negation.py)
    {"not": {"contains": {"type": "integer", "minimum": 2}}},
    {"type": "array", "not": {"contains": {"const": 1}, "minContains": 2, "maxContains": 3}},
    {"type": "array", "not": {"items": {"type": ["string", "null"]}}},
    {"if": {"contains": {"const": "a"}}, "then": {"maxItems": 2}, "else": {"items": {"type": "integer"}}},
    {"oneOf": [{"type": "array", "maxItems": 1}, {"contains": {"type": "string"}}]},
]
SCALARS = [None, True, False, 0, 1, 1.0, 2, 3, -1, 2.5, "", "a", "b", "ab", "x", "é"]


def random_array(rng: random.Random) -> list:
    out = [rng.choice(SCALARS) for _ in range(rng.randint(0, 5))]
    if out and rng.random() < 0.5:
        out.append(rng.choice(out))  # a repeat
    return out


@pytest.mark.parametrize("schema", SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_verdicts_match_reference_validator(schema) -> None:
    rng = random.Random(11)
    values = [random_array(rng) for _ in range(400)]
    if "properties" in schema:
        values = [{"tags": v} for v in values]
    check_verdicts(schema, values, lambda v: (json.dumps(v), json.dumps(v, indent=1, ensure_ascii=False)))
    compiled = compile_schema(schema)
    if "items" in schema and schema["items"].get("type") == ["string", "number", "boolean", "null"]:
        assert not compiled.accepts("[1, 1.0]") and not compiled.accepts('["a", "\\u0061"]')
        assert compiled.accepts("[1, true]") and compiled.accepts("[0, false, null]")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generation_never_repeats_and_always_validates(seed: int) -> None:
    check_generation(SCHEMAS, seed=seed, max_new=64)


def test_exhausted_items_close_the_array() -> None:
    """Three allowed values, no maxItems: after all three, a comma is no longer allowed."""
    compiled = compile_schema(SCHEMAS[1])
    rec = compiled.recogniser()
    assert rec.feed("[3, 1, 2")
    assert rec.shortest_completion() == b"]"
    assert not compiled.accepts("[3, 1, 2, ") and not rec.copy().feed(",")


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "minItems": 2}, "minItems"),
        (
            {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "contains": {}, "minContains": 2},
            "minContains",
        ),
    ],
)
def test_what_stays_refused(schema, reason: str) -> None:
    with pytest.raises(UnsupportedSchemaError, match=reason) as e:
        compile_schema(schema)
    assert e.value.keyword == "uniqueItems"


def test_negated_contains_and_items() -> None:
    """Complements: ``contains`` -> fewer than minContains or more than maxContains matches (``contains: {}`` still
    asserts one item: its complement is the empty array), ``items: S`` -> some item fails S; non-arrays satisfy
    both keywords, so their complements hold for arrays only."""
    empty_only = compile_schema({"not": {"contains": {}}})
    assert empty_only.accepts("[]") and not empty_only.accepts("[1]") and not empty_only.accepts("5")
    some_fail = compile_schema({"not": {"items": {"type": "integer"}}})
    assert some_fail.accepts('[1, "a"]') and not some_fail.accepts("[1, 2]") and not some_fail.accepts('"a"')
    huge = compile_schema({"type": "array", "not": {"contains": {"const": 1}, "minContains": 0, "maxContains": 1e300}})
    assert (
        huge.min_chars == 2 * int(1e300) + 3
    )  # int(1e300) + 1 matching items, counted exactly (as floats, +1 is lost)
    with pytest.raises(UnsupportedSchemaError, match="'items'"):  # "some item past the prefix fails"
        compile_schema({"not": {"prefixItems": [True], "items": {"type": "integer"}}})


def test_unique_with_contains_past_prefix_positions_is_refused() -> None:
    """The match still needed may lie past the prefix positions: several different items, not costed: refused."""
    schema = {"type": "array", "uniqueItems": True, "prefixItems": [{"enum": ["a", "b"]}, {"const": "a"}],
              "items": {"const": "z"}, "contains": {"const": "z"}}  # fmt: skip
    with pytest.raises(UnsupportedSchemaError, match="prefixItems"):
        compile_schema(schema)


def test_enum_values_beyond_the_generation_modulus_stay_valid() -> None:
    """An enum value that is a multiple by the validator's float arithmetic is accepted, not cut by the modulus."""
    schema = {"enum": [1152921504606846976], "multipleOf": 0.4}
    compiled = compile_schema(schema)
    assert compiled.accepts("1152921504606846976") == jsonschema.Draft202012Validator(schema).is_valid(
        1152921504606846976
    )
    assert compiled.accepts("1152921504606846976")
