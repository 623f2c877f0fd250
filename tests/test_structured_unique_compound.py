"""``uniqueItems`` with arrays and objects as items (schema/unique.py, the recogniser's U frames) against the reference
validator: verdicts on arrays that repeat an item in another spelling (key order, ``1`` / ``1.0`` / ``1e0``, escapes,
whitespace), a brute-force check of the mask on item types with few values, and random-logit generation that never
repeats an item, never opens one that can only be a repeat, and fits every budget (the shortest one included)."""

from __future__ import annotations

import itertools
import json
import random

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema

from .test_structured_generate import _single_thread, check_generation, check_valid, check_verdicts, generate  # noqa: F401  (autouse fixture)

FLAG = {"type": "object", "properties": {"p": {"type": "boolean"}}, "additionalProperties": False}
SCHEMAS = [
    {"type": "array", "uniqueItems": True, "items": FLAG},  # three values: {}, {"p":true}, {"p":false}
    {"type": "array", "uniqueItems": True, "items": {"enum": [{"a": 1}, [1, 2], {"a": [1]}]}},
    {"type": "array", "uniqueItems": True, "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
    {  # compose-spec's volumes: a string or an object
        "type": "array",
        "uniqueItems": True,
        "items": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"enum": ["bind", "volume"]}, "read_only": {"type": "boolean"}},
                    "additionalProperties": False,
                },
            ]
        },
    },
    {  # gitlab-ci's stages: strings or arrays of strings
        "type": "array",
        "uniqueItems": True,
        "minItems": 1,
        "items": {"anyOf": [{"type": "string", "maxLength": 1}, {"type": "array", "items": {"type": "string"}}]},
    },
    {  # nested: unique arrays of objects holding unique arrays
        "type": "array",
        "uniqueItems": True,
        "maxItems": 4,
        "items": {
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": 2},
                "t": {"type": "array", "uniqueItems": True, "items": {"enum": [0, 1]}},
            },
            "required": ["n"],
            "additionalProperties": False,
        },
    },  # fmt: skip
    {"type": "array", "uniqueItems": True, "items": FLAG, "contains": {"required": ["p"]}, "maxItems": 3},
    {"type": "object", "properties": {"v": {"type": "array", "uniqueItems": True, "items": {"type": "object"}}}},
]

VALUES = [{}, {"p": True}, {"p": False}, {"a": 1}, {"a": 1.0}, [1, 2], [2, 1], [], [True], [True, False], {"a": [1]},
          {"n": 0}, {"n": 1, "t": [0]}, {"n": 1, "t": [0, 1]}, {"type": "bind"}, {"type": "bind", "read_only": True},
          "a", "b", ["a"], ["a", "b"], 1, True]  # fmt: skip


def spellings(value, rng: random.Random) -> str:
    """``value`` written in a random one of JSON's spellings: key order, whitespace, numbers as ``1`` / ``1.0`` /
    ``1e0``, characters escaped or raw."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        sep = rng.choice([",", ", ", ",\n  "])
        return "{" + sep.join(spellings(k, rng) + rng.choice([":", ": "]) + spellings(v, rng) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + rng.choice([",", ", "]).join(spellings(v, rng) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return (
            rng.choice([str(int(value)), f"{int(value)}.0", f"{int(value)}e0"]) if value == int(value) else str(value)
        )
    if rng.random() < 0.5:
        return '"' + "".join(f"\\u{ord(ch):04x}" for ch in value) + '"'
    return json.dumps(value)


def random_array(rng: random.Random) -> list:
    out = [rng.choice(VALUES) for _ in range(rng.randint(0, 4))]
    if out and rng.random() < 0.5:
        out.append(rng.choice(out))  # a repeat (spelt anew below)
    return out


@pytest.mark.parametrize("schema", SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_verdicts_match_reference_validator(schema) -> None:
    rng = random.Random(5)
    values = [random_array(rng) for _ in range(300)]
    if schema["type"] == "object":
        values = [{"v": v} for v in values]
    check_verdicts(schema, values, lambda v: (json.dumps(v), spellings(v, rng), spellings(v, rng)))


def test_repeats_in_other_spellings_are_refused() -> None:
    compiled = compile_schema({"type": "array", "uniqueItems": True})  # any items
    for text in ['[{"a":1,"b":"x"}, {"b":"\\u0078", "a":1e0}]', "[[1, {}], [1.0, {}]]", '[{"a":[1]},{"a":[10e-1]}]']:
        assert not compiled.accepts(text), text
    for text in ['[{"a":1},{"a":true}]', "[[1, 2], [2, 1]]", '[{"a":1},{"a":1,"b":null}]', "[[], [[]], {}]"]:
        assert compiled.accepts(text), text


# (numbers have several compact spellings, 1 and 1.0: the verdict tests cover them)
ENUM_NO_NUMBERS = {"type": "array", "uniqueItems": True, "items": {"enum": [{"a": True}, [None, "x"], {"a": [False]}]}}


def _compact_documents(values: list) -> list[str]:
    """Every array of distinct ``values`` (any order), written compactly."""
    out = []
    for n in range(len(values) + 1):
        for combo in itertools.permutations(values, n):
            out.append(json.dumps(list(combo), separators=(",", ":")))
    return out


# enum members beside an open object branch that also spells one of them ({"p": true}): once written, the member's
# node is dropped, but the open branch could still repeat it
ENUM_AND_OPEN = {
    "type": "array",
    "uniqueItems": True,
    "items": {
        "anyOf": [
            {"enum": [{"a": True}, [None], {"p": True}]},
            {"type": "object", "properties": {"p": {"type": "boolean"}}, "additionalProperties": False},
        ]
    },
}


@pytest.mark.parametrize(
    ("schema", "values"),
    [
        (SCHEMAS[0], [{}, {"p": True}, {"p": False}]),
        (ENUM_NO_NUMBERS, ENUM_NO_NUMBERS["items"]["enum"]),
        (ENUM_AND_OPEN, [{"a": True}, [None], {"p": True}, {}, {"p": False}]),
    ],
)
def test_mask_is_exactly_the_next_characters_of_a_document_with_no_repeat(schema, values) -> None:
    """Brute force on item types with few values: after every prefix of every valid compact document, the mask's
    characters (whitespace and escapes aside) are exactly the next characters of the valid compact documents with
    that prefix (an object's keys may come in any order: the documents list both orders), and the cost to finish is
    the shortest of those documents' rests."""
    compiled = compile_schema(schema)
    documents = set()
    for text in _compact_documents(values):
        value = json.loads(text)
        for order in itertools.product(*[[False, True]] * len(value)):  # each object also with its keys reversed
            spelt = [
                dict(reversed(v.items())) if (flip and isinstance(v, dict)) else v for v, flip in zip(value, order)
            ]
            documents.add(json.dumps(spelt, separators=(",", ":")))
    validator = jsonschema.Draft202012Validator(schema)
    assert all(validator.is_valid(json.loads(d)) for d in documents)
    prefixes = {d[:i] for d in documents for i in range(len(d))}
    for prefix in prefixes:
        rec = compiled.recogniser()
        assert rec.feed(prefix), prefix
        mask = rec.allowed_bytes()
        allowed = {chr(b) for b in range(128) if mask >> b & 1} - set(" \t\n\r\\")
        expected = {d[len(prefix)] for d in documents if d.startswith(prefix) and len(d) > len(prefix)}
        cheapest = min(len(d) - len(prefix) for d in documents if d.startswith(prefix))
        assert rec.min_chars_to_complete == cheapest, (prefix, rec.min_chars_to_complete, cheapest)
        if not rec.in_string:
            assert allowed == expected, (prefix, sorted(allowed), sorted(expected))
        else:  # inside a string the mask may also offer escapes; the documents' next characters must be there
            assert expected <= allowed, (prefix, sorted(allowed), sorted(expected))


def test_exhausted_items_close_the_array() -> None:
    """Three allowed values: after all three (in any spelling), neither a comma nor a fourth item."""
    compiled = compile_schema(SCHEMAS[1])
    rec = compiled.recogniser()
    assert rec.feed('[[1, 2], {"a": [1.0]}, {"a" : 1e0}')
    assert rec.shortest_completion() == b"]"
    assert not rec.allowed_bytes() >> ord(",") & 1  # the mask offers no comma (fed, one is refused at the item)
    assert not compiled.accepts('[[1, 2], {"a": [1.0]}, {"a" : 1e0}, [1,2]]')
    rec = compiled.recogniser()
    assert rec.feed('[[1,2],{"a":[1]},')  # one value left: the mask leads to it, and only to it
    assert rec.shortest_completion() == b'{"a":1}]'
    mask = rec.allowed_bytes()
    assert mask >> ord("{") & 1 and not mask >> ord("[") & 1  # "[" could only be a repeat (fed, it is refused later)
    assert not compiled.accepts('[[1,2],{"a":[1]},[1,2]]') and compiled.accepts('[[1,2],{"a":[1]},{"a":1}]')


def test_a_long_enum_of_objects_is_written_out_and_closed() -> None:
    """64 enum members, each written once (keys in the other order, spaced): every one is taken, a repeat in any
    spelling is refused, and after the last the mask offers "]" and no comma."""
    values = [{"name": f"n{i}", "value": i} for i in range(64)]
    schema = {"type": "array", "uniqueItems": True, "items": {"enum": values}}
    validator = jsonschema.Draft202012Validator(schema)
    compiled = compile_schema(schema)
    rec = compiled.recogniser()
    assert rec.feed("[")
    for i, v in enumerate(reversed(values)):
        item = json.dumps(dict(reversed(v.items())))
        assert rec.feed(item if i == 0 else ", " + item), i
    mask = rec.allowed_bytes()
    assert mask >> ord("]") & 1 and not mask >> ord(",") & 1
    assert rec.shortest_completion() == b"]"
    repeat = json.dumps(values)[:-1] + ', {"value": 1.0, "name": "n1"}]'
    assert not validator.is_valid(json.loads(repeat)) and not compiled.accepts(repeat)
    rec = compiled.recogniser()
    assert rec.feed(json.dumps(values[1:])[:-1] + ", ")  # one value left: the cheapest completion is that one
    done = rec.shortest_completion()
    assert done is not None and validator.is_valid(json.loads(json.dumps(values[1:])[:-1] + ", " + done.decode()))


def test_a_prefix_that_can_only_repeat_is_masked() -> None:
    compiled = compile_schema(SCHEMAS[0])
    rec = compiled.recogniser()
    assert rec.feed('[{"p":true},{"p":false},{"p":')
    mask = rec.allowed_bytes()
    assert not mask >> ord("t") & 1 and not mask >> ord("f") & 1  # both booleans taken: "p" cannot take a value
    rec = compiled.recogniser()
    assert rec.feed('[{"p":true},{"p":false},{')
    assert not rec.allowed_bytes() >> ord('"') & 1  # so no key either: only "}" (the empty object) is left
    assert rec.shortest_completion() == b"}]"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generation_never_repeats_and_always_validates(seed: int) -> None:
    check_generation(SCHEMAS, seed=seed, max_new=96)


def test_long_generation_fills_the_few_values_then_closes() -> None:
    """With a long budget and random logits, arrays over small item types end with no repeat (and valid)."""
    for seed in range(4):
        for schema, data in zip(SCHEMAS[:3], generate(SCHEMAS[:3], seed=seed, max_new=200, ws_bias=-4.0)):
            check_valid(schema, data)


# regressions found in review ------------------------------------------------------------------------------------
def _every_allowed_byte_keeps_a_completion(schema, prefix: str) -> None:
    """After ``prefix`` and any byte the mask allows, the shortest completion exists, has the promised length, and
    the whole document is valid."""
    compiled = compile_schema(schema)
    rec = compiled.recogniser()
    assert rec.feed(prefix), prefix
    assert rec.min_chars_to_complete is not None
    mask = rec.allowed_bytes()
    for b in range(256):
        if mask >> b & 1:
            nxt = rec.copy()
            assert nxt.feed(bytes([b])), (prefix, b)
            rest = nxt.shortest_completion()
            assert rest is not None and len(rest) == nxt.min_chars_to_complete, (prefix, chr(b))
            check_valid(schema, prefix.encode() + bytes([b]) + rest)


def test_nested_unique_arrays_do_not_exhaust_the_search() -> None:
    """Inner items' spellings (whitespace, escapes) are one search state, so a fresh item is still found."""
    inner = {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 1}
    schema = {"type": "array", "uniqueItems": True,
              "items": {"type": "array", "uniqueItems": True, "minItems": 1, "items": inner}}  # fmt: skip
    assert compile_schema(schema).accepts("[[[true]],[[false]],[[true],[false]]]")
    tag = {
        "type": "object",
        "properties": {"k": {"enum": ["x", "y"]}},
        "required": ["k"],
        "additionalProperties": False,
    }
    record = {
        "type": "object",
        "properties": {"id": {"enum": [1, 2]}, "tags": {"type": "array", "uniqueItems": True, "minItems": 1, "items": tag}},
        "required": ["id", "tags"],
        "additionalProperties": False,
    }  # fmt: skip
    schema = {"type": "array", "uniqueItems": True, "items": record}
    ones = [{"id": i, "tags": [{"k": k}]} for i in (1, 2) for k in "xy"]
    text = json.dumps([*ones, {"id": 1, "tags": [{"k": "x"}, {"k": "y"}]}])
    compiled = compile_schema(schema)
    assert compiled.accepts(text) and jsonschema.Draft202012Validator(schema).is_valid(json.loads(text))
    _every_allowed_byte_keeps_a_completion(schema, json.dumps(ones)[:-1] + ", {")


def test_a_fresh_item_far_along_an_earlier_ones_text_is_found() -> None:
    item = {"type": "array", "prefixItems": [{"const": "x" * 140}, {"type": "integer"}], "maxItems": 2}
    compiled = compile_schema({"type": "array", "uniqueItems": True, "items": item})
    assert compiled.accepts(json.dumps([[], ["x" * 140, 1], ["x" * 140, 2]]))


def test_numbers_that_round_onto_an_earlier_item_are_masked() -> None:
    """0.99999999999999999 is 1.0 to the validator: once every continuation rounds onto [1], the mask stops."""
    schema = {"type": "array", "uniqueItems": True,
              "items": {"type": "array", "items": {"type": "number"}, "maxItems": 1}}  # fmt: skip
    compiled = compile_schema(schema)
    assert not compiled.accepts("[[1],[0.99999999999999999]]") and compiled.accepts("[[1],[0.9999999999999999]]")
    for prefix in ("[[1],[0.999999999999999", "[[1],[0.9999999999999999", "[[1],[1.00000000000000", "[[1],[0"):
        _every_allowed_byte_keeps_a_completion(schema, prefix)
    # an exponent (fed, never generated) may still make the earlier item: 1e1 is 10
    schema = {
        "type": "array",
        "uniqueItems": True,
        "items": {"type": "object", "properties": {"a": {"type": "number"}}},
    }
    for prefix in ('[{"a":10},{"a":1e1', '[{"a":10},{"a":1e0'):
        rec = compile_schema(schema).recogniser()
        assert rec.feed(prefix)
        rest = rec.shortest_completion()
        assert rest is not None, prefix
        check_valid(schema, prefix.encode() + rest)
    rec = compiled.recogniser()
    assert rec.feed("[[1],[0")
    assert rec.min_chars_to_complete == 2 and rec.shortest_completion() == b"]]"


def test_multibyte_names_and_values_inside_items_fit_every_budget() -> None:
    names = {
        "type": "array",
        "uniqueItems": True,
        "minItems": 1,
        "items": {"type": "object", "properties": {"prénom": {"type": "string"}}, "required": ["prénom"]},
    }
    pattern = {
        "type": "array",
        "uniqueItems": True,
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {"k": {"pattern": "^([Ā-ŀ]ab|[Ł-ſ])$"}},
            "required": ["k"],
            "additionalProperties": False,
        },
    }
    # fmt: skip
    for schema in (names, pattern):
        compiled = compile_schema(schema)
        shortest = compiled.recogniser().shortest_completion()
        assert shortest is not None and len(shortest) == compiled.min_chars
        check_valid(schema, shortest)
        for seed in range(3):
            for extra in (0, 1, 4):
                (data,) = generate([schema], seed=seed, max_new=compiled.min_chars + extra)
                check_valid(schema, data)


def test_items_beyond_the_const_machines_are_still_judged() -> None:
    """An item no const machine can hold (1e400 reads as inf) and one nested 500 deep: judged by their keys."""
    compiled = compile_schema({"uniqueItems": True})
    assert compiled.accepts("[[1e400],[1]]") and not compiled.accepts("[[1e400],[1e400]]")
    assert not compiled.accepts("[[1e400, 1], [1e400, 1.0]]") and not compiled.accepts(
        '[[1e400, {"a":1,"b":2}], [1e400, {"b":2,"a":1}]]'
    )
    deep = "[" * 500 + "]" * 500
    assert compiled.accepts(f"[{deep}, [{deep}]]") and not compiled.accepts(f"[{deep}, {deep}]")


def test_after_an_item_without_a_const_machine_the_mask_starts_no_array_or_object() -> None:
    """A number of 310 digits reads as infinity (no const machine holds it): fed text is still judged by keys, but
    the mask, which could not steer around that item, starts no further array item, and closes instead."""
    schema = {"type": "array", "uniqueItems": True, "items": {"type": "array", "items": {"type": "number"}}}
    compiled = compile_schema(schema)
    big = "1" + "0" * 309 + ".0"
    assert compiled.accepts(f"[[{big}],[1]]") and not compiled.accepts(f"[[{big}],[{big}]]")
    rec = compiled.recogniser()
    assert rec.feed(f"[[{big}]")
    mask = rec.allowed_bytes()
    assert not mask >> ord(",") & 1 and mask >> ord("]") & 1
    assert rec.shortest_completion() == b"]"


# the complement of uniqueItems (negation.K_REPEAT): admitted where a uniqueItems beside it cancels it ----------------
def _unique_list(item_type: str) -> dict:
    return {"type": "array", "uniqueItems": True, "items": {"type": item_type}}


OVERLAPPING_UNIQUE = [
    # two unique lists that overlap on [] (and nothing else): "exactly one" needs each one's complement, whose
    # "some item repeated" part meets the other's uniqueItems and is empty
    {"oneOf": [_unique_list("integer"), _unique_list("string")]},
    # Dependabot's update: "directories" (a unique list) or "directory", exactly one; the object's own properties
    # hold "directories" to the unique list too, so "directories repeats an item" leaves nothing
    {
        "type": "object",
        "properties": {"d": _unique_list("string"), "e": {"type": "string"}},
        "oneOf": [{"properties": {"d": {"$ref": "#/properties/d"}}, "required": ["d"]}, {"required": ["e"]}],
    },
]
UNIQUE_VALUES = [[], [1], [1, 1], [1, 2], ["a"], ["a", "a"], ["a", "b"], [1, "a"], 3, {}, {"d": ["a"]},
                 {"d": ["a", "a"]}, {"e": "x"}, {"d": ["a"], "e": "x"}, {"d": ["a", "a"], "e": "x"}, {"d": [], "e": "x"},
                 {"d": 5, "e": "x"}, {"e": 1}]  # fmt: skip


@pytest.mark.parametrize("schema", OVERLAPPING_UNIQUE)
def test_complement_of_unique_items_where_a_unique_list_cancels_it(schema) -> None:
    rng = random.Random(0)
    check_verdicts(schema, UNIQUE_VALUES, lambda v: (json.dumps(v), spellings(v, rng), spellings(v, rng)))


def test_generation_under_overlapping_unique_lists() -> None:
    check_generation(OVERLAPPING_UNIQUE, seed=0, max_new=64)


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"not": {"uniqueItems": True}}, "#/not"),
        ({"not": {"uniqueItems": 1}}, "#/not"),  # not a boolean (the validator reads it as true): refused as before
        ({"oneOf": [{"type": "array", "uniqueItems": True}, {"minItems": 2}]}, "#/oneOf/0"),  # [1, 1] meets only B
        ({"type": "object", "properties": {"d": {"not": {"uniqueItems": True}}}}, "#/properties/d/not"),
    ],
)
def test_complement_of_unique_items_is_refused_where_it_holds_values(schema, path) -> None:
    """Where arrays with a repeated item are instances, the compiler has no machine for them: fail closed."""
    with pytest.raises(UnsupportedSchemaError, match="uniqueItems") as e:
        compile_schema(schema)
    assert e.value.path == path
