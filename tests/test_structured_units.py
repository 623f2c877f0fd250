"""Unit and differential tests of the schema compiler and recogniser (references: ``jsonschema``, ``re``, ``json``)."""

from __future__ import annotations

import contextlib
import json
import random
import re
import time

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnifuse.schema import SchemaError, UnsupportedSchemaError, compile_schema
from omnifuse.schema.numbers import NumSpec

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_valid(schema, value) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


# --------------------------------------------------------------------------------------------------------
# fail closed


@pytest.mark.parametrize(
    ("schema", "keyword", "path"),
    [
        ({"properties": {"a": {"multipleOf": 0.01, "minimum": 1, "maximum": 2}}}, "multipleOf", "#/properties/a"),
        ({"not": {"multipleOf": 2}}, "multipleOf", "#/not"),
        ({"items": {"uniqueItems": True, "minItems": 2}}, "uniqueItems", "#/items"),
        (
            {"$defs": {"x": {"contains": {"uniqueItems": True}}}, "$ref": "#/$defs/x"},
            "uniqueItems",
            "#/$defs/x/contains",
        ),
        ({"type": "string", "format": "uri"}, "format", "#"),
        ({"pattern": "(?=a)b"}, "pattern", "#/pattern"),
        ({"pattern": "\\bword"}, "pattern", "#/pattern"),
        ({"pattern": "(a)\\1"}, "pattern", "#/pattern"),
        ({"$ref": "https://example.com/other.json"}, "$ref", "#"),
        # the complement of additionalProperties where names are open: "some other name's value fails S" is state of
        # the object, not where patterns classify the names, and not twice on one object
        (
            {"if": {"patternProperties": {"^x": True}, "additionalProperties": False}, "then": {"minProperties": 2}},
            "additionalProperties",
            "#/if",
        ),
        (
            {
                "allOf": [
                    {"not": {"additionalProperties": {"type": "integer"}}},
                    {"not": {"additionalProperties": False}},
                ]
            },
            "additionalProperties",
            "#/allOf/0/not",
        ),
        ({"$schema": "http://json-schema.org/draft-03/schema#"}, "$schema", "#"),  # drafts 4-2020-12 only
        (
            {
                "not": {
                    "anyOf": [{"properties": {"a": True}}, {"properties": {"b": {"type": "string"}}}],
                    "unevaluatedProperties": {"type": "integer"},
                }
            },
            "unevaluatedProperties",
            "#/not/unevaluatedProperties",
        ),
        ({"pattern": "^(a|b)*a(a|b){12}$"}, "pattern", "#"),  # 2**13 DFA states: over the cap
        ({"enum": ["\ud800", "a"]}, "enum", "#"),  # a lone surrogate: no UTF-8 output holds it
        ({"not": {"const": "x\udfff"}}, "enum", "#"),
        ({"patternProperties": {"(?=x)": {"type": "integer"}}}, "patternProperties", "#/patternProperties/(?=x)"),
        ({"propertyNames": {"anyOf": [{"maxLength": 300}, {"pattern": "^ab"}]}}, "propertyNames", "#/propertyNames"),
        (
            {"properties": {"a": {"not": {"prefixItems": [{}], "items": {"type": "string"}}}}},
            "items",
            "#/properties/a/not",
        ),
        ({"$defs": {"a": {"not": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"}, "$ref", "#/$defs/a"),
        ({"additionalItems": False}, "additionalItems", "#"),
        ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "$ref", "#/$defs/a"),
    ],
)
def test_unsupported_keyword_is_named_with_its_path(schema, keyword, path) -> None:
    with pytest.raises(UnsupportedSchemaError) as info:
        compile_schema(schema)
    assert info.value.keyword == keyword
    assert info.value.path == path
    assert keyword in str(info.value) and path in str(info.value)


def test_a_long_enum_compiles_exactly() -> None:
    """An enum whose strings total far more code points than the general automaton cap (one state per prefix, no
    blow-up) compiles; members and only members are accepted, also beside a pattern."""
    names = [f"lang-{i}" for i in range(3000)] + ["C", "C#", "C++"]
    compiled = compile_schema({"enum": names})
    rng = random.Random(0)
    for name in rng.sample(names, 200) + ["C", "C#", "C++"]:
        assert compiled.accepts(json.dumps(name))
        assert not compiled.accepts(json.dumps(name + "x")) and not compiled.accepts(json.dumps(name[:-1] + "-"))
    assert not compiled.accepts('"lang-3000"') and not compiled.accepts('"C+"')
    with_pattern = compile_schema({"type": "string", "enum": names, "pattern": "^lang-2"})
    assert with_pattern.accepts('"lang-2999"') and not with_pattern.accepts('"lang-1999"')


@pytest.mark.parametrize(
    "schema",
    [
        {
            "anyOf": [
                {"enum": ["a", "b"], "description": "x"},
                {"const": "b", "doNotSuggest": True},
                {"enum": [1, None]},
            ]
        },
        {"oneOf": [{"enum": ["a", "b"]}, {"const": "b"}, {"enum": [1.0, {"k": [1]}]}]},  # "b" in two: excluded
        {"oneOf": [{"enum": ["a"]}, {"const": 1}], "type": "string"},
        {
            "anyOf": [{"enum": ["a", "c"], "const": "c"}, {"enum": ["d"], "minLength": 2}]
        },  # not only values: general path
        {
            "properties": {"t": {"anyOf": [{"enum": [f"T{i}@1"]} for i in range(40)]}},
            "anyOf": [{"properties": {"t": {"pattern": f"^T{i}@1$"}}, "required": ["t"]} for i in range(0, 40, 3)],
        },
    ],
)
def test_branches_of_values_are_one_enum(schema) -> None:
    """An anyOf / oneOf whose branches only list values is compiled as one enum (Azure Pipelines' 518 task names):
    verdicts still equal the validator's, overlapping oneOf values included."""
    compiled = compile_schema(schema)
    candidates = ["a", "b", "c", "d", 1, 1.0, 2, None, True, {"k": [1]}, {"k": [2]}, [], ""]
    candidates += [{"t": f"T{i}@1"} for i in range(42)] + [{"t": "T1@2"}, {}]
    for value in candidates:
        assert compiled.accepts(json.dumps(value)) == reference_valid(schema, value), value


@pytest.mark.parametrize(
    "schema",
    [{"type": "foo"}, {"minLength": -1}, {"maxItems": 1.5}, {"$ref": "#/$defs/missing"}, {"pattern": "(ab"}, [1]],
)
def test_malformed_schema_raises_schema_error(schema) -> None:
    with pytest.raises(SchemaError):
        compile_schema(schema)


def test_no_op_forms_of_unsupported_keywords_are_accepted() -> None:
    compiled = compile_schema(
        {"uniqueItems": False, "propertyNames": True, "unevaluatedItems": {}, "then": {"minimum": 5}, "x-custom": 1}
    )
    assert compiled.accepts("[1, 1]") and compiled.accepts("3")


def test_format_modes() -> None:
    with pytest.raises(UnsupportedSchemaError):
        compile_schema({"format": "uri"})
    assert compile_schema({"format": "uri"}, formats="annotation").accepts('"not a uri"')
    assert not compile_schema({"format": "date"}).accepts('"2023-02-29"')
    assert compile_schema({"format": "date"}).accepts('"2024-02-29"')


# --------------------------------------------------------------------------------------------------------
# recogniser semantics


def test_allof_merges_by_intersection() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"a": {"minimum": 5}}, "additionalProperties": False},
        ]
    }
    c = compile_schema(schema)
    for text, ok in [('{"a": 5}', True), ('{"a": 3}', False), ('{"a": 5.0}', True), ('{"a": 5, "b": 1}', False)]:
        assert c.accepts(text) == ok == reference_valid(schema, json.loads(text))


def test_duplicate_keys_are_refused() -> None:
    assert not compile_schema({"type": "object"}).accepts('{"a": 1, "a": 2}')


def test_integer_semantics_follow_the_validator() -> None:
    c = compile_schema({"type": "integer", "minimum": 2})
    for text in ["2", "2.0", "2e0", "20E-1", "1.5", "-0", "1e400", "3.0000000000000000001", "1.9999999999999999999"]:
        assert c.accepts(text) == reference_valid(c.schema, json.loads(text)), text


def test_utf8_bytes_inside_strings() -> None:
    c = compile_schema({"type": "string", "maxLength": 2})
    rec = c.recogniser()
    assert rec.feed(b'"\xc3')  # first byte of 'é'
    allowed = rec.allowed_bytes()
    assert all((allowed >> b) & 1 for b in range(0x80, 0xC0)) and not any((allowed >> b) & 1 for b in range(0x80))
    assert not rec.copy().feed(b"A")  # a continuation byte is required
    assert rec.feed(b'\xa9\xe6\x97\xa5"') and rec.accepting  # "é日"
    assert not c.accepts(b'"\xc0\x80"')  # overlong encoding
    assert not c.accepts(b'"\xed\xa0\x80"')  # encoded surrogate
    assert c.accepts('"\\ud83d\\ude00"') and c.accepts('"😀x"')  # one code point each
    assert not c.accepts('"\\ud83d"') and not c.accepts('"\\ude00"')  # lone surrogates are refused
    assert not c.accepts('"😀xy"')


def test_escapes_are_decoded_for_constraints() -> None:
    c = compile_schema({"enum": ['a"b', "é/x", "tab\t"]})
    for text in ['"a\\"b"', '"\\u00e9\\/x"', '"\\u00E9/x"', '"tab\\t"', '"tab\\u0009"']:
        assert c.accepts(text), text
    assert not c.accepts('"tab\t"')  # raw control characters are not JSON
    rec = c.recogniser()
    rec.feed('"\\u00')
    assert {chr(x) for a, b in rec.allowed_next().ranges for x in range(a, b + 1)} == set("67eE")  # a t é


def test_deep_recursion_has_no_depth_cap() -> None:
    c = compile_schema({"$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"})
    depth = 5000
    rec = c.recogniser()
    assert rec.feed("[" * depth)
    assert rec.min_chars_to_complete == depth
    assert rec.shortest_completion() == b"]" * depth
    assert rec.feed("]" * depth) and rec.accepting


def test_counters_are_state_not_grammar() -> None:
    t = time.perf_counter()
    c = compile_schema(
        {"type": "array", "items": {"type": "string", "maxLength": 10**6}, "minItems": 3, "maxItems": 10**6}
    )
    assert time.perf_counter() - t < 5  # nothing is unrolled (generous bound: only guards against blow-ups)
    assert c.num_nodes <= 3
    assert c.min_chars == len('["","",""]')
    assert c.accepts(json.dumps(["x" * 1000] * 3)) and not c.accepts('["", ""]')


def test_recogniser_copy_is_independent() -> None:
    c = compile_schema({"type": "array", "items": {"type": "integer"}})
    a = c.recogniser()
    a.feed("[1")
    b = a.copy()
    b.feed("]")
    assert b.accepting and not a.accepting
    assert a.feed(", 2]") and a.accepting
    assert not a.feed("x") and a.accepting  # a rejected feed leaves the state unchanged


def test_whitespace_is_unbounded_in_the_recogniser() -> None:
    value = {"a": [1, {"b": None}], "c": "x"}
    c = compile_schema({"type": "object"})
    assert c.accepts(json.dumps(value, indent=40))


def test_anyof_branches_run_in_parallel() -> None:
    schema = {
        "anyOf": [
            {"type": "object", "properties": {"k": {"const": 1}, "v": {"type": "string"}}, "required": ["k", "v"]},
            {"type": "object", "properties": {"k": {"const": 2}, "v": {"type": "integer"}}, "required": ["k", "v"]},
        ]
    }
    c = compile_schema(schema)
    for text in ['{"k":1,"v":"x"}', '{"k":2,"v":3}', '{"k":1,"v":3}', '{"v":3,"k":2}', '{"v":"x","k":2}']:
        assert c.accepts(text) == reference_valid(schema, json.loads(text)), text


def test_unsatisfiable_schema_accepts_nothing() -> None:
    for schema in [
        False,
        {"allOf": [{"type": "string"}, {"type": "integer"}]},
        {"minimum": 3, "maximum": 2, "type": "number"},
    ]:
        c = compile_schema(schema)
        assert not c.satisfiable and not c.accepts("1") and not c.accepts('"a"')


# --------------------------------------------------------------------------------------------------------
# differential tests against the reference validator and Python's re

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)
    | st.text(st.characters(codec="utf-8"), max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from("abcxyz"), children, max_size=4),
    max_leaves=10,
)
DIFF_SCHEMAS = [
    {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0}, "b": {"type": "string"}},
        "required": ["a"],
    },
    {
        "type": "array",
        "prefixItems": [{"type": "boolean"}, {"type": "null"}],
        "items": {"type": "number"},
        "maxItems": 3,
    },
    {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "number", "exclusiveMaximum": 0.5}]},
    {"enum": [None, 1, "x", [1, "a"], {"a": [True]}]},
    {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}, "maxProperties": 2},
    {"not": {"type": ["object", "array"]}, "minimum": -3.5, "maxLength": 3},
    {
        "$defs": {"t": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#/$defs/t"}}]}},
        "$ref": "#/$defs/t",
    },
    {"type": "string", "pattern": "^[a-c]*(x|yz)?$", "minLength": 1},
    {"oneOf": [{"type": "integer"}, {"minimum": 2}, {"type": "string", "pattern": "a"}]},
    {"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"not": {"type": ["null", "object"]}}},
    {"not": {"enum": ["a", 1, [1, None], {"a": 1}, None]}},
    {"type": "object", "dependentRequired": {"a": ["b"], "b": ["c"]}, "properties": {"a": {"type": "integer"}}},
    {"not": {"anyOf": [{"type": "integer"}, {"pattern": "^x"}, {"required": ["b"]}, {"prefixItems": [True, False]}]}},
    # complements of additionalProperties where other names are open: "some name outside the declared ones has a value
    # that fails the schema" (Travis' possiblySecretString; Bitbucket's pipe variables)
    {"oneOf": [{"type": "string"}, {"type": "object", "additionalProperties": False, "properties": {"a": True}}]},
    {
        "oneOf": [
            {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}},
            {"type": "object", "properties": {"a": {"type": "integer"}}},
        ]
    },
    {"not": {"additionalProperties": {"type": ["integer", "array"]}}, "properties": {"a": {"type": "string"}}},
    {
        "not": {"properties": {"a": True}, "additionalProperties": {"type": "integer"}},
        "required": ["b"],
        "maxProperties": 3,
    },
    {"additionalProperties": {"not": {"additionalProperties": {"anyOf": [{"type": "null"}, {"type": "array"}]}}}},
    {"not": {"properties": {"a": True}, "unevaluatedProperties": {"type": "integer"}}, "minProperties": 1},
]


@pytest.mark.parametrize("index", range(len(DIFF_SCHEMAS)))
@FAST
@given(value=JSON_VALUES)
def test_verdicts_match_reference_validator(index: int, value) -> None:
    schema = DIFF_SCHEMAS[index]
    compiled = compile_schema(schema)
    expected = reference_valid(schema, value)
    for text in (
        json.dumps(value),
        json.dumps(value, indent=1, ensure_ascii=False),
        json.dumps(value, separators=(",", ":")),
    ):
        assert compiled.accepts(text) == expected, text


# A discriminated union whose tag only a sibling requires (Drone's pipelines): on their own the branches overlap (an
# object without "kind" meets both) and cannot be negated (uniqueItems), so "exactly one" is out of reach; among the
# instances of the sibling, which requires "kind", they are disjoint, and oneOf is anyOf there.
TAGGED = {"a": {"type": "array", "uniqueItems": True}, "b": {"type": "array", "uniqueItems": True, "maxItems": 1}}
TAG_REQUIRED = {"type": "object", "required": ["kind"], "properties": {"kind": {"enum": ["a", "b", "c"]}}}
TAGGED_ONE_OF = {"oneOf": [{"properties": {"kind": {"const": k}, "x": x}} for k, x in TAGGED.items()]}


@pytest.mark.parametrize(
    "schema",
    [
        {"allOf": [TAG_REQUIRED, TAGGED_ONE_OF]},
        {"allOf": [TAGGED_ONE_OF, {"$ref": "#/$defs/tag"}], "$defs": {"tag": TAG_REQUIRED}},  # the sibling comes after
        {**TAG_REQUIRED, **TAGGED_ONE_OF},  # the tag required beside the oneOf, in the same schema object
    ],
)
def test_one_of_branches_disjoint_among_their_siblings_instances(schema) -> None:
    compiled = compile_schema(schema)
    instances = [
        {"kind": "a", "x": [1, 2]},
        {"kind": "a", "x": [1, 1]},
        {"kind": "b", "x": [1]},
        {"kind": "b", "x": [1, 2]},
        {"kind": "c"},
        {"kind": "c", "x": "not checked"},
        {"kind": "d"},
        {"x": [1]},
        {},
        {"kind": "a"},
        [1],
        "kind",
    ]
    for value in instances:
        expected = reference_valid(schema, value)
        for text in (json.dumps(value), json.dumps(value, indent=1), json.dumps(value, separators=(",", ":"))):
            assert compiled.accepts(text) == expected, text
    assert sum(reference_valid(schema, v) for v in instances) == 3  # each kind accepted and refused; "c" meets neither


def test_one_of_overlapping_within_its_siblings_is_still_refused() -> None:
    """The sibling does not separate the branches (it requires nothing they differ on): still fail closed."""
    schema = {"allOf": [{"type": "object", "required": ["x"]}, TAGGED_ONE_OF]}
    with pytest.raises(UnsupportedSchemaError, match="oneOf"):
        compile_schema(schema)


def test_a_complement_of_a_complement_is_the_schema() -> None:
    """``not (not S)`` is ``S``. Here the second branch's complement is "an item that fails WIDER", and its items that do
    not match that are ``not (not WIDER)``: negated keyword by keyword, the complement of ``additionalProperties`` would
    be negated again (Travis CI's webhooks); as ``WIDER`` itself, it compiles, and agrees with the reference."""
    closed = {"type": "object", "properties": {"p": {"type": "boolean"}}, "additionalProperties": False}
    wider = {"type": "object", "properties": {"p": {}, "q": {}}, "additionalProperties": False}
    schema = {"oneOf": [{"type": "array", "items": closed}, {"type": "array", "maxItems": 1, "items": wider}]}
    compiled = compile_schema(schema)
    values = [[], [{}], [{"p": True}], [{"q": 1}], [{"p": 1}], [{}, {}], [{"q": 1}, {}], [{"p": True}, {"p": 0}], 1]
    for value in values:
        assert compiled.accepts(json.dumps(value)) == reference_valid(schema, value), value
    assert sum(reference_valid(schema, v) for v in values) == 3


PATTERNS = [
    "a+b?",
    "^a*$",
    "^(ab|c)+$",
    "x{2,3}",
    "^[^a-c]+$",
    "\\d\\.\\d",
    "^\\w+$",
    "^.$",
    "colou?r",
    "[\\s-]",
    "^$",
    "",
    "pull-push|pull|x\\w{1,200}",  # unanchored counters: states stop multiplying once it matched (GitLab's form)
    "^a.*",
]


def test_an_unanchored_counter_does_not_blow_up() -> None:
    """GitLab CI's cache policy pattern: 255 counter positions behind an implicit ``.*``; once ``$`` and one word
    character are seen every continuation matches, so the automaton stays small instead of passing the cap."""
    compiled = compile_schema({"type": "string", "pattern": "pull-push|pull|push|\\$\\w{1,255}"})
    for text, ok in [("pull", True), ("$x", True), ("a $b c", True), ("$", False), ("pul", False), ("pus h", False)]:
        assert compiled.accepts(json.dumps(text)) == ok == bool(re.search(r"pull-push|pull|push|\$\w{1,255}", text))


# Code points to judge: all of Latin-1, a stride through the whole code space, and two that changed category between
# Unicode 14 (Python 3.11's unicodedata) and 16: U+0295 Ll -> Lo, U+1171E Mn -> Mc.
_SAMPLE = sorted({*range(0x100), *range(0x100, 0x110000, 211), 0x295, 0x1171E} - set(range(0xD800, 0xE000)))
CATEGORY_PATTERNS = [
    "^\\p{L}$", "^\\p{Lu}$", "^\\p{Ll}$", "^\\p{Letter}$", "^\\p{gc=Nd}$", "^\\p{General_Category=Number}$",
    "^\\p{P}$", "^\\p{S}$", "^\\p{Zs}$", "^\\p{Cc}$", "^\\p{C}$", "^\\p{Mn}$", "^\\p{Any}$", "^\\p{ASCII}$",
    "^\\p{Assigned}$", "^\\P{L}$", "^\\P{Cc}$", "^[^\\s\\p{Cc}]$", "^[\\p{Lu}\\d_]$", "^[^\\P{Nd}]$",
]  # fmt: skip


@pytest.mark.parametrize("pattern", CATEGORY_PATTERNS)
def test_unicode_categories_stay_inside_an_ecma_engine(pattern: str) -> None:
    """``\\p{..}`` against regress (an ECMA-262 engine, ``u`` flag; Python's ``re`` has no ``\\p``): never a code point
    the engine rejects (whatever the Unicode version), exactly the engine's verdict on ASCII (stable), and most of
    what it accepts elsewhere for a positive category."""
    regress = pytest.importorskip("regress")
    engine = regress.Regex(pattern, "u")
    compiled = compile_schema({"type": "string", "pattern": pattern})
    theirs = {cp for cp in _SAMPLE if engine.find(chr(cp)) is not None}
    ours = {cp for cp in _SAMPLE if compiled.accepts(json.dumps(chr(cp), ensure_ascii=False))}
    assert ours <= theirs, sorted(map(hex, ours - theirs))[:10]
    assert {cp for cp in ours if cp < 0x80} == {cp for cp in theirs if cp < 0x80}
    if "\\P" not in pattern and "^" not in pattern[1:] and pattern != "^\\p{C}$":  # C holds Cn, left out here
        # not merely ASCII: nearly all the engine's BMP code points below the private-use area (newer Unicode versions
        # assign most of their new characters in the other planes, which the intersection leaves out)
        bmp = {cp for cp in theirs if cp < 0xE000}
        assert len(ours & bmp) >= 0.98 * len(bmp)


def test_circleci_orb_pattern() -> None:
    """CircleCI's orb reference (``dev:`` then no space or control character): compiled, and judged as an ECMA engine
    judges it on ASCII; a non-ASCII character after ``dev:`` is the part kept out (a negated class with ``\\p``)."""
    pattern = "^[a-z][a-z0-9_-]*/[a-z][a-z0-9_-]*@(dev:[^\\s\\p{Cc}]+|\\d+|\\d+\\.\\d+|volatile)$"
    compiled = compile_schema({"type": "string", "pattern": pattern})
    engine = pytest.importorskip("regress").Regex(pattern, "u")
    for text in ["ns/orb@dev:alpha", "ns/orb@dev:a!b", "ns/orb@dev:a b", "ns/orb@dev:a\x07", "ns/orb@1.2", "ns/orb@"]:
        assert compiled.accepts(json.dumps(text)) == (engine.find(text) is not None), text
    assert not compiled.accepts(json.dumps("ns/orb@dev:caf\u00e9"))


@pytest.mark.parametrize("pattern", ["\\p{Script=Latin}", "\\p{Alphabetic}", "\\p{Foo}"])
def test_unicode_properties_other_than_categories_are_refused(pattern: str) -> None:
    with pytest.raises(UnsupportedSchemaError, match="Unicode property"):
        compile_schema({"type": "string", "pattern": pattern})
    with pytest.raises(SchemaError, match="name"):
        compile_schema({"type": "string", "pattern": "\\pL"})


def test_compiling_leaves_the_cyclic_collector_as_it_found_it() -> None:
    """The collector is paused while a schema compiles: it is back on afterwards, after a refusal or an error too,
    and stays off for a caller who had turned it off."""
    import gc

    for schema in [{"type": "integer"}, {"pattern": "(?=x)"}, {"type": "foo"}, {"$schema": 7}]:
        with contextlib.suppress(SchemaError):
            compile_schema(schema)
        assert gc.isenabled(), schema
    gc.disable()
    try:
        compile_schema({"type": "string", "maxLength": 3})
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_enum_trie_is_the_subset_construction_dfa() -> None:
    """``literal_set_dfa`` (an enum's trie taken as its DFA) equals what the subset construction builds from the
    trie's NFA, state for state, on random sets (empty string, shared prefixes, non-ASCII and astral included)."""
    from omnifuse.schema.automaton import build_dfa, literal_set_dfa
    from omnifuse.schema.regex import literal_set_nfa

    rng = random.Random(7)
    for _ in range(200):
        strings = tuple(
            sorted(
                {
                    "".join(rng.choice("ab\u00e9\U0001f600") for _ in range(rng.randint(0, 5)))
                    for _ in range(rng.randint(1, 12))
                }
            )
        )
        expected = build_dfa([literal_set_nfa(strings)], "#", 10_000)
        got = literal_set_dfa(strings)
        assert (got.trans, got.accept) == (expected.trans, expected.accept), strings
    assert literal_set_dfa(()) is None


@pytest.mark.parametrize("pattern", PATTERNS)
@FAST
@given(text=st.text(st.sampled_from("abcxr.1 -\n_é"), max_size=7))
def test_patterns_agree_with_python_re(pattern: str, text: str) -> None:
    compiled = compile_schema({"type": "string", "pattern": pattern})
    verdict = compiled.accepts(json.dumps(text))
    if text.endswith("\n") or not text.isascii():
        # Python's "$" also matches before a final newline and its \w \d \s are Unicode-aware: ours is the
        # subset both Python and ECMA-262 accept
        assert not verdict or re.search(pattern, text)
    else:
        assert verdict == bool(re.search(pattern, text))


@pytest.mark.parametrize(
    "spec",
    [
        dict(lo=3, hi=17),
        dict(lo=-2.5, lo_excl=True, hi=0.25),
        dict(integer=True, lo=-20, hi=-3, hi_excl=True),
        dict(lo=0.1, hi=0.1),
        dict(values=(1.5, -2, 0.03, 40)),
        dict(integer=True, lo=100, hi=1000),
        dict(multiples=(7,), lo=-30, hi=40),
        dict(multiples=(1.5,), lo=2),
        dict(multiples=(3, 4), hi=-10),
    ],
)
def test_number_prefix_costs_match_brute_force(spec) -> None:
    """The shortest completion of every short number prefix equals a brute-force search over decimal texts."""
    num = NumSpec(**spec)
    max_len = 4
    texts = set()

    def grow(t: str) -> None:
        texts.add(t)
        if len(t) == max_len:
            return
        for ch in "-0123456789.":
            u = t + ch
            if re.fullmatch(r"-?((0|[1-9]\d*)(\.\d*)?)?", u):
                if "." in u and num.integer:
                    continue
                grow(u)

    grow("")
    complete = {t for t in texts if re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?", t)}
    valid = {t for t in complete if num.accepts_text(t) and num.cost(*_split(t)) == 0}
    shortest: dict[str, int] = {}
    for v in valid:
        for k in range(len(v) + 1):
            shortest[v[:k]] = min(shortest.get(v[:k], 99), len(v) - k)
    for t in texts:
        best = shortest.get(t)
        if best is not None:
            assert num.cost(*_split(t)) == best, t
        elif num.cost(*_split(t)) is not None:
            assert num.cost(*_split(t)) > max_len - len(t), t
    for t in complete:
        if num.cost(*_split(t)) == 0:
            value = json.loads(t)
            schema = {"type": "integer" if num.integer else "number"}
            for key, kw in (("lo", "minimum"), ("hi", "maximum")):
                if spec.get(key) is not None:
                    schema["exclusiveM" + kw[1:] if spec.get(key + "_excl") else kw] = spec[key]
            if "values" in spec:
                schema["enum"] = list(spec["values"])
            if "multiples" in spec:
                schema["allOf"] = [{"multipleOf": d} for d in spec["multiples"]]
            assert reference_valid(schema, value), t


def _split(t: str):
    if t == "":
        return None, "", None
    neg = t.startswith("-")
    body = t[1:] if neg else t
    ip, _, fr = body.partition(".")
    return neg, ip, (fr if "." in body else None)


def test_bounds_survive_flush_to_zero() -> None:
    """``torch.set_flush_denormal(True)`` (used by the CLI) makes subnormal doubles read as 0: the mask avoids them."""
    import torch

    torch.set_flush_denormal(True)  # as tests/conftest.py and the CLI do (the mode cannot be read back)
    num = NumSpec(lo=0, lo_excl=True, hi=0, hi_excl=False)
    assert num.intervals == [] or all(a > 0 for a, _, _ in num.intervals)
    num = NumSpec(lo=0, lo_excl=True, hi=0.5, hi_excl=True)
    lo = num.intervals[0][0]
    assert lo > 0 and float(lo) > 0  # a normal double: it parses back to a positive float
    assert num.cost(True, "", None) is None  # no negative number, not even -0
    assert num.cost(False, "0", None) == 2  # "0" -> "0.1"


# Other documents a $ref may point into (``resources``): nothing is fetched, the caller hands them over by URI.
DEFS = {"$defs": {"pos": {"type": "integer", "minimum": 1}, "tag": {"type": "string", "pattern": "^[a-z]+$"}}}


def _reference(schema, resources: dict):
    """The draft validator of ``schema`` with ``resources`` in a referencing registry (the independent verdict)."""
    import referencing
    import referencing.jsonschema

    validator = jsonschema.validators.validator_for(schema)
    # a document that declares no draft is read in the referring schema's (what compile_schema does)
    spec = referencing.jsonschema.specification_with(validator.META_SCHEMA["$schema"])
    registry = referencing.Registry().with_resources(
        (uri, referencing.Resource.from_contents(doc, default_specification=spec)) for uri, doc in resources.items()
    )
    return validator(schema, registry=registry)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"$ref": "https://example.com/defs.json#/$defs/pos"}},
        {"$id": "https://example.com/root.json", "type": "array", "items": {"$ref": "defs.json#/$defs/tag"}},
        {"$ref": "https://example.com/pair.json"},
        {"$schema": "http://json-schema.org/draft-04/schema#", "$ref": "https://example.com/old.json"},
    ],
)
def test_refs_into_other_documents_judge_as_the_reference_validator(schema) -> None:
    resources = {
        "https://example.com/defs.json": DEFS,
        # refers back into defs.json relative to its own URI, and is read as draft 7 (its own $schema): items as a list
        "https://example.com/pair.json": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "array",
            "items": [{"$ref": "defs.json#/$defs/pos"}, {"$ref": "defs.json#/$defs/tag"}],
            "additionalItems": False,
        },
        # no $schema: read in the draft of the schema that refers to it (draft 4's boolean exclusiveMinimum)
        "https://example.com/old.json": {"type": "integer", "minimum": 3, "exclusiveMinimum": True},
    }
    compiled = compile_schema(schema, resources=resources)
    reference = _reference(schema, resources)
    for value in [[1, 2], [0], ["ab"], [1, "ab"], [1, "ab", 2], [1, "A"], 3, 4, [], "x"]:
        text = json.dumps(value)
        assert compiled.accepts(text) == reference.is_valid(value), (schema, value)


def test_resources_are_read_only_when_a_reference_reaches_them() -> None:
    """A document of an unknown draft among the resources breaks nothing until a $ref points into it; then the $ref
    is refused naming the document. An unknown URI is refused as before; a resource URI must be absolute."""
    resources = {"https://example.com/defs.json": DEFS, "https://example.com/odd.json": {"$schema": "urn:odd"}}
    assert compile_schema({"$ref": "https://example.com/defs.json#/$defs/pos"}, resources=resources).accepts("2")
    with pytest.raises(UnsupportedSchemaError, match="odd.json") as e:
        compile_schema({"$ref": "https://example.com/odd.json"}, resources=resources)
    assert e.value.keyword == "$ref"
    with pytest.raises(UnsupportedSchemaError, match="outside the schema and its resources"):
        compile_schema({"$ref": "https://example.com/missing.json"}, resources=resources)
    for bad in ({"defs.json": DEFS}, {"https://example.com/defs.json#x": DEFS}):
        with pytest.raises(SchemaError, match="absolute URI"):
            compile_schema({"$ref": "https://example.com/defs.json"}, resources=bad)
    with pytest.raises(SchemaError, match="resources map URIs to schemas"):
        compile_schema(True, resources={"https://example.com/x.json": [1]})


def test_a_resource_without_a_draft_is_read_in_the_draft_of_the_document_that_refers_to_it() -> None:
    """Draft 7 root -> a 2020-12 document -> one that declares none: the last is read as 2020-12 (prefixItems apply),
    as jsonschema reads it."""
    d7, d2020 = "http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft/2020-12/schema"
    resources = {
        "https://e.com/a.json": {"$schema": d2020, "properties": {"x": {"$ref": "b.json"}}},
        "https://e.com/b.json": {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
    }
    schema = {"$schema": d7, "$ref": "https://e.com/a.json"}
    compiled, reference = compile_schema(schema, resources=resources), _reference(schema, resources)
    for value in [{"x": [1, 2]}, {"x": ["a", 2]}, {"x": ["a", "b"]}, {"x": []}]:
        assert compiled.accepts(json.dumps(value)) == reference.is_valid(value), value


@pytest.mark.parametrize(
    "resources",
    [
        # another $id and a relative reference: jsonschema resolves it against the key, the specification against $id
        {"https://example.com/a.json": {"$id": "https://other.org/b.json", "$ref": "c.json"},
         "https://other.org/c.json": {"type": "integer"}, "https://example.com/c.json": {"type": "string"}},
        # a draft 7 document whose root has $ref and siblings: draft 7 ignores them, jsonschema applies them
        {"https://example.com/a.json": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "string",
                                        "definitions": {"i": {"type": "integer"}}, "$ref": "#/definitions/i"}},
    ],
)  # fmt: skip
def test_resources_the_reference_validator_reads_otherwise_are_refused(resources) -> None:
    with pytest.raises(UnsupportedSchemaError, match="a.json"):
        compile_schema({"$ref": "https://example.com/a.json"}, resources=resources)


def test_the_compile_cache_tells_resources_apart() -> None:
    schema = {"$ref": "https://example.com/n.json"}
    small = compile_schema(schema, resources={"https://example.com/n.json": {"maximum": 5}})
    large = compile_schema(schema, resources={"https://example.com/n.json": {"minimum": 5}})
    assert small.accepts("1") and not small.accepts("9")
    assert large.accepts("9") and not large.accepts("1")


def test_generation_under_a_schema_with_resources_validates() -> None:
    import torch

    from omnifuse.data.tokenizer import ByteTokenizer
    from omnifuse.schema import JsonSchemaLogitsProcessor

    resources = {"https://example.com/defs.json": DEFS}
    schema = {
        "type": "object",
        "properties": {"n": {"$ref": "https://example.com/defs.json#/$defs/pos"},
                       "t": {"$ref": "https://example.com/defs.json#/$defs/tag"}},
        "required": ["n", "t"],
        "additionalProperties": False,
    }  # fmt: skip
    tok = ByteTokenizer()
    rows = 8
    proc = JsonSchemaLogitsProcessor(
        [schema] * rows, tok.token_bytes, tok.vocab_size, tok.eos_id, 48, prompt_len=1, pad_id=tok.pad_id,
        resources=resources,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    seqs = torch.full((rows, 1), tok.bos_id)
    for _ in range(48):
        nxt = (proc(seqs, torch.randn(rows, tok.vocab_size, generator=g) * 3)).argmax(-1)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
    reference = _reference(schema, resources)
    for row in seqs[:, 1:].tolist():
        data = b"".join(tok.token_bytes(t) for t in row if t not in (tok.eos_id, tok.pad_id))
        assert reference.is_valid(json.loads(data)), data


# Complements by the schema's structure (Compiler._negate_structurally): what the compiler falls back to where De Morgan
# over a schema's whole normal form passes 512 alternatives (Bitbucket's image_aws_auth: "exactly one" of two
# overlapping branches under a oneOf of its own). Forced here on every complement, on small schemas, and held to the
# validator's verdicts.
STRUCTURAL_NEGATIONS = [
    {"not": {"oneOf": [{"type": "integer"}, {"minimum": 2}, {"type": "string", "pattern": "a"}]}},
    {"oneOf": [{"type": "integer"}, {"minimum": 2}, {"type": "string", "pattern": "a"}]},
    {"not": {"anyOf": [{"type": "integer"}, {"required": ["b"]}], "maxLength": 2}},
    {"not": {"allOf": [{"type": "object"}, {"required": ["a"]}], "properties": {"a": {"type": "string"}}}},
    {"not": {"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"type": ["null", "array"]}}},
    {
        "not": {"$ref": "#/$defs/p", "minProperties": 1},
        "$defs": {"p": {"properties": {"a": {"oneOf": [{"type": "integer"}, {"minimum": 0}]}}}},
    },
    {"not": {"not": {"type": "integer"}, "minimum": 3}},
    {"not": {"dependentSchemas": {"a": {"required": ["b"]}}, "type": "object"}},
    {
        "oneOf": [
            {
                "type": "object",
                "required": ["a"],
                "properties": {
                    "a": {
                        "oneOf": [{"required": ["b", "c"]}, {"required": ["x"]}],
                        "properties": {"b": {"type": "string"}},
                    }
                },
            },
            {"type": "object", "required": ["x"]},
        ]
    },
]


@pytest.mark.parametrize("index", range(len(STRUCTURAL_NEGATIONS)))
@FAST
@given(value=JSON_VALUES)
def test_complements_by_structure_judge_as_the_reference_validator(index: int, value) -> None:
    from unittest import mock

    from omnifuse.schema import compiled as compiled_module
    from omnifuse.schema.compiler import Compiler, _TooManyAlternatives

    schema = STRUCTURAL_NEGATIONS[index]
    compiled = _STRUCTURAL.get(index)
    if compiled is None:

        def too_many(self, raw):
            raise _TooManyAlternatives("not", raw.path, "forced by the test")

        with mock.patch.object(Compiler, "_negate", too_many):  # (a fresh compile: the cache is bypassed)
            compiled = _STRUCTURAL[index] = compiled_module.CompiledSchema(schema, "assert", {})
    expected = reference_valid(schema, value)
    for text in (json.dumps(value), json.dumps(value, indent=1), json.dumps(value, separators=(",", ":"))):
        assert compiled.accepts(text) == expected, text


_STRUCTURAL: dict = {}
