"""Older drafts (4, 6, 7, 2019-09) by their declared ``$schema``: each rewrite of ``omnifuse.schema.drafts`` held to
the reference validator of that draft (``jsonschema``) on instances chosen to sit on both sides of each keyword."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from omnifuse.schema import UnsupportedSchemaError, compile_schema
from omnifuse.schema.drafts import detect_draft, to_2020_12

D4 = "http://json-schema.org/draft-04/schema#"
D6 = "http://json-schema.org/draft-06/schema#"
D7 = "http://json-schema.org/draft-07/schema#"
D2019 = "https://json-schema.org/draft/2019-09/schema"
VALIDATOR = {
    D4: jsonschema.Draft4Validator,
    D6: jsonschema.Draft6Validator,
    D7: jsonschema.Draft7Validator,
    D2019: jsonschema.Draft201909Validator,
}

CASES = [
    # draft 4: boolean exclusive bounds
    (D4, {"type": "number", "minimum": 1, "exclusiveMinimum": True, "maximum": 3, "exclusiveMaximum": False},
     [0.5, 1, 1.5, 3, 3.5]),
    # draft 4: "const" is not a keyword there (an annotation), "id" is
    (D4, {"id": "http://example.com/root.json", "properties": {"a": {"const": 1}, "b": {"$ref": "#/definitions/b"}},
          "definitions": {"b": {"type": "string"}}},
     [{"a": 2}, {"b": "x"}, {"b": 1}]),
    # array-form items + additionalItems; additionalItems beside a single items schema does nothing
    (D7, {"items": [{"type": "integer"}, {"type": "string"}], "additionalItems": {"type": "boolean"}},
     [[], [1], [1, "a"], [1, "a", True], [1, "a", 2], ["a"]]),
    (D7, {"items": {"type": "integer"}, "additionalItems": False}, [[1, 2, 3], [1, "a"]]),
    # dependencies: property names and schemas
    (D7, {"dependencies": {"a": ["b"], "c": True}}, [{}, {"a": 1}, {"a": 1, "b": 2}, {"c": 1}, {"b": 1}]),
    # $ref siblings are ignored before 2019-09 (here: maxLength beside the ref)
    (D7, {"definitions": {"s": {"type": "string"}}, "properties": {"x": {"$ref": "#/definitions/s", "maxLength": 1}}},
     [{"x": "long"}, {"x": 3}]),
    (D2019, {"$defs": {"s": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/s", "maxLength": 1}}},
     [{"x": "long"}, {"x": "l"}, {"x": 3}]),
    # pointers into renamed keywords follow them
    (D7, {"items": [{"type": "integer"}, {"$ref": "#/items/0"}]}, [[1, 2], [1, "a"]]),
    (D6, {"properties": {"x": {"$ref": "#/additionalItems"}}, "items": [{}], "additionalItems": {"type": "integer"}},
     [{"x": 1}, {"x": "a"}]),
    # a fragment-only id is an anchor (draft 6/7)
    (D6, {"definitions": {"n": {"$id": "#num", "type": "number"}}, "properties": {"a": {"$ref": "#num"}}},
     [{"a": 1}, {"a": "x"}]),
    # draft 6: "if" is not a keyword yet
    (D6, {"type": ["string", "integer"], "if": {"type": "string"}, "then": {"maxLength": 1}}, ["abc", 1, None]),
    (D7, {"if": {"type": "string"}, "then": {"maxLength": 1}}, ["abc", "a", 1]),
    # 2019-09: $recursiveRef without any $recursiveAnchor is a plain $ref; "dependencies" is no keyword there
    (D2019, {"type": "object", "properties": {"child": {"$recursiveRef": "#"}}, "additionalProperties": False},
     [{}, {"child": {}}, {"child": {"child": {"x": 1}}}]),
    (D2019, {"dependencies": {"a": ["b"]}, "dependentRequired": {"c": ["d"]}}, [{"a": 1}, {"c": 1}, {"c": 1, "d": 1}]),
    # 2019-09: a $recursiveRef beside a $ref: both apply
    (D2019, {"type": "object", "properties": {"x": {"$ref": "#/$defs/s", "$recursiveRef": "#"}},
             "$defs": {"s": {"required": ["a"]}}},
     [{}, {"x": {}}, {"x": {"a": 1}}, {"x": {"a": {"x": {}}}}]),
    # $defs in draft 7 is a container like definitions: refs into it resolve; a nested $schema restating the draft
    (D7, {"$defs": {"n": {"type": "number"}}, "properties": {"a": {"$ref": "#/$defs/n"},
          "b": {"$schema": D7, "items": [{"type": "string"}], "additionalItems": False}}},
     [{"a": 1}, {"a": "x"}, {"b": ["s"]}, {"b": ["s", 1]}]),
]  # fmt: skip


@pytest.mark.parametrize(("uri", "schema", "instances"), CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_older_draft_schema_means_what_its_draft_says(uri, schema, instances):
    schema = {"$schema": uri, **schema}
    original = copy.deepcopy(schema)
    compiled = compile_schema(schema, formats="annotation")
    validator = VALIDATOR[uri](schema)
    verdicts = []
    for value in instances:
        for text in (json.dumps(value), json.dumps(value, indent=2)):
            assert compiled.accepts(text) == validator.is_valid(value), (value, to_2020_12(schema))
        verdicts.append(validator.is_valid(value))
    assert True in verdicts and False in verdicts  # each case sits on both sides
    assert schema == original  # the caller's schema is not changed


def test_draft_detection_and_refusals():
    assert detect_draft({"type": "string"}) == "draft2020-12" and detect_draft(True) == "draft2020-12"
    assert detect_draft({"$schema": "http://json-schema.org/draft-07/schema"}) == "draft7"  # with or without '#'
    with pytest.raises(UnsupportedSchemaError, match="draft-03") as e:
        compile_schema({"$schema": "http://json-schema.org/draft-03/schema#", "type": "string"})
    assert e.value.keyword == "$schema" and e.value.path == "#"
    # a 2019-09 $recursiveRef with a $recursiveAnchor is dynamic: still refused, with its path
    recursive = {"$schema": D2019, "$recursiveAnchor": True, "properties": {"a": {"$recursiveRef": "#"}}}
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema(recursive)
    assert e.value.keyword == "$recursiveRef" and e.value.path == "#/properties/a"
    # dependencies with a schema become dependentSchemas; a refusal inside one is named as the user wrote it: the
    # draft's keyword, at its place in the original schema
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema(
            {
                "$schema": D7,
                "dependencies": {
                    "c": {"required": ["d"], "propertyNames": {"anyOf": [{"maxLength": 300}, {"pattern": "^a"}]}}
                },
            }
        )
    assert (e.value.keyword, e.value.path) == ("propertyNames", "#/dependencies/c/propertyNames")
    compiled = compile_schema({"$schema": D7, "dependencies": {"c": {"required": ["d"]}}})
    assert compiled.accepts('{"c": 1, "d": 2}') and not compiled.accepts('{"c": 1}') and compiled.accepts('{"d": 0}')
    nested = {
        "$schema": D4,
        "items": [{"type": "integer"}, {"properties": {"a": {"uniqueItems": True, "minItems": 2}}}],
    }
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema(nested)
    assert (e.value.keyword, e.value.path) == ("uniqueItems", "#/items/1/properties/a")
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema({"$schema": D7, "items": [{}], "additionalItems": {"uniqueItems": True, "minItems": 2}})
    assert (e.value.keyword, e.value.path) == ("uniqueItems", "#/additionalItems")
    nested = {
        "$schema": D7,
        "items": [{"items": [{"contains": {"type": "string"}, "uniqueItems": True, "minItems": 2}]}],
    }
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema(nested)
    assert e.value.path == "#/items/0/items/0"  # nested renames undone all the way up
    # a 2020-12 schema comes back as it is
    plain = {"type": "array", "prefixItems": [{"type": "integer"}]}
    assert to_2020_12(plain) is plain


def test_a_draft7_schema_constrains_generation_end_to_end():
    """Random walks over the bytes a draft-07 schema's recogniser allows, closed by its shortest completion: every
    document validates under draft 7 (the reference validator), arrays and dependencies included."""
    import random

    schema = {
        "$schema": D7,
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
            "tags": {"type": "array", "items": [{"enum": ["a", "b"]}], "additionalItems": False},
            "m": {"type": "string", "maxLength": 3},
        },
        "required": ["n"],
        "additionalProperties": False,
        "dependencies": {"m": ["tags"]},
    }
    compiled = compile_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    rng = random.Random(0)
    seen_keys = set()
    for _ in range(200):
        rec = compiled.recogniser()
        out = b""
        while not (rec.accepting and rng.random() < 0.3):
            mask = rec.allowed_bytes()
            allowed = [b for b in range(256) if mask >> b & 1]
            if len(out) > 40 or not allowed:
                tail = rec.shortest_completion()
                assert tail is not None and rec.feed(tail)
                out += tail
                break
            b = rng.choice(allowed)
            assert rec.feed(bytes([b]))
            out += bytes([b])
        assert rec.accepting
        doc = json.loads(out)
        assert validator.is_valid(doc), out
        seen_keys.update(doc)
    assert {"n", "tags", "m"} <= seen_keys  # the walks reached every property


def test_json_metric_validates_under_the_declared_draft():
    """The json task's validity metric reads a draft-07 schema as draft 7: array-form items is a tuple there (under
    2020-12 rules the same schema would be read differently)."""
    from omnifuse.tasks.structured_task import validate_with_jsonschema

    schema = {"$schema": D7, "type": "array", "items": [{"type": "integer"}], "additionalItems": False}
    assert validate_with_jsonschema([1], schema)
    assert not validate_with_jsonschema([1, 2], schema)  # additionalItems: false (2020-12 would ignore it)
    assert compile_schema(schema).accepts("[1]") and not compile_schema(schema).accepts("[1,2]")
