"""Older JSON Schema drafts (4, 6, 7, 2019-09) rewritten as the draft 2020-12 schema that means the same.

The compiler speaks draft 2020-12 only; a schema declaring another draft in its root ``$schema`` is first rewritten
here, keyword by keyword, into the 2020-12 schema that accepts exactly the same instances:

* ``id`` (draft 4) -> ``$id``; an ``$id`` that is only a fragment (``"#foo"``, drafts 4-7) -> ``$anchor``;
* ``exclusiveMinimum: true`` + ``minimum: x`` (draft 4) -> ``exclusiveMinimum: x`` (``false``: dropped);
* array-form ``items`` -> ``prefixItems``, with ``additionalItems`` -> ``items`` (``additionalItems`` beside a
  single ``items`` schema does nothing in those drafts and is dropped);
* ``dependencies`` (drafts 4-7) -> ``dependentRequired`` (a list of names) / ``dependentSchemas`` (a schema);
* ``$ref`` with siblings (drafts 4-7): the siblings are ignored by those drafts, so they are dropped (``definitions``
  beside it stays reachable);
* ``$recursiveRef`` (2019-09) -> ``$ref`` when no schema of the document sets ``$recursiveAnchor: true`` (then the two
  mean the same); otherwise it stays and the compiler refuses it;
* keywords a draft does not have (``const`` in draft 4, ``if`` in draft 6, ``prefixItems`` before 2020-12, ...) are
  annotations in it, so they are dropped rather than enforced.

One difference is left, in what the recogniser *accepts*, never in what generation writes: draft 4 does not count
``1.0`` as an integer and later drafts do; the recogniser follows the later drafts for ``type: integer`` while
generation only ever writes integers without a fraction or exponent.

JSON Pointers in ``$ref`` (``#/items/0``, ``#/dependencies/a``) follow the renamed keywords. Boolean schemas pass
through. The rewrite never widens or narrows the set of valid instances; where a draft means something the 2020-12
compiler cannot express, the keyword stays and is refused with its path like any other.
"""

from __future__ import annotations

import copy
from urllib.parse import quote, unquote

from .errors import UnsupportedSchemaError

DRAFT4, DRAFT6, DRAFT7, DRAFT2019, DRAFT2020 = "draft4", "draft6", "draft7", "draft2019-09", "draft2020-12"
DRAFT_URIS = {
    "http://json-schema.org/draft-04/schema": DRAFT4,
    "http://json-schema.org/draft-06/schema": DRAFT6,
    "http://json-schema.org/draft-07/schema": DRAFT7,
    "https://json-schema.org/draft/2019-09/schema": DRAFT2019,
    "https://json-schema.org/draft/2020-12/schema": DRAFT2020,
}
DRAFT_2020_12_URI = "https://json-schema.org/draft/2020-12/schema"
DRAFTS = (DRAFT4, DRAFT6, DRAFT7, DRAFT2019, DRAFT2020)

# Keywords 2020-12 gives a meaning to, and the first draft that has each (older drafts treat them as annotations).
_INTRODUCED = {
    "const": DRAFT6,
    "contains": DRAFT6,
    "propertyNames": DRAFT6,
    "if": DRAFT7,
    "then": DRAFT7,
    "else": DRAFT7,
    "dependentRequired": DRAFT2019,
    "dependentSchemas": DRAFT2019,
    "unevaluatedProperties": DRAFT2019,
    "unevaluatedItems": DRAFT2019,
    "minContains": DRAFT2019,
    "maxContains": DRAFT2019,
    "$anchor": DRAFT2019,
    "prefixItems": DRAFT2020,
    "$dynamicRef": DRAFT2020,
    "$dynamicAnchor": DRAFT2020,
}

# Where subschemas sit, in every draft handled here (after the renames above, the same places as in 2020-12).
_SCHEMA_KW = frozenset(
    {"additionalProperties", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames"}
    | {"unevaluatedItems", "unevaluatedProperties", "contentSchema"}
)
_SCHEMA_MAP_KW = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_LIST_KW = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})


def detect_draft(schema) -> str:
    """The draft a schema declares in its root ``$schema`` (draft 2020-12 when it declares none)."""
    if not isinstance(schema, dict) or "$schema" not in schema:
        return DRAFT2020
    uri = schema["$schema"]
    draft = DRAFT_URIS.get(uri.rstrip("#")) if isinstance(uri, str) else None
    if draft is None:
        raise UnsupportedSchemaError(
            "$schema",
            "#",
            f"unknown draft {uri!r}; supported: drafts 4, 6, 7, 2019-09 and 2020-12 ({', '.join(DRAFT_URIS)})",
        )
    return draft


def to_2020_12(schema, draft: str | None = None):
    """``schema`` (of ``draft``, default: the one it declares) as the equivalent draft 2020-12 schema (a new object;
    the argument is not changed). A 2020-12 schema comes back unchanged."""
    return upgrade(schema, draft)[0]


def upgrade(schema, draft: str | None = None) -> tuple[object, dict[str, str]]:
    """:func:`to_2020_12`, and the renamed locations: JSON Pointer of a keyword in the upgraded schema -> its pointer
    in the original (``#/prefixItems`` -> ``#/items``), for :func:`original_location`."""
    draft = draft or detect_draft(schema)
    if draft not in DRAFTS:
        raise ValueError(f"draft must be one of {DRAFTS}, got {draft!r}")
    if draft == DRAFT2020:
        return schema, {}
    recursive_anchor = draft == DRAFT2019 and _has_recursive_anchor(schema)
    upgrader = _Upgrader(draft, recursive_anchor)
    upgraded = upgrader.schema(schema, schema, "#")
    if isinstance(upgraded, dict):
        upgraded["$schema"] = DRAFT_2020_12_URI
    return upgraded, upgrader.renamed


def original_location(keyword: str, path: str, renamed: dict[str, str]) -> tuple[str, str]:
    """(keyword, JSON Pointer of the schema holding it) in the upgraded schema -> the same in the original one, so an
    error names what the user wrote (``dependencies`` at ``#/items/0``, not ``dependentSchemas`` at
    ``#/prefixItems/0``)."""

    keys = sorted(renamed, key=len, reverse=True)

    def back(pointer: str) -> str:
        # Renames nest (items inside items): undo the deepest first, then the ones above it, until none applies.
        for _ in range(pointer.count("/") + 1):
            for new in keys:
                if pointer == new or pointer.startswith(new + "/"):
                    pointer = renamed[new] + pointer[len(new) :]
                    break
            else:
                break
        return pointer

    head, _, tail = back(f"{path}/{_escape(keyword)}").rpartition("/")
    return _unescape(tail), head


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _older(draft: str, than: str) -> bool:
    return DRAFTS.index(draft) < DRAFTS.index(than)


def _has_recursive_anchor(node) -> bool:
    if isinstance(node, dict):
        return node.get("$recursiveAnchor") is True or any(_has_recursive_anchor(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_recursive_anchor(v) for v in node)
    return False


class _Upgrader:
    def __init__(self, draft: str, recursive_anchor: bool) -> None:
        self.draft = draft
        self.recursive_anchor = recursive_anchor
        self.id_key = "id" if draft == DRAFT4 else "$id"
        self.renamed: dict[str, str] = {}  # upgraded pointer -> original pointer, for each renamed keyword

    def schema(self, node, resource, path: str, old_path: str | None = None):
        """One subschema at ``path`` (upgraded) / ``old_path`` (original, default the same); ``resource``: the
        original node of the schema resource it belongs to (for ``#/`` refs)."""
        if old_path is not None and old_path != path:
            self.renamed[path] = old_path  # what lies below follows by prefix (original_location)
        if not isinstance(node, dict):
            return copy.deepcopy(node)  # booleans (and malformed values, which the compiler reports)
        if "$ref" in node and _older(self.draft, DRAFT2019):
            # Drafts 4-7: "All other properties in a "$ref" object MUST be ignored" (definitions stay reachable).
            return {k: self._keyword(k, v, resource, path) for k, v in node.items() if k in ("$ref", "definitions")}
        if isinstance(node.get(self.id_key), str) and not node[self.id_key].startswith("#"):
            resource = node  # an embedded resource: "#/..." inside it points from here
        out: dict = {}
        for key, value in node.items():
            if key in _INTRODUCED and _older(self.draft, _INTRODUCED[key]):
                continue  # not a keyword of this draft: an annotation there, so not enforced here
            if key == "dependencies" and self.draft == DRAFT2019:
                continue  # split into dependentRequired / dependentSchemas in 2019-09: an annotation there
            if key == "$schema" and path != "#" and DRAFT_URIS.get(str(value).rstrip("#")) == self.draft:
                continue  # an embedded resource restating the document's draft: rewritten with it
            if key == "$recursiveRef" and not self.recursive_anchor:
                continue  # below: a plain $ref, beside any $ref already here
            out.update(self._keyword_items(key, value, node, resource, path))
        if "$recursiveRef" in node and not self.recursive_anchor:
            # Without a $recursiveAnchor it is a plain reference; 2019-09 applies it *and* a sibling $ref.
            self._rename(path, "$ref", "$recursiveRef")
            if "$ref" in out:
                out["allOf"] = [*out.get("allOf", []), {"$ref": node["$recursiveRef"]}]
            else:
                out["$ref"] = node["$recursiveRef"]
        return out

    def _rename(self, path: str, new: str, old: str) -> str:
        self.renamed[f"{path}/{_escape(new)}"] = f"{path}/{_escape(old)}"
        return f"{path}/{_escape(new)}"

    def _keyword_items(self, key: str, value, node: dict, resource, path: str) -> dict:
        """The 2020-12 keyword(s) for one keyword of ``node`` (at ``path``)."""
        if key == self.id_key and isinstance(value, str):
            base, _, fragment = value.partition("#")
            out = {}
            if base:
                out["$id"] = base
            if fragment:
                out["$anchor"] = fragment
            return out
        if key == "id" or key == "$id":
            return {}  # the other draft's spelling: not an identifier here
        if key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            return {key: node[bound]} if value and bound in node else {}
        if key in ("minimum", "maximum") and node.get("exclusive" + key[0].upper() + key[1:]) is True:
            return {}  # became the exclusive bound above
        if key == "items" and isinstance(value, list):
            at = self._rename(path, "prefixItems", "items")
            return {
                "prefixItems": [self.schema(s, resource, f"{at}/{i}", f"{path}/items/{i}") for i, s in enumerate(value)]
            }
        if key == "additionalItems":
            if not isinstance(node.get("items"), list):
                return {}
            at = self._rename(path, "items", "additionalItems")
            return {"items": self.schema(value, resource, at, f"{path}/additionalItems")}
        if key == "dependencies" and isinstance(value, dict):
            out = {}
            required = {k: list(v) for k, v in value.items() if isinstance(v, list)}
            if required:
                self._rename(path, "dependentRequired", "dependencies")
                out["dependentRequired"] = required
            schemas = {k: v for k, v in value.items() if not isinstance(v, list)}
            if schemas:
                at = self._rename(path, "dependentSchemas", "dependencies")
                out["dependentSchemas"] = {
                    k: self.schema(v, resource, f"{at}/{_escape(k)}", f"{path}/dependencies/{_escape(k)}")
                    for k, v in schemas.items()
                }
            return out
        if key == "$recursiveAnchor":
            return {} if not self.recursive_anchor else {key: value}
        return {key: self._keyword(key, value, resource, path)}

    def _keyword(self, key: str, value, resource, path: str):
        at = f"{path}/{_escape(key)}"
        if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
            return "#" + _rewrite_pointer(resource, value[1:], self.draft)
        if key in _SCHEMA_KW or key == "items":
            return self.schema(value, resource, at)
        if key in _SCHEMA_MAP_KW and isinstance(value, dict):
            return {k: self.schema(v, resource, f"{at}/{_escape(k)}") for k, v in value.items()}
        if key in _SCHEMA_LIST_KW and isinstance(value, list):
            return [self.schema(v, resource, f"{at}/{i}") for i, v in enumerate(value)]
        return copy.deepcopy(value)  # enum, const, required, bounds, annotations: data, not schemas


def _rewrite_pointer(root, pointer: str, draft: str) -> str:
    """A JSON Pointer into the original resource ``root`` -> the same location in the upgraded resource (URI
    fragment encoding kept: percent-encoded, ``~0`` / ``~1`` escapes)."""
    if not pointer:
        return pointer
    segments = [unquote(s).replace("~1", "/").replace("~0", "~") for s in pointer.split("/")[1:]]
    out: list[str] = []
    node, kind = root, "schema"
    for i, seg in enumerate(segments):
        new = seg
        child = node.get(seg) if isinstance(node, dict) else None
        if isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
            child = node[int(seg)]
        next_kind = "data"
        if kind == "schema" and isinstance(node, dict):
            if seg == "items" and isinstance(child, list):
                new, next_kind = "prefixItems", "list"
            elif seg == "items" or seg in _SCHEMA_KW:
                next_kind = "schema"
                if seg == "additionalItems" and isinstance(node.get("items"), list):
                    new = "items"
            elif seg == "dependencies" and _older(draft, DRAFT2019):
                following = segments[i + 1] if i + 1 < len(segments) else None
                target = child.get(following) if isinstance(child, dict) and following is not None else None
                new = "dependentRequired" if isinstance(target, list) else "dependentSchemas"
                next_kind = "map"
            elif seg in _SCHEMA_MAP_KW:
                next_kind = "map"
            elif seg in _SCHEMA_LIST_KW:
                next_kind = "list"
        elif kind in ("map", "list"):
            next_kind = "schema"
        out.append(quote(new.replace("~", "~0").replace("/", "~1"), safe="~!$&'()*+,;=:@"))
        node, kind = child, next_kind
    return "/" + "/".join(out)
