"""Complements of schemas, for ``not``, ``if``/``then``/``else`` and ``oneOf`` whose branches may overlap.

An applicator-free schema object is the conjunction of its keywords, and (apart from the few keywords that read
each other's annotations) each keyword is an independent assertion. Its complement is therefore the union of
the complements of its keywords (De Morgan); :func:`negate_keywords` writes each complement as ordinary schema
objects. A keyword that applies to one JSON type holds for every other type, so its complement only contains
values of that type: ``minimum: 3`` -> "a number < 3", ``required: [a]`` -> "an object without ``a``",
``properties: {a: S}`` -> "an object with ``a`` whose value satisfies ``not S``"; ``type``/``enum``/``const``
constrain every value and their complements span all types.

Complements that plain keywords cannot express use internal keywords (tuple keys, which no JSON document can
contain): :data:`K_KINDS` (a set of JSON types where numbers are split into integers and non-integers),
:data:`K_NOT_VALUES` (scalars excluded), :data:`K_NOT_PATTERN` / :data:`K_NOT_FORMAT` (strings outside a
regular language), :data:`K_EXTRA_NAME` (``additionalProperties``: some other name has a value outside its
schema, expanded where an object's names are finitely many). Existential complements over items are ``contains``
(``items: S`` -> "contains ``not S``"; ``contains`` -> fewer than ``minContains`` or more than ``maxContains``
matches). ``uniqueItems`` -> :data:`K_REPEAT` ("an array with two equal items"), which no recogniser machine
runs: the compiler admits it only where a ``uniqueItems: true`` in the same conjunction leaves it empty (the overlap
of two unique-list branches of a ``oneOf``, which cancels out) and refuses it anywhere else. Other keywords whose
complement is existential (``patternProperties``, ...) raise :class:`~.errors.UnsupportedSchemaError`: failing
closed.
"""

from __future__ import annotations

from .errors import SchemaError, UnsupportedSchemaError

K_KINDS = ("omnifuse", "kinds")
K_NOT_VALUES = ("omnifuse", "not-values")
K_NOT_PATTERN = ("omnifuse", "not-pattern")
K_NOT_FORMAT = ("omnifuse", "not-format")
# "some name outside these declared names and patterns has a value outside this schema": the complement of
# additionalProperties, (names, patterns, schema). Existential over names: the compiler expands it only where the
# object's names are finitely many (see Compiler._merge_extra_name), and refuses it elsewhere.
K_EXTRA_NAME = ("omnifuse", "extra-name")
# "an array with two equal items": the complement of uniqueItems (its value, the path of that uniqueItems). Only ever
# satisfiable where no uniqueItems holds beside it, and there the compiler refuses it (Compiler._merge).
K_REPEAT = ("omnifuse", "repeat")
INTERNAL = (K_KINDS, K_NOT_VALUES, K_NOT_PATTERN, K_NOT_FORMAT, K_EXTRA_NAME, K_REPEAT)

KINDS = ("null", "boolean", "int", "frac", "string", "array", "object")


def _count(v) -> bool:
    return (
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 or isinstance(v, float) and v.is_integer() and v >= 0
    )


def _non(*kinds: str) -> dict:
    return {K_KINDS: [k for k in KINDS if k not in kinds]}


def _structural_ne(value) -> dict:
    """A schema for "any value except ``value``" (an array or an object)."""
    if isinstance(value, list):
        n = len(value)
        alts = [_non("array"), {"type": "array", "minItems": n + 1}]
        if n:
            alts.append({"type": "array", "maxItems": n - 1})
        for i, x in enumerate(value):
            alts.append({"type": "array", "minItems": n, "prefixItems": [True] * i + [{"not": {"const": x}}]})
        return {"anyOf": alts}
    alts = [_non("object"), {"type": "object", "minProperties": len(value) + 1}]
    for k, x in value.items():
        alts.append({"type": "object", "properties": {k: False}})
        alts.append({"type": "object", "required": [k], "properties": {k: {"not": {"const": x}}}})
    return {"anyOf": alts}


def negate_keywords(schema: dict, path: str, formats: str, trivially_true, type_kinds) -> list[dict]:
    """Schema objects whose union is the complement of the applicator-free schema object ``schema``.

    ``trivially_true(v)`` tells whether a subschema constrains nothing; ``type_kinds(t, path)`` maps a ``type``
    value to kinds (see :data:`KINDS`). An empty result means ``schema`` accepts everything is false, i.e. the
    complement is empty only when the list is empty *and* ``schema`` has no constraint (the caller decides).
    """
    out: list[dict] = []
    for kw, v in schema.items():
        if kw == K_KINDS:
            out.append({K_KINDS: [k for k in KINDS if k not in v]})
        elif kw == K_NOT_VALUES:
            if v:
                out.append({"enum": list(v)})
        elif kw == K_NOT_PATTERN:
            out.append({"type": "string", "pattern": v})
        elif kw == K_NOT_FORMAT:
            out.append({"type": "string", "format": v})
        elif kw == "type":
            out.append({K_KINDS: [k for k in KINDS if k not in type_kinds(v, path)]})
        elif kw in ("enum", "const"):
            vals = v if kw == "enum" else [v]
            scalars = [x for x in vals if not isinstance(x, (list, dict))]
            structural = [_structural_ne(x) for x in vals if isinstance(x, (list, dict))]
            d: dict = {K_NOT_VALUES: scalars}
            if structural:
                d["allOf"] = structural
            out.append(d)
        elif kw in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            flipped = {
                "minimum": "exclusiveMaximum",
                "exclusiveMinimum": "maximum",
                "maximum": "exclusiveMinimum",
                "exclusiveMaximum": "minimum",
            }[kw]
            out.append({"type": "number", flipped: v})
        elif kw in ("minLength", "minItems", "minProperties"):
            if v:
                typ = {"minLength": "string", "minItems": "array", "minProperties": "object"}[kw]
                out.append({"type": typ, kw.replace("min", "max"): v - 1})
        elif kw in ("maxLength", "maxItems", "maxProperties"):
            typ = {"maxLength": "string", "maxItems": "array", "maxProperties": "object"}[kw]
            out.append({"type": typ, kw.replace("max", "min"): v + 1})
        elif kw == "pattern":
            out.append({"type": "string", K_NOT_PATTERN: v})
        elif kw == "format":
            if formats == "assert":
                out.append({"type": "string", K_NOT_FORMAT: v})
        elif kw == "required":
            out.extend({"type": "object", "properties": {k: False}} for k in v)
        elif kw == "dependentRequired":
            for k, deps in v.items():
                out.extend({"type": "object", "required": [k], "properties": {d: False}} for d in deps)
        elif kw == "properties":
            for k, sub in v.items():
                out.append({"type": "object", "required": [k], "properties": {k: {"not": sub}}})
        elif kw == "prefixItems":
            for i, sub in enumerate(v):
                out.append({"type": "array", "minItems": i + 1, "prefixItems": [True] * i + [{"not": sub}]})
        elif kw == "items":
            n_prefix = len(schema.get("prefixItems", []))
            if v is False:
                out.append({"type": "array", "minItems": n_prefix + 1})
            elif not trivially_true(v):
                if n_prefix:  # "some item past the prefix fails": contains cannot skip the prefix positions
                    raise UnsupportedSchemaError("items", path, "cannot be negated beside prefixItems")
                out.append({"type": "array", "contains": {"not": v}})  # some item fails
        elif kw == "contains":
            # count = items matching v; the keyword holds for arrays with minContains <= count <= maxContains
            lo, hi = schema.get("minContains", 1), schema.get("maxContains")
            if not _count(lo) or (hi is not None and not _count(hi)):
                raise SchemaError("minContains / maxContains must be non-negative integers", path)
            lo, hi = int(lo), None if hi is None else int(hi)  # 1e300 - 1 is 1e300 as a float
            if lo == 1:
                out.append({"type": "array", "items": {"not": v}})  # no item matches (even "contains: {}" says >= 1)
            elif lo > 1:
                out.append({"type": "array", "contains": v, "minContains": 0, "maxContains": lo - 1})
            if hi is not None:
                out.append({"type": "array", "contains": v, "minContains": hi + 1})
        elif kw == "additionalProperties":
            if not trivially_true(v):
                names = tuple(schema.get("properties") or {})
                patterns = tuple(schema.get("patternProperties") or {})
                out.append({"type": "object", K_EXTRA_NAME: (names, patterns, v)})
        elif kw == K_EXTRA_NAME:
            raise UnsupportedSchemaError("additionalProperties", path, "cannot be negated twice")
        elif kw in ("patternProperties", "propertyNames", "dependentSchemas",
                    "unevaluatedItems", "unevaluatedProperties"):  # fmt: skip
            if kw == "patternProperties" and isinstance(v, dict) and all(trivially_true(x) for x in v.values()):
                continue
            if kw != "patternProperties" and trivially_true(v):
                continue
            raise UnsupportedSchemaError(kw, path, "cannot be negated")
        elif kw == "uniqueItems":
            if v is True:
                out.append({"type": "array", K_REPEAT: path})
            elif v:  # not a boolean: the validator reads it as true; the compiler does not (see Compiler._merge)
                raise UnsupportedSchemaError(kw, path, "cannot be negated")
        elif kw == K_REPEAT:
            out.append({"type": "array", "uniqueItems": True})
        elif kw == "multipleOf":
            raise UnsupportedSchemaError(kw, path)
        # annotations, no-op keywords and unknown keywords assert nothing: no disjunct
    return out
