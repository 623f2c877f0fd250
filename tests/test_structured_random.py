"""Random schemas (a seeded grammar over the supported keywords) against the reference validator.

* verdicts: the recogniser accepts exactly the texts whose value ``jsonschema`` validates;
* generator guarantee: random-logit generation (and generation at the shortest possible budget) always yields
  text that parses and validates.
"""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema

from .test_structured_generate import _single_thread, check_valid, generate  # noqa: F401  (autouse fixture)


def random_schema(rng: random.Random, depth: int = 0):
    if depth > 2 or rng.random() < 0.25:
        kind = rng.choice(["int", "num", "str", "bool", "null", "enum", "const"])
        if kind == "int":
            s = {"type": "integer"}
            if rng.random() < 0.5:
                s["minimum"] = rng.randint(-50, 50)
            if rng.random() < 0.5:
                s["exclusiveMaximum"] = rng.randint(-20, 200)
            if rng.random() < 0.25:
                s["multipleOf"] = rng.choice([2, 3, 7, 2.5, 0.5])
            return s
        if kind == "num":
            s = {"type": "number"}
            if rng.random() < 0.5:
                s["exclusiveMinimum"] = round(rng.uniform(-5, 5), 2)
            if rng.random() < 0.5:
                s["maximum"] = round(rng.uniform(-5, 50), 3)
            if rng.random() < 0.3:
                s["not"] = {"type": "integer"}
            if rng.random() < 0.2:
                s["multipleOf"] = rng.choice([0.5, 1.5, 0.1, 4])
            return s
        if kind == "str":
            s = {"type": "string"}
            if rng.random() < 0.4:
                s["minLength"] = rng.randint(0, 4)
            if rng.random() < 0.4:
                s["maxLength"] = rng.randint(0, 6)
            if rng.random() < 0.3:
                s["pattern"] = rng.choice(["^a+b?$", "x", "^[0-9]{2}", "^(ab|c)*$", "é"])
            if rng.random() < 0.2:
                s["not"] = {"enum": ["a", "ab", ""]}
            return s
        if kind == "bool":
            return {"type": "boolean"}
        if kind == "null":
            return {"type": "null"}
        if kind == "enum":
            return {"enum": rng.sample(["a", 1, 2.5, None, True, [1, "x"], {"k": 0}, "日本"], rng.randint(1, 4))}
        return {"const": rng.choice(["z", 0, -1.25, False, [None], {"a": [1]}])}
    kind = rng.choice(["obj", "arr", "anyOf", "oneOf", "allOf", "if", "not"])
    if kind == "obj":
        props = {k: random_schema(rng, depth + 1) for k in rng.sample(["a", "b", "c", "dd"], rng.randint(0, 3))}
        s = {"type": "object", "properties": props}
        if props and rng.random() < 0.6:
            s["required"] = rng.sample(list(props), rng.randint(1, len(props)))
        if rng.random() < 0.4:
            s["additionalProperties"] = rng.choice([False, random_schema(rng, depth + 1)])
        if rng.random() < 0.3:
            s["minProperties"] = rng.randint(0, 3)
        if rng.random() < 0.3:
            s["maxProperties"] = rng.randint(1, 4)
        if props and rng.random() < 0.3:
            s["dependentRequired"] = {rng.choice(list(props)): [rng.choice(["a", "b", "zz"])]}
        if props and rng.random() < 0.2:
            s["dependentSchemas"] = {rng.choice(list(props)): random_schema(rng, depth + 1)}
        if rng.random() < 0.3:
            patterns = rng.sample(["^a", "d$", "^[a-c]+$", "z", "é", "^\\w$", "^(ab|c)*$"], rng.randint(1, 2))
            s["patternProperties"] = {p: random_schema(rng, depth + 1) for p in patterns}
        if rng.random() < 0.2:
            s["propertyNames"] = rng.choice(
                [
                    {"maxLength": 2},
                    {"pattern": "^[a-d]"},
                    {"enum": ["a", "b", "zz", "é"]},
                    {"not": {"const": "b"}},
                    False,
                ]
            )
        return s
    if kind == "arr":
        s = {"type": "array"}
        if rng.random() < 0.5:
            s["prefixItems"] = [random_schema(rng, depth + 1) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.7:
            s["items"] = rng.choice([False, random_schema(rng, depth + 1)])
        if rng.random() < 0.4:
            s["minItems"] = rng.randint(0, 3)
        if rng.random() < 0.4:
            s["maxItems"] = rng.randint(0, 4)
        if rng.random() < 0.25:
            s["uniqueItems"] = True
        if rng.random() < 0.25:
            s["contains"] = random_schema(rng, depth + 1)
            if rng.random() < 0.5:
                s["minContains"] = rng.randint(0, 2)
            if rng.random() < 0.3:
                s["maxContains"] = rng.randint(1, 3)
        return s
    if kind in ("anyOf", "oneOf", "allOf"):
        return {kind: [random_schema(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if kind == "if":
        return {
            "if": random_schema(rng, depth + 1),
            "then": random_schema(rng, depth + 1),
            "else": random_schema(rng, depth + 1),
        }
    return {"not": random_schema(rng, depth + 1)}


def random_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 2 or r < 0.5:
        return rng.choice(
            [
                None,
                True,
                False,
                0,
                1,
                2,
                -1,
                2.5,
                -1.25,
                7,
                50,
                3.0,
                136,
                "",
                "a",
                "ab",
                "x",
                "aab",
                "é",
                "12",
                "日本",
                1e20,
            ]
        )
    if r < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    names = ["a", "b", "c", "dd", "zz", "ab", "é", "x\n"]
    return {k: random_value(rng, depth + 1) for k in rng.sample(names, rng.randint(0, 3))}


def supported_schemas(seed: int, n: int, max_min_chars: int = 200) -> list:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        schema = random_schema(rng)
        try:
            compiled = compile_schema(schema)
        except UnsupportedSchemaError:
            continue
        if compiled.satisfiable and compiled.min_chars <= max_min_chars:
            out.append(schema)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_random_schema_verdicts_match_reference_validator(seed: int) -> None:
    rng = random.Random(1000 + seed)
    checked = 0
    for _ in range(400):
        schema = random_schema(rng)
        try:
            compiled = compile_schema(schema)
        except UnsupportedSchemaError:
            continue
        validator = jsonschema.Draft202012Validator(schema)
        for _ in range(8):
            value = random_value(rng)
            expected = validator.is_valid(value)
            for text in (json.dumps(value), json.dumps(value, indent=2, ensure_ascii=False)):
                assert compiled.accepts(text) == expected, (schema, text)
                checked += 1
    assert checked > 4000


@pytest.mark.parametrize("seed", [0, 1])
def test_random_schema_generation_always_validates(seed: int) -> None:
    schemas = supported_schemas(seed, 80)
    for ws_bias in (0.0, 8.0):
        for schema, data in zip(schemas, generate(schemas, seed=seed, max_new=200, ws_bias=ws_bias)):
            check_valid(schema, data)
    for schema in schemas[:40]:  # at the shortest possible budget
        budget = compile_schema(schema).min_chars
        (data,) = generate([schema], seed=seed, max_new=budget)
        check_valid(schema, data)


def test_overlapping_string_branches_regression() -> None:
    """Two unconstrained-pattern string branches overlap: oneOf must reject a value both accept."""
    compiled = compile_schema({"oneOf": [{"type": "string", "maxLength": 3}, {"type": "string", "maxLength": 4}]})
    assert not compiled.accepts('"x"') and compiled.accepts('"abcd"')
