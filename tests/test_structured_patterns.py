"""``patternProperties`` and ``propertyNames`` (schema/patternkeys.py) against the reference validator.

* verdicts: the recogniser accepts exactly what ``jsonschema`` validates, on objects whose names are drawn from a
  pool that hits every pattern, misses them all, and includes names outside the generation alphabet (a newline, a
  non-ASCII letter, a non-ASCII digit);
* generation: random-logit sampling (also whitespace-loving, also at the shortest possible budget) always yields a
  valid instance, and never a duplicate name;
* the shortest instance is the hand-computed one, so costs are neither under- nor over-estimated.
"""

from __future__ import annotations

import itertools
import json
import random

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema

from .test_structured_generate import _single_thread, check_valid, check_verdicts, generate  # noqa: F401  (autouse fixture)

JOB = {"type": "object", "properties": {"runs-on": {"type": "string"}}, "required": ["runs-on"]}

# (schema, its shortest instance in bytes, worked out by hand)
SCHEMAS = [
    # a GitHub-workflow-like map: at least one job, named by a pattern, nothing else
    (
        {
            "type": "object",
            "properties": {
                "jobs": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "patternProperties": {"^[_a-zA-Z][a-zA-Z0-9_-]*$": JOB},
                }
            },
            "required": ["jobs"],
        },
        len('{"jobs":{"_":{"runs-on":""}}}'),
    ),  # fmt: skip
    # two overlapping patterns: a name matching both must satisfy both
    (
        {
            "type": "object",
            "patternProperties": {"^x": {"type": "integer"}, "y$": {"minimum": 5}},
            "additionalProperties": False,
            "required": ["xy"],
        },
        len('{"xy":5}'),
    ),  # fmt: skip
    # declared names still meet the patterns they match; others fall to additionalProperties
    (
        {
            "type": "object",
            "properties": {"ab": {"type": "string"}},
            "patternProperties": {"^a": {"maxLength": 2}},
            "additionalProperties": {"type": "boolean"},
            "minProperties": 2,
        },
        len('{"a":0,"aa":0}'),  # both names match ^a: any value of at most 2 characters if a string
    ),  # fmt: skip
    # propertyNames alone: a pattern and a length (no "$": Python's re lets it match before a final newline, which
    # the pattern subset refuses for every string, names and values alike; see schema/regex.py)
    (
        {"type": "object", "propertyNames": {"pattern": "^[a-z]", "maxLength": 3}, "minProperties": 2},
        len('{"a":0,"b":0}'),
    ),  # fmt: skip
    # propertyNames by enum, with values constrained by patterns
    (
        {
            "type": "object",
            "propertyNames": {"enum": ["alpha", "beta", "gamma"]},
            "patternProperties": {"a$": {"type": "array", "minItems": 1}},
            "minProperties": 1,
        },
        len('{"beta":[0]}'),
    ),  # fmt: skip
    # propertyNames false: only the empty object
    ({"type": "object", "propertyNames": False}, len("{}")),
    # a required name that propertyNames forbids makes objects impossible (here: a string remains)
    ({"type": ["object", "string"], "propertyNames": {"maxLength": 1}, "required": ["long"]}, len('""')),
    # minProperties beyond the declared names, with a small finite pattern language and additionalProperties false
    (
        {
            "type": "object",
            "patternProperties": {"^(a|b|c)$": {"type": "null"}},
            "additionalProperties": False,
            "minProperties": 3,
        },
        len('{"a":null,"b":null,"c":null}'),
    ),  # fmt: skip
    # dependentRequired and a pattern together
    (
        {
            "type": "object",
            "patternProperties": {"^n": {"type": "number"}},
            "dependentRequired": {"n1": ["n2"]},
            "required": ["n1"],
        },
        len('{"n1":0,"n2":0}'),
    ),  # fmt: skip
    # propertyNames over a union of string schemas with different lengths (as Mergify's schema has)
    (
        {
            "type": "object",
            "propertyNames": {"anyOf": [{"minLength": 2, "maxLength": 4, "pattern": "^[a-z]"}, {"pattern": "[*?]"}]},
            "minProperties": 1,
        },
        len('{"*":0}'),
    ),
    # the same under a common maxLength (Mergify's has one beside its anyOf): one length counter for the union
    (
        {
            "type": "object",
            "propertyNames": {"maxLength": 3, "anyOf": [{"minLength": 2, "pattern": "^[a-z]"}, {"pattern": "[*?]"}]},
            "minProperties": 1,
        },
        len('{"*":0}'),
    ),
]

NAMES = ["*", "a?b", "jobs", "runs-on", "_", "build", "9x", "x", "xy", "y", "ab", "abc", "a", "b", "c", "alpha", "beta", "", "n1",
         "n2", "nope", "long", "x\n", "é", "٣", "日本", "a-b"]  # fmt: skip
VALUES = [None, True, 0, 5, 7.5, "", "s", "long string", [], [1], {}, {"runs-on": "linux"}, {"runs-on": 1}]


def random_instance(rng: random.Random, depth: int = 0):
    if depth < 2 and rng.random() < 0.8:
        return {k: random_instance(rng, depth + 1) for k in rng.sample(NAMES, rng.randint(0, 4))}
    return rng.choice(VALUES)


@pytest.mark.parametrize(("schema", "shortest"), SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_verdicts_match_reference_validator(schema, shortest) -> None:
    compiled = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    rng = random.Random(7)
    valid = 0
    for _ in range(600):
        value = random_instance(rng)
        expected = validator.is_valid(value)
        valid += expected
        for text in (json.dumps(value), json.dumps(value, indent=2, ensure_ascii=False)):
            assert compiled.accepts(text) == expected, text
    assert compiled.accepts('{"jobs": {"a": {"runs-on": "x"}}}') == validator.is_valid(
        {"jobs": {"a": {"runs-on": "x"}}}
    )


@pytest.mark.parametrize(("schema", "shortest"), SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_shortest_instance_is_the_hand_computed_one(schema, shortest) -> None:
    compiled = compile_schema(schema)
    assert compiled.min_chars == shortest
    (data,) = generate([schema], seed=0, max_new=shortest)
    check_valid(schema, data)
    assert len(data) == shortest


@pytest.mark.parametrize("seed", [0, 1])
def test_random_logit_generation_always_validates(seed: int) -> None:
    schemas = [s for s, _ in SCHEMAS]
    for ws_bias, max_new in itertools.product((0.0, 8.0), (48, 160)):
        for schema, data in zip(schemas, generate(schemas, seed=seed, max_new=max_new, ws_bias=ws_bias)):
            check_valid(schema, data)
            pairs = json.loads(data.decode("utf-8"), object_pairs_hook=lambda kv: kv)
            _assert_no_duplicate_names(pairs)


def _assert_no_duplicate_names(node) -> None:
    if isinstance(node, list) and node and all(isinstance(x, tuple) and len(x) == 2 for x in node):
        names = [k for k, _ in node]
        assert len(names) == len(set(names)), names
        for _, v in node:
            _assert_no_duplicate_names(v)
    elif isinstance(node, list):
        for v in node:
            _assert_no_duplicate_names(v)


def test_names_the_regex_dialects_read_differently_are_refused() -> None:
    """A declared name on which ECMA-262 (here) and Python's re (the reference validator) disagree fails closed."""
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema({"properties": {"٣": {}}, "patternProperties": {"^\\d$": {"type": "integer"}}})
    assert e.value.keyword == "patternProperties"


def test_names_outside_the_alphabet_are_judged_whole_and_never_generated() -> None:
    schema = {"type": "object", "patternProperties": {"^\\w+$": {"type": "integer"}}, "additionalProperties": False}
    compiled = compile_schema(schema)
    assert not compiled.accepts('{"é": 1}')  # ^\w+$: Python's re matches "é", ECMA-262 does not: refused
    assert compiled.accepts('{"a_1": 1}') and not compiled.accepts('{"a_1": "x"}')
    schema = {"type": "object", "patternProperties": {"^a": {"type": "integer"}}}
    compiled = compile_schema(schema)
    assert compiled.accepts('{"b\\n": "free"}') and compiled.accepts('{"é": []}')  # both dialects agree: no match
    assert compiled.accepts('{"a\\n": 1}') and not compiled.accepts('{"a\\n": "x"}')


# oneOf over objects: the shapes real CI schemas use (issue 24's corpus), each checked against the reference validator
LOGIC = {  # CircleCI's "logic": a scalar, or exactly one operator, or an object without operator names (recursive)
    "$defs": {"logic": {"oneOf": [
        {"anyOf": [{"type": "string", "pattern": "^<<"}, {"type": "boolean"}, {"type": "number"}, {"type": "string"}]},
        {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
         "properties": {"and": {"type": "array", "items": {"$ref": "#/$defs/logic"}}, "not": {"$ref": "#/$defs/logic"}}},
        {"type": "object", "propertyNames": {"not": {"pattern": "^(and|not)$"}}},
    ]}},
    "$ref": "#/$defs/logic",
}  # fmt: skip
CLOSED_OVERLAP = {  # two closed objects sharing a name: exactly one must match (the other's extra name decides)
    "oneOf": [
        {"type": "object", "additionalProperties": False, "properties": {"image": {"type": "string"}, "pull": {}},
         "required": ["image"]},
        {"type": "object", "additionalProperties": False, "properties": {"image": {}, "secrets": {}},
         "required": ["image"]},
    ]
}  # fmt: skip
NOTIFY = {  # Buildkite's notify: closed objects, each with its own optional name and a shared optional "if"
    "$defs": {"if": {"type": "string"}},
    "type": "array",
    "items": {"oneOf": [
        {"enum": ["github_check"]},
        *({"type": "object", "additionalProperties": False,
           "properties": {name: {"type": "string"}, "if": {"$ref": "#/$defs/if"}}} for name in ("email", "slack", "url")),
    ]},
}  # fmt: skip
ONEOF_INSTANCES = [
    True, "x", 3, {}, {"and": []}, {"and": [True, {"not": 1}]}, {"and": [], "not": 1}, {"not": {"and": [{}]}},
    {"x": 1}, {"and": 1}, {"image": "a"}, {"image": 1}, {"image": "a", "pull": 1}, {"image": 1, "secrets": 2},
    {"image": "a", "pull": 1, "secrets": 2}, {"pull": 1}, {"image": "a", "other": 0},
    [], ["github_check"], [{}], [{"email": "a"}], [{"email": "a", "if": "b"}], [{"if": "b"}], [{"email": 1}],
    [{"email": "a", "slack": "b"}], [{"url": "u", "if": 3}],
]  # fmt: skip


@pytest.mark.parametrize("schema", [LOGIC, CLOSED_OVERLAP, NOTIFY], ids=["recursive-logic", "closed-overlap", "notify"])
def test_oneof_over_objects_matches_reference_validator(schema) -> None:
    check_verdicts(schema, ONEOF_INSTANCES, lambda v: (json.dumps(v),))
    for data in generate([schema] * 6, seed=3, max_new=64):
        check_valid(schema, data)


@pytest.mark.parametrize(
    ("schema", "values"),
    [
        # "\d" limits generated names to ASCII; "é" still gets its pattern's schema when fed (escaped or raw)
        ({"type": "object", "patternProperties": {"é": {"type": "integer"}, "\\d": {}}, "additionalProperties": False},
         [{"é": 1}, {"é": "x"}, {"1": None}, {"ab": 1}]),
        # the only names allowed contain a newline: none is generated, every one is judged when fed
        ({"patternProperties": {"\n": {"type": "integer"}}, "additionalProperties": False},
         [{"x\ny": 1}, {"x\ny": "s"}, {"a": 1}, {}]),
    ],
)  # fmt: skip
def test_names_outside_the_alphabet_get_their_patterns_schemas(schema, values) -> None:
    compiled = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for value in values:
        for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
            assert compiled.accepts(text) == validator.is_valid(value), text
