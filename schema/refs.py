"""Schema documents: base URIs (``$id``), anchors and ``$ref`` resolution.

References resolve within the compiled document (JSON Pointers, ``$anchor`` and embedded ``$id`` resources,
including URNs) and into the other documents the caller hands over, by URI (``resources``: what a schema store or
``referencing.Registry`` holds; nothing is ever fetched). Anything else (an unknown URI, the meta-schema) raises
:class:`~.errors.UnsupportedSchemaError` for ``$ref``. URI reference resolution follows RFC 3986 section 5.2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote

from .errors import SchemaError, UnsupportedSchemaError

_URI_RE = re.compile(r"^(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$", re.S)

# keywords whose value is a subschema / a map of subschemas / a list of subschemas (draft 2020-12)
SCHEMA_KW = (
    "additionalProperties",
    "items",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
SCHEMA_MAP_KW = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_LIST_KW = ("allOf", "anyOf", "oneOf", "prefixItems")
DEFAULT_BASE = "urn:omnifuse:schema"


def _split(uri: str):
    m = _URI_RE.match(uri)
    scheme, auth, path, query, frag = m.groups()
    return scheme, auth, path, query, frag


def _remove_dots(path: str) -> str:
    out: list[str] = []
    inp = path
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./") or inp.startswith("/./"):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = inp[3:]
            if out:
                out.pop()
        elif inp == "/..":
            inp = "/"
            if out:
                out.pop()
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            j = inp.find("/", start)
            j = len(inp) if j < 0 else j
            out.append(inp[:j])
            inp = inp[j:]
    return "".join(out)


def _join(scheme, auth, path, query, frag) -> str:
    s = ""
    if scheme is not None:
        s += scheme + ":"
    if auth is not None:
        s += "//" + auth
    s += path
    if query is not None:
        s += "?" + query
    if frag is not None:
        s += "#" + frag
    return s


def resolve_uri(base: str, ref: str) -> str:
    """RFC 3986 reference resolution (works for non-hierarchical schemes such as ``urn:`` too)."""
    rs, ra, rp, rq, rf = _split(ref)
    bs, ba, bp, bq, _ = _split(base)
    if rs is not None:
        return _join(rs, ra, _remove_dots(rp), rq, rf)
    if ra is not None:
        return _join(bs, ra, _remove_dots(rp), rq, rf)
    if rp == "":
        return _join(bs, ba, bp, rq if rq is not None else bq, rf)
    if rp.startswith("/"):
        path = _remove_dots(rp)
    else:
        if ba is not None and bp == "":
            merged = "/" + rp
        else:
            k = bp.rfind("/")
            merged = (bp[: k + 1] if k >= 0 else "") + rp
        path = _remove_dots(merged)
    return _join(bs, ba, path, rq, rf)


def split_fragment(uri: str) -> tuple[str, str]:
    if "#" in uri:
        a, b = uri.split("#", 1)
        return a, b
    return uri, ""


def pointer_escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class Raw:
    """One schema object of the document together with its base URI and JSON Pointer path (for errors)."""

    __slots__ = ("schema", "base", "path", "facts", "__weakref__")

    def __init__(self, schema, base: str, path: str) -> None:
        self.schema = schema
        self.base = base
        self.path = path
        self.facts = None  # the compiler's summary of it for quick contradiction tests, made on first use

    def __repr__(self) -> str:
        return f"Raw({self.path})"


class Document:
    """Index of one schema document: every subschema location, its base URI, resources and anchors."""

    def __init__(
        self, root, documents: Mapping | None = None, prepare: Callable | None = None, draft: str | None = None
    ) -> None:
        """``documents``: other schema documents by absolute URI (fragment-free keys) that ``$ref`` may reach. One is
        read (through ``prepare(document, draft of the referring document) -> (document, its draft)``, e.g. an older
        draft's rewrite) and indexed like the root (its own ``$id``, anchors and embedded resources) the first time a
        reference points into it; errors inside it name it (``http://example.com/tree.json#/properties/...``).
        ``draft``: the root's."""
        self.root = root
        self.raws: dict[int, Raw] = {}
        self.resources: dict[str, Raw] = {}
        self.anchors: dict[tuple[str, str], Raw] = {}
        self._keep: list = []  # keep walked objects alive so their id() stays unique
        self._bools: dict[tuple, Raw] = {}
        self._pending: dict = {}
        self._prepare = prepare
        self._draft = draft  # of the document being walked
        self._draft_of_base: dict[str, str | None] = {}  # base URI -> draft of the document it lies in
        for uri in documents or {}:
            base, fragment = split_fragment(uri)
            if fragment or _split(base)[0] is None:
                raise SchemaError(f"a resource needs an absolute URI without a fragment, got {uri!r}", "#")
            self._pending[base] = documents[uri]
        root_base = DEFAULT_BASE
        self.root_raw = self._walk(root, root_base, "#")
        self.resources.setdefault(root_base, self.root_raw)

    def _load(self, uri: str, raw: Raw) -> Raw | None:
        """The resource at ``uri``: indexed already, or read now from the documents handed over (None: neither)."""
        if uri in self.resources or uri not in self._pending:
            return self.resources.get(uri)
        document = self._pending.pop(uri)
        draft = self._draft
        if self._prepare is not None:
            try:
                document, draft = self._prepare(document, self._draft_of_base.get(raw.base, self._draft))
            except UnsupportedSchemaError as e:  # an unknown draft, typically
                what = f"{e.keyword!r}" + (f": {e.detail}" if e.detail else "")
                raise UnsupportedSchemaError("$ref", raw.path, f"resource {uri!r} has unsupported {what}") from e
        own = document.get("$id") if isinstance(document, dict) else None
        if isinstance(own, str) and split_fragment(resolve_uri(uri, own))[0] != uri and _leaves_document(document):
            # jsonschema resolves the document's relative references against the URI it is registered under, the
            # specification against its $id: fail closed rather than judge differently
            raise UnsupportedSchemaError(
                "$ref", raw.path, f"resource {uri!r} declares another $id, {own!r}, and refers to relative URIs"
            )
        outer, self._draft = self._draft, draft
        try:
            self.resources.setdefault(uri, self._walk(document, uri, f"{uri}#"))
        finally:
            self._draft = outer
        return self.resources[uri]

    def _walk(self, obj, base: str, path: str) -> Raw:
        if isinstance(obj, bool):
            key = (obj, base, path)
            raw = self._bools.get(key)
            if raw is None:
                raw = self._bools[key] = Raw(obj, base, path)
            return raw
        if not isinstance(obj, dict):
            raise SchemaError(f"a schema must be an object or a boolean, got {type(obj).__name__}", path)
        if id(obj) in self.raws:
            return self.raws[id(obj)]
        sid = obj.get("$id")
        if isinstance(sid, str):
            base = split_fragment(resolve_uri(base, sid))[0]
        raw = Raw(obj, base, path)
        self.raws[id(obj)] = raw
        self._draft_of_base.setdefault(base, self._draft)
        self._keep.append(obj)
        if isinstance(sid, str):
            self.resources.setdefault(base, raw)
        for key in ("$anchor", "$dynamicAnchor"):
            name = obj.get(key)
            if isinstance(name, str):
                self.anchors.setdefault((base, name), raw)
        for kw, v in obj.items():
            if not isinstance(kw, str):  # internal keywords of synthetic schemas (see negation.py)
                continue
            sub = f"{path}/{pointer_escape(kw)}"
            if kw in SCHEMA_KW and isinstance(v, (dict, bool)):
                self._walk(v, base, sub)
            elif kw in SCHEMA_MAP_KW and isinstance(v, dict):
                for k, s in v.items():
                    if isinstance(s, (dict, bool)):
                        self._walk(s, base, f"{sub}/{pointer_escape(k)}")
            elif kw in SCHEMA_LIST_KW and isinstance(v, list):
                for i, s in enumerate(v):
                    if isinstance(s, (dict, bool)):
                        self._walk(s, base, f"{sub}/{i}")
        return raw

    def raw_for(self, obj, base: str, path: str) -> Raw:
        """The Raw for a subschema object (booleans get a fresh Raw per location)."""
        if isinstance(obj, dict) and id(obj) in self.raws:
            return self.raws[id(obj)]
        return self._walk(obj, base, path)

    def resolve(self, ref: str, raw: Raw) -> Raw:
        """Resolve ``$ref`` found in ``raw``; fail closed for anything outside this document."""
        uri = resolve_uri(raw.base, ref)
        doc, frag = split_fragment(uri)
        res = self._load(doc, raw)
        if res is None:
            raise UnsupportedSchemaError("$ref", raw.path, f"reference {ref!r} is outside the schema and its resources")
        if frag == "":
            return res
        if frag.startswith("/"):
            obj = res.schema
            base = res.base
            path = res.path
            for tok in frag[1:].split("/"):
                tok = unquote(tok).replace("~1", "/").replace("~0", "~")
                if isinstance(obj, dict) and tok in obj:
                    obj = obj[tok]
                elif isinstance(obj, list) and tok.isdigit() and int(tok) < len(obj):
                    obj = obj[int(tok)]
                else:
                    raise SchemaError(f"unresolvable $ref {ref!r}", raw.path)
                path = f"{path}/{pointer_escape(tok)}"
                if isinstance(obj, dict) and id(obj) in self.raws:
                    base = self.raws[id(obj)].base
            if not isinstance(obj, (dict, bool)):
                raise SchemaError(f"$ref {ref!r} does not point to a schema", raw.path)
            return self.raw_for(obj, base, path)
        target = self.anchors.get((doc, frag))
        if target is None:
            raise SchemaError(f"unresolvable $ref {ref!r} (no such anchor)", raw.path)
        return target


def _leaves_document(node) -> bool:
    """Whether some ``$ref`` in ``node`` is a relative URI other than a fragment (``other.json``, ``../x#/a``)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#") and _split(ref)[0] is None:
            return True
        return any(_leaves_document(v) for v in node.values())
    if isinstance(node, list):
        return any(_leaves_document(v) for v in node)
    return False
