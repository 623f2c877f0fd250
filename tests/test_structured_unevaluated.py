"""``unevaluatedProperties`` / ``unevaluatedItems`` (schema/compiler.py, ``Compiler._unevaluated``) against the
reference validator.

Each schema below is one where what counts as *evaluated* depends on which in-place subschemas the instance meets:
an ``anyOf`` whose branches both hold, an ``if`` that passes without ``then``, a ``not`` (which evaluates nothing),
nested ``unevaluated*`` (which evaluates everything for the schemas around it), ``dependentSchemas``, ``contains``,
and the whole construction negated. Verdicts must equal ``jsonschema``'s on random instances drawn from a pool that
hits every declared name; random-logit generation must always give a valid instance.
"""

from __future__ import annotations

import itertools
import json
import random

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema

from .test_structured_generate import _single_thread, check_valid, generate  # noqa: F401  (autouse fixture)

SCHEMAS = [
    # anyOf: an instance meeting both branches has both names evaluated
    {
        "type": "object",
        "anyOf": [
            {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ],
        "unevaluatedProperties": False,
    },
    # the same, with unevaluated names allowed when they are booleans, and a pattern that evaluates "x..." names
    {
        "patternProperties": {"^x": {"type": "null"}},
        "anyOf": [{"properties": {"a": True}}, {"properties": {"b": {"const": 1}}}, {"type": "object"}],
        "unevaluatedProperties": {"type": "boolean"},
    },
    # if without then/else: its annotations count when it passes, a failed if's do not
    {
        "if": {"properties": {"kind": {"const": "box"}}, "required": ["kind"]},
        "then": {"properties": {"size": {"type": "integer"}}},
        "else": {"properties": {"label": {"type": "string"}}},
        "unevaluatedProperties": False,
    },
    # not evaluates nothing; dependentSchemas evaluates when it applies
    {
        "properties": {"a": True},
        "not": {"properties": {"b": {"const": 0}}, "required": ["b"]},
        "dependentSchemas": {"a": {"properties": {"c": {"type": "integer"}}}},
        "unevaluatedProperties": False,
    },
    # nested: the inner unevaluatedProperties evaluates every name for the outer one
    {
        "allOf": [{"properties": {"a": True}, "unevaluatedProperties": {"type": "integer"}}],
        "properties": {"b": True},
        "unevaluatedProperties": False,
    },
    # a $ref target's annotations count; a sibling additionalProperties evaluates everything
    {
        "$defs": {"base": {"properties": {"a": {"type": "integer"}}}},
        "oneOf": [{"$ref": "#/$defs/base"}, {"type": "array"}],
        "properties": {"b": True},
        "unevaluatedProperties": False,
    },
    # the whole construction negated
    # (where the names are finitely many: the complement of "no other name" is "one of the others is present")
    {
        "properties": {"a": {"type": "integer"}, "b": True},
        "additionalProperties": False,
        "not": {"properties": {"a": True}, "unevaluatedProperties": False},
    },
    # unevaluatedItems: prefixItems, an anyOf of two prefix lengths, contains
    {
        "type": "array",
        "anyOf": [{"prefixItems": [{"type": "integer"}]}, {"prefixItems": [True, {"type": "string"}]}],
        "unevaluatedItems": False,
    },
    {"prefixItems": [{"type": "string"}], "contains": {"type": "null"}, "unevaluatedItems": {"type": "integer"}},
    {"allOf": [{"items": {"type": "integer"}}], "unevaluatedItems": False},
    # both at once, inside a property
    {
        "properties": {
            "v": {
                "anyOf": [{"properties": {"a": True}}, {"prefixItems": [True]}],
                "unevaluatedProperties": False,
                "unevaluatedItems": {"type": "boolean"},
            }
        }
    },
]

VALUES = [None, True, False, 0, 1, 2.5, "", "s", "box", [], [1], [None], ["s", "t"], [1, "s", None], {}]


def declared_names(schema) -> list[str]:
    """Every name under a ``properties`` of the schema, plus "x" and "z" (a pattern hit and an undeclared name)."""
    out = {"x", "z"}
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.update(node.get("properties", {}))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(out)


def random_instance(rng: random.Random, names: list[str], depth: int = 0):
    r = rng.random()
    if depth < 2 and r < 0.55:
        return {
            k: random_instance(rng, names, depth + 1) for k in rng.sample(names, rng.randint(0, min(3, len(names))))
        }
    if depth < 2 and r < 0.75:
        return [random_instance(rng, names, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice(VALUES)


@pytest.mark.parametrize("schema", SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_verdicts_match_reference_validator(schema) -> None:
    compiled = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    rng = random.Random(11)
    seen = {True: 0, False: 0}
    names = declared_names(schema)
    for _ in range(1500):
        value = random_instance(rng, names)
        expected = validator.is_valid(value)
        seen[expected] += 1
        for text in (json.dumps(value), json.dumps(value, indent=2)):
            assert compiled.accepts(text) == expected, text
    assert seen[True] and seen[False]  # the pool reaches both verdicts


def test_anyof_with_both_branches_met_evaluates_both_names() -> None:
    """The case a plain union of ``anyOf`` branches gets wrong: each branch alone evaluates one name."""
    compiled = compile_schema(SCHEMAS[0])
    assert compiled.accepts('{"a": 1, "b": "s"}')
    assert not compiled.accepts('{"a": 1, "b": 2}')  # b fails its branch, so only a is evaluated
    assert not compiled.accepts('{"a": 1, "c": 0}')


@pytest.mark.parametrize("seed", [0, 1])
def test_random_logit_generation_always_validates(seed: int) -> None:
    for ws_bias, max_new in itertools.product((0.0, 8.0), (40, 160)):
        for schema, data in zip(SCHEMAS, generate(SCHEMAS, seed=seed, max_new=max_new, ws_bias=ws_bias)):
            check_valid(schema, data)


def test_shortest_budget() -> None:
    for schema in SCHEMAS:
        (data,) = generate([schema], seed=3, max_new=compile_schema(schema).min_chars)
        check_valid(schema, data)


def test_still_refused_with_keyword_and_path() -> None:
    with pytest.raises(UnsupportedSchemaError) as e:  # a complement over open names that patterns classify
        compile_schema({"not": {"patternProperties": {"^x": True}, "unevaluatedProperties": False}})
    assert (e.value.keyword, e.value.path) == ("unevaluatedProperties", "#/not/unevaluatedProperties")
    many = {"anyOf": [{"properties": {f"p{i}": True}} for i in range(7)], "unevaluatedProperties": False}
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema(many)
    assert e.value.keyword == "anyOf" and e.value.path == "#/anyOf"


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"not": {"const": {"a": 1}}, "unevaluatedProperties": False}, {"a": 2}),
        ({"not": {"const": [1]}, "unevaluatedItems": False}, [2]),
        ({"not": {"enum": [{"a": 1}, [1]]}, "unevaluatedProperties": False, "unevaluatedItems": False}, ["s"]),
        ({"if": {"const": [1]}, "then": {"prefixItems": [True]}, "unevaluatedItems": False}, ["s"]),
        ({"oneOf": [{"const": {"a": 1}}, {"type": "object"}], "unevaluatedProperties": False}, {"a": 2}),
        ({"dependentSchemas": {"a": {"not": {"const": {"a": 1}}}}, "unevaluatedProperties": False}, {"a": 2}),
    ],
)
def test_complements_evaluate_nothing(schema, instance) -> None:
    """The complement of an object or array ``const`` is written with ``properties`` / ``prefixItems`` in nested
    synthetic schemas (negation.py): none of them may count as evaluating a name or an item (found in review)."""
    compiled = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert compiled.accepts(json.dumps(instance)) == validator.is_valid(instance) is False


def test_no_valid_instance_means_unsatisfiable() -> None:
    """``const`` evaluates nothing, so ``a`` is unevaluated whether the ``if`` passes or not."""
    schema = {"type": "object", "if": {"const": {"a": 1}}, "unevaluatedProperties": False, "required": ["a"]}
    assert not compile_schema(schema).satisfiable


# A complement evaluates nothing: `not (not S)` must not bring S's annotations back (found in review: read as S itself,
# a failed `if` or a oneOf's "not the others" evaluated S's names and items, and the valid rejected in the other order)
A_INT = {"properties": {"a": {"type": "integer"}}}
DOUBLE_NEGATIONS = [
    {"$defs": {"A": A_INT}, "if": {"not": {"$ref": "#/$defs/A"}}, "then": {"required": ["c"]},
     "properties": {"c": True}, "unevaluatedProperties": False},
    {"if": {"not": {"allOf": [A_INT]}}, "then": {"required": ["c"]}, "properties": {"c": True},
     "unevaluatedProperties": False},
    {"$defs": {"A": A_INT}, "oneOf": [{"not": {"$ref": "#/$defs/A"}}, {"required": ["a"]}],
     "unevaluatedProperties": False},
    {"$defs": {"A": A_INT}, "allOf": [{"not": {"not": {"$ref": "#/$defs/A"}}}, {"$ref": "#/$defs/A"}],
     "unevaluatedProperties": False},
    {"$defs": {"P": {"prefixItems": [{"type": "integer"}]}}, "if": {"not": {"$ref": "#/$defs/P"}},
     "then": {"maxItems": 0}, "unevaluatedItems": False},
]  # fmt: skip


@pytest.mark.parametrize("schema", DOUBLE_NEGATIONS, ids=[f"schema{i}" for i in range(len(DOUBLE_NEGATIONS))])
def test_a_double_complement_evaluates_nothing(schema) -> None:
    compiled = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    values = [{}, {"a": 1}, {"a": "x"}, {"b": 1}, {"a": 1, "b": 2}, {"c": 1}, {"a": 1, "c": 1}, [], [1], ["x"], [1, 2]]
    for value in values:
        for text in (json.dumps(value), json.dumps(value, indent=1)):
            assert compiled.accepts(text) == validator.is_valid(value), text
