"""JSON Schema (draft 2020-12) -> a graph of merged constraint nodes that the recogniser runs on.

Pipeline:

1. :class:`~.refs.Document` indexes the schema: subschema locations, base URIs (``$id``), anchors.
2. Each set of schemas that must *all* hold (a conjunction) is expanded to disjunctive normal form: ``$ref``
   and ``allOf`` add conjuncts, ``anyOf`` multiplies alternatives; ``not`` and ``if``/``then``/``else`` use
   complements (:mod:`.negation`); ``oneOf`` is ``anyOf`` when its branches are provably disjoint
   (:mod:`.disjoint`), alone or each conjoined with the schema parts beside the ``oneOf`` (its ``allOf``
   siblings), else "branch i and not the others". A cycle of references that consumes no input is
   rejected, and so is a schema whose normal form exceeds ``MAX_ALTERNATIVES``.
3. Every alternative (a *flat* conjunction, no applicators left) is merged by intersection into a
   :class:`Simple` node: allowed JSON types, a :class:`~.numbers.NumSpec`, a
   :class:`~.automaton.StringAutomaton`, an :class:`ArrSpec` and an :class:`ObjSpec` whose children are again
   conjunctions (:class:`Alt`, built lazily so recursive schemas give a finite cyclic graph).
   ``enum``/``const`` restrict each type; array/object constants become structural branches.
4. A fixpoint computes each node's shortest instance (in UTF-8 bytes); nodes without a finite instance are
   unsatisfiable and are never entered.

Fail closed: any keyword that constrains instances and is not implemented raises
:class:`~.errors.UnsupportedSchemaError` (keyword + JSON Pointer). Annotations (``title``, ``default``,
``contentMediaType``, ...) and unknown keywords (which the spec treats as annotations) are ignored.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import NamedTuple

from .automaton import (
    StringAutomaton,
    build_dfa,
    complement_dfa,
    dfa_accepts,
    dfa_to_nfa,
    literal_set_dfa,
    union_automata,
)
from .charset import EMPTY, CharSet, json_char_cost
from .errors import SchemaError, UnsupportedSchemaError
from .formats import format_pattern
from .negation import (
    INTERNAL,
    K_EXTRA_NAME,
    K_KINDS,
    K_NOT_FORMAT,
    K_NOT_PATTERN,
    K_NOT_VALUES,
    K_REPEAT,
    negate_keywords,
)
from .numbers import NumSpec
from .refs import Document, Raw, pointer_escape
from .regex import build_nfa, literal_set_nfa, pattern_readings

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
NULL, BOOL, INT, FRAC, STR, ARR, OBJ = "null", "boolean", "int", "frac", "string", "array", "object"
ALL_KINDS = frozenset((NULL, BOOL, INT, FRAC, STR, ARR, OBJ))
TYPE_KINDS = {
    "null": frozenset((NULL,)),
    "boolean": frozenset((BOOL,)),
    "integer": frozenset((INT,)),
    "number": frozenset((INT, FRAC)),
    "string": frozenset((STR,)),
    "array": frozenset((ARR,)),
    "object": frozenset((OBJ,)),
}
ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$comment",
        "$defs",
        "definitions",
        "$vocabulary",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
    }
)
HANDLED = frozenset(
    {
        "contains",
        "minContains",
        "maxContains",
        "multipleOf",
        "uniqueItems",
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minProperties",
        "maxProperties",
        "pattern",
        "format",
        "not",
        "anyOf",
        "allOf",
        "oneOf",
        "$ref",
        "dependentRequired",
        "if",
        "then",
        "else",
    }
)
APPLICATORS = ("$ref", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas")
ALWAYS_UNSUPPORTED = frozenset(
    {
        "$dynamicRef",
        "$recursiveRef",
        # keywords of other drafts that would constrain there: refuse rather than ignore
        "dependencies",
        "additionalItems",
        "divisibleBy",
        "disallow",
        "extends",
    }
)
MAX_ALTERNATIVES = 512
MAX_EVALUATING_BRANCHES = 6  # anyOf under unevaluated*: 2**6 combinations of branches that evaluate something
UNEVALUATED = ("unevaluatedProperties", "unevaluatedItems")
MAX_NAME_CLASSES_BITS = 6  # up to 2**6 pattern-match classes built for names outside the generation alphabet
MAX_NODES = 20_000
FORMAT_MODES = ("assert", "annotation")


def json_key(v):
    """Hashable key implementing JSON Schema equality (1 == 1.0, true != 1, objects unordered)."""
    if v is None:
        return ("n",)
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("x", Fraction(v))
    if isinstance(v, str):
        return ("s", v)
    if isinstance(v, list):
        return ("l", tuple(json_key(x) for x in v))
    if isinstance(v, dict):
        return ("d", frozenset((k, json_key(x)) for k, x in v.items()))
    raise SchemaError(f"not a JSON value: {v!r}")


def key_cost(name: str) -> int:
    """Bytes of ``name`` written as a JSON string (quotes included, cheapest escapes)."""
    return 2 + sum(json_char_cost(ord(c)) for c in name)


def is_trivially_true(v) -> bool:
    return v is True or (isinstance(v, dict) and all(k in ANNOTATIONS for k in v))


def _nonneg_int(v, kw: str, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (isinstance(v, float) and not v.is_integer()):
        raise SchemaError(f"{kw} must be a non-negative integer", path)
    return int(v)


def _number(v, kw: str, path: str):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise SchemaError(f"{kw} must be a number", path)
    return v


# ---------------------------------------------------------------------------------------------------------
# graph nodes


class Evaluated(NamedTuple):
    """Annotations of one alternative (:meth:`Compiler._evaluated`); None: every name / item is evaluated."""

    properties: tuple[frozenset, frozenset] | None  # (names, patterns)
    items: tuple[int, tuple] | None  # (prefix length, contains Raws)


NOTHING_EVALUATED = Evaluated((frozenset(), frozenset()), (0, ()))


class Alt:
    """A conjunction of schemas, resolved to its alternatives (``simples``); ``min_cost`` None = unsatisfiable."""

    __slots__ = ("key", "simples", "min_cost", "first", "path", "hidden")

    def __init__(self, key: frozenset, path: str) -> None:
        self.key = key
        self.path = path
        self.simples: tuple[Simple, ...] = ()
        # some alternative admits strings only under a wider reading of its patterns (regex.py): empty here, but not
        # provably empty to the disjointness proofs
        self.hidden = False
        self.min_cost: int | None = None
        self.first: CharSet = EMPTY

    def __repr__(self) -> str:
        return f"Alt({self.path}, {len(self.simples)} branches, min={self.min_cost})"


class ArrSpec:
    """Array part of a node: per-position item nodes (``prefix``), the rest (``items``), item-count bounds.

    With ``contains``, every position also has a "matches" and a "does not match" node (the item node and the
    ``contains`` schema or its complement, :meth:`branches`), and the recogniser counts matching items
    (``minContains`` .. ``maxContains``, the count is part of the array's state).
    """

    __slots__ = (
        "prefix", "items", "min_items", "max_items", "unique", "path", "contains", "min_contains", "max_contains",
    )  # fmt: skip

    def __init__(
        self, prefix: tuple[Alt, ...], items: Alt, min_items: int, max_items: int | None, unique: bool = False
    ) -> None:
        self.prefix, self.items, self.min_items, self.max_items = prefix, items, min_items, max_items
        self.unique = unique  # uniqueItems: see unique.py
        self.path = "#"
        self.contains = None  # (yes prefix, yes items, no prefix, no items) when the node has "contains"
        self.min_contains, self.max_contains = 0, None

    def alt_at(self, i: int) -> Alt:
        return self.prefix[i] if i < len(self.prefix) else self.items

    def _yes_no(self, i: int) -> tuple[Alt, Alt]:
        yp, yi, np_, ni = self.contains
        return (yp[i], np_[i]) if i < len(yp) else (yi, ni)

    def count_key(self, count: int) -> int:
        """Matching items that still make a difference (beyond ``minContains`` without a maximum, none do)."""
        return min(count, self.min_contains) if self.max_contains is None else count

    def branches(self, i: int, count: int) -> list[tuple[Alt, int]]:
        """``(item node, matching count after it)`` for the item at position ``i`` (plain arrays: one branch)."""
        if self.contains is None:
            return [(self.alt_at(i), count)]
        yes, no = self._yes_no(i)
        out = [(no, count)]
        if self.max_contains is None or count < self.max_contains:
            out.insert(0, (yes, self.count_key(count + 1)))
        return out

    def closable(self, i: int, count: int) -> bool:
        return i >= self.min_items and count >= self.min_contains

    def can_add(self, i: int, count: int = 0) -> bool:
        if self.max_items is not None and i >= self.max_items:
            return False
        if self.contains is None:
            return self.alt_at(i).min_cost is not None
        return any(
            a.min_cost is not None and self.rest_cost(i + 1, False, c) is not None for a, c in self.branches(i, count)
        )

    def rest_cost(self, i: int, first: bool, count: int = 0) -> int | None:
        """Bytes to close the array when ``i`` items exist (``first``: nothing written since ``[``), ``count`` of
        them matching ``contains``."""
        if self.contains is not None:
            return self._rest_cost_contains(i, first, count)
        total = 1
        n_more = max(0, self.min_items - i)
        if self.max_items is not None and self.min_items > self.max_items:
            return None
        for j in range(i, min(self.min_items, len(self.prefix))):
            c = self.prefix[j].min_cost
            if c is None:
                return None
            total += c
        k = self.min_items - max(i, len(self.prefix))
        if k > 0:
            c = self.items.min_cost
            if c is None:
                return None
            total += k * c
        if n_more:
            total += n_more - (1 if first else 0)
        return total

    def _rest_cost_contains(self, i: int, first: bool, count: int) -> int | None:
        need = max(0, self.min_contains - count)  # matching items still needed
        most = None if self.max_contains is None else self.max_contains - count  # matching items still allowed
        if most is not None and most < 0:
            return None
        k0 = max(self.min_items - i, need, 0)  # items to add at least; prefix positions that cannot match may
        k1 = max(k0, len(self.contains[0]) - i + need)  # make more worth it, at most enough to pass them all
        if self.max_items is not None:
            k1 = min(k1, self.max_items - i)
        total = None
        for k in range(k0, k1 + 1):
            c = self._cost_with(i, k, need, most)
            if c is not None:
                c += k - (1 if first else 0) if k else 0  # commas
                total = c if total is None or c < total else total
        return None if total is None else 1 + total

    def _cost_with(self, i: int, k: int, need: int, most: int | None) -> int | None:
        """Cheapest ``k`` more items with at least ``need`` and at most ``most`` of them matching ``contains``."""
        # prefix positions one by one (best cost per number of matches), the homogeneous tail by arithmetic
        best = {0: 0}
        for j in range(i, min(i + k, len(self.contains[0]))):
            yes, no = self._yes_no(j)
            nxt: dict[int, int] = {}
            for y, c in best.items():
                for alt, dy in ((yes, 1), (no, 0)):
                    if alt.min_cost is not None and (most is None or y + dy <= most):
                        v = c + alt.min_cost
                        if nxt.get(y + dy, v + 1) > v:
                            nxt[y + dy] = v
            best = nxt
        tail = max(0, i + k - max(i, len(self.contains[0])))
        cy, cn = self.contains[1].min_cost, self.contains[3].min_cost
        total = None
        for y, c in best.items():
            lo_t = max(0, need - y)
            hi_t = tail if most is None else min(tail, most - y)
            if cy is None:
                hi_t = min(hi_t, 0)
            if cn is None:
                lo_t = max(lo_t, tail)  # every tail item must match
            if lo_t > hi_t:
                continue
            # cost is linear in the matching tail items: one end of the range is the cheapest
            options = [lo_t, hi_t] if cy is not None and cn is not None else [lo_t]
            for yt in options:
                v = c + (yt * cy if yt else 0) + ((tail - yt) * cn if tail - yt else 0)
                total = v if total is None or v < total else total
        return total


class ObjSpec:
    """Object part of a node: declared properties, required names, ``dependentRequired``, the schema of other
    names (``additional``) and property-count bounds.

    *Special* names are the declared, required and dependency-related ones; every other name is *fresh* and
    behaves like any other fresh name (value ``additional``, no obligations), which keeps costs per seen-set
    cheap to memoise.
    """

    __slots__ = (
        "props", "names", "required", "deps", "additional", "min_props", "max_props", "special", "_special_set",
        "_rest", "_keym", "_missing",
    )  # fmt: skip

    def __init__(
        self, props: dict, required: frozenset, additional: Alt, min_props: int, max_props, deps: dict | None = None
    ) -> None:
        self.props = props
        self.names = tuple(sorted(props))
        self.required = required
        self.deps: dict[str, frozenset] = {k: frozenset(v) for k, v in (deps or {}).items() if v}
        self.additional = additional
        self.min_props = min_props
        self.max_props = max_props
        special = set(props) | set(required) | set(self.deps)
        for v in self.deps.values():
            special |= v
        self.special = tuple(sorted(special))
        self._special_set = frozenset(special)
        self._rest: dict = {}
        self._keym: dict = {}
        self._missing: dict = {}

    # ExistsObjSpec only: the plain node an object goes on as once some undeclared name's value has failed the schema
    hit = None

    def value_alt(self, name: str) -> Alt:
        return self.props.get(name, self.additional)

    def value_tail(self, seen: frozenset, name: str) -> int | None:
        """``name``'s cheapest value and the cheapest close of the object after it (no colon)."""
        v = self.value_alt(name).min_cost
        if v is None:
            return None
        r = self.rest_cost(seen | {name}, False)
        return None if r is None else v + r

    def entry_cost(self, name: str) -> int | None:
        """``"name":value`` at its cheapest (no comma)."""
        c = self.value_alt(name).min_cost
        return None if c is None else key_cost(name) + 1 + c

    def missing(self, seen: frozenset) -> frozenset:
        """Names still required once ``seen`` are written (``required`` plus dependencies, transitively)."""
        key = seen & self._special_set
        r = self._missing.get(key)
        if r is None:
            need = set(self.required)
            todo = [n for n in key | self.required if n in self.deps]  # required names bring their deps too
            while todo:
                for d in self.deps[todo.pop()]:
                    if d not in need:
                        need.add(d)
                        if d in self.deps:
                            todo.append(d)
            r = self._missing[key] = frozenset(need) - seen
        return r

    def is_fresh(self, name: str, seen: frozenset) -> bool:
        return name not in seen and name not in self._special_set

    def closable(self, seen: frozenset) -> bool:
        return not self.missing(seen) and len(seen) >= self.min_props

    def admissible(self, seen: frozenset, name: str) -> bool:
        """Whether writing ``name`` next keeps the object completable."""
        if name in seen or self.value_alt(name).min_cost is None:
            return False
        return self.rest_cost(seen | {name}, False) is not None

    def rest_cost(self, seen: frozenset, first: bool, memo: bool = True) -> int | None:
        """Bytes to close the object once the names ``seen`` are written (``first``: nothing since ``{``)."""
        # the cost depends on the written names only through the special ones among them, their number, and
        # how many of the cheapest fresh names (see fresh_names) they already took
        special = self._special_set
        short = [0, 0, 0]
        for n in seen:
            if len(n) <= 2 and n not in special and all(ch in _FRESH_SET for ch in n):
                short[len(n)] += 1
        key = (seen & special, len(seen), *short, first)
        if memo and key in self._rest:
            return self._rest[key]
        r = self._rest_cost(seen, first, memo)
        if memo:
            self._rest[key] = r
        return r

    def fresh_options(self, seen: frozenset, k: int, memo: bool = True) -> list[int]:
        """Entry costs (quoted name, colon, cheapest value) of the ``k`` cheapest undeclared names not in ``seen``."""
        add = self.additional.min_cost
        if add is None:
            return []
        return [key_cost(name) + 1 + add for name in fresh_names(self._special_set | seen, k)]

    def _rest_cost(self, seen: frozenset, first: bool, memo: bool = True) -> int | None:
        missing = self.missing(seen)
        total = 1
        for name in missing:
            c = self.entry_cost(name)
            if c is None:
                return None
            total += c
        entries = len(missing)
        count = len(seen) + entries
        if self.max_props is not None and count > self.max_props:
            return None
        extra = self.min_props - count
        if extra > 0:
            if self.max_props is not None and count + extra > self.max_props:
                return None
            options = []
            for name in self.special:  # optional special names without dependencies of their own
                if name not in seen and name not in missing and name not in self.deps:
                    c = self.entry_cost(name)
                    if c is not None:
                        options.append(c)
            options.extend(self.fresh_options(seen, extra, memo))
            if len(options) < extra:
                return None
            options.sort()
            total += sum(options[:extra])
            entries += extra
        if entries:
            total += entries - (1 if first else 0)
        return total


class ExistsObjSpec(ObjSpec):
    """An object that must hold some undeclared name whose value fails a schema ``S``: the complement of an
    ``additionalProperties: S`` where the object's names are open (:data:`~.negation.K_EXTRA_NAME`, expanded by
    ``Compiler._merge_extra_name``).

    Existential over names, so it is state, like ``contains`` on an array: a *fresh* name's value runs two ways at
    once, ``yes`` (the other names' schema and ``not S``: the object has its name, and goes on as the plain node
    ``hit``) and ``no`` (the other names' schema and ``S``: still waiting). A value meets exactly one of the two, so
    the recogniser's runs stay exact. The complement's own declared names are special here (their value is the other
    names' schema, as before), so they never count as fresh.
    """

    __slots__ = ("hit", "yes", "no")

    def __init__(self, plain: ObjSpec, hit: Simple, yes: Alt, no: Alt) -> None:
        super().__init__(plain.props, plain.required, plain.additional, plain.min_props, plain.max_props, plain.deps)
        self.hit, self.yes, self.no = hit, yes, no

    def closable(self, seen: frozenset) -> bool:
        return False

    def admissible(self, seen: frozenset, name: str) -> bool:
        return name not in seen and self.value_tail(seen, name) is not None

    def value_tail(self, seen: frozenset, name: str) -> int | None:
        if not self.is_fresh(name, seen):
            return super().value_tail(seen, name)
        best = None
        for alt, spec in ((self.yes, self.hit.obj), (self.no, self)):
            v = alt.min_cost
            r = None if v is None else spec.rest_cost(seen | {name}, False)
            if r is not None and (best is None or v + r < best):
                best = v + r
        return best

    def _rest_cost(self, seen: frozenset, first: bool, memo: bool = True) -> int | None:
        # the failing entry is due: write it now under the cheapest fresh name (the order of entries does not change
        # the total), then close as the plain object would
        v = self.yes.min_cost
        if v is None:
            return None
        (name,) = fresh_names(self._special_set | seen, 1)
        r = self.hit.obj.rest_cost(seen | {name}, False, memo)
        return None if r is None else (0 if first else 1) + key_cost(name) + 1 + v + r


_FRESH_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
_FRESH_SET = frozenset(_FRESH_ALPHABET)


def fresh_names(used: frozenset, k: int) -> list[str]:
    """The ``k`` cheapest property names not in ``used`` (``""``, then one character, then two, ...)."""
    out: list[str] = []
    if k <= 0:
        return out
    if "" not in used:
        out.append("")
    length = 1
    while len(out) < k:
        for name in _names_of_length(length):
            if name not in used:
                out.append(name)
                if len(out) == k:
                    break
        length += 1
    return out


def _names_of_length(n: int):
    if n == 1:
        yield from _FRESH_ALPHABET
        return
    for head in _FRESH_ALPHABET:
        for tail in _names_of_length(n - 1):
            yield head + tail


class Simple:
    """One alternative: the intersection of a flat conjunction of schemas, split by JSON type."""

    __slots__ = (
        "id",
        "path",
        "null",
        "bools",
        "num",
        "str",
        "str_widest",
        "arr",
        "obj",
        "min_cost",
        "kind_cost",
        "first",
        "value_key",
    )

    def __init__(self, path: str) -> None:
        self.id = 0
        self.path = path
        self.null = False
        self.bools: frozenset = frozenset()
        self.num: NumSpec | None = None
        self.str: StringAutomaton | None = None
        self.str_widest: tuple | None = None  # what Compiler.widest_strings needs, where patterns read differently
        self.arr: ArrSpec | None = None
        self.obj: ObjSpec | None = None
        self.min_cost: int | None = None
        self.kind_cost: dict[str, int] = {}
        self.first: CharSet = EMPTY
        # an array / object node of one value (an enum member, a const): that value's unique.compound_key, so that
        # a uniqueItems array can drop the node once the value is written instead of steering around it
        self.value_key: tuple | None = None

    def __repr__(self) -> str:
        return f"Simple#{self.id}({self.path}, min={self.min_cost})"


# ---------------------------------------------------------------------------------------------------------


class Compiler:
    """Builds the node graph for one schema document (see the module docstring)."""

    def __init__(self, schema, formats: str = "assert", resources=None, prepare=None, draft=None) -> None:
        if formats not in FORMAT_MODES:
            raise ValueError(f"formats must be one of {FORMAT_MODES}")
        self.formats = formats
        self.doc = Document(schema, resources, prepare, draft)  # resources: other documents by URI (refs.Document)
        self.alts: dict[frozenset, Alt] = {}
        self.simples: list[Simple] = []
        self._merge_memo: dict[frozenset, tuple[Simple, ...]] = {}
        self._expand_memo: dict[tuple[int, bool], list[frozenset]] = {}
        self._expanding: set[tuple[int, bool]] = set()
        self._unannotated: set[int] = set()  # ids of synthetic Raws (no annotations)
        self._disjoint_memo: dict[tuple, bool] = {}  # oneOf branches (their DNFs) -> proved pairwise disjoint
        self._documents = (schema, *(resources or {}).values())
        self._uneval_raws: dict = {}
        self._automata: dict[tuple, tuple[list, StringAutomaton | None]] = {}
        self._alone: dict[int, tuple] = {}  # id(NFA) -> (NFA, its DFA; None: empty; False: too large alone)
        self._hidden: set[frozenset] = set()  # flats whose strings only a wider pattern reading admits
        self._matched: dict[tuple, tuple[str, ...]] = {}  # (strings, NFA ids) -> those strings every NFA accepts
        self._literal_nfas: dict[tuple[str, ...], object] = {}  # one NFA per finite set: the caches above key on ids
        self._derived: dict[tuple[int, str], Raw] = {}
        self._synth: dict = {}
        self._queue: list[Alt] = []
        self._resolved: set[frozenset] = set()
        self._negate_memo: dict[int, tuple[Raw, list[frozenset]]] = {}
        self._negating: set[int] = set()
        self._keep: list = []

    # public ---------------------------------------------------------------------------------------------
    def resolved(self, alt: Alt) -> Alt:
        """``alt`` with its alternatives resolved now (used by the disjointness prover during expansion)."""
        if alt.key not in self._resolved:
            self._resolved.add(alt.key)
            try:
                self._resolve(alt)
            except UnsupportedSchemaError:
                self._resolved.discard(alt.key)  # not resolved: a later attempt must not see it as unsatisfiable
                raise
        return alt

    def compile(self) -> Alt:
        root = self.alt(frozenset([self.doc.root_raw]), "#")
        while self._queue:
            self.resolved(self._queue.pop())
        self._fixpoint()
        for s in self.simples:
            if s.arr is not None and s.arr.unique and s.min_cost is not None:
                _check_unique(s.arr)
        return root

    # conjunctions -> alternatives -----------------------------------------------------------------------
    def alt(self, conj: frozenset, path: str) -> Alt:
        a = self.alts.get(conj)
        if a is None:
            if len(self.alts) >= MAX_NODES:
                raise SchemaError("schema too large (too many distinct subschema combinations)", path)
            a = self.alts[conj] = Alt(conj, path)
            self._queue.append(a)
        return a

    def _resolve(self, alt: Alt) -> None:
        seen: dict[int, Simple] = {}
        for flat in self.dnf(alt.key):
            for s in self.merge(flat):
                seen.setdefault(id(s), s)
            alt.hidden = alt.hidden or flat in self._hidden
        alt.simples = tuple(seen.values())

    def dnf(self, conj: frozenset) -> list[frozenset]:
        out = [frozenset()]
        for raw in conj:
            out = self._cross(out, self.expand(raw), raw.path, "allOf")
        return out

    def _cross(self, a: list[frozenset], b: list[frozenset], path: str, keyword: str) -> list[frozenset]:
        """Conjunction of two disjunctive normal forms (capped: too many alternatives fail closed).

        Alternatives that are plainly contradictory (no JSON type left, or a name both required and forbidden) are
        dropped as they form: an overlapping ``oneOf`` multiplies out mostly such combinations.
        """
        res = [f for f in dict.fromkeys(x | y for x in a for y in b) if not _contradictory(f)]
        if len(res) > MAX_ALTERNATIVES:
            raise _TooManyAlternatives(keyword, path, f"expands to more than {MAX_ALTERNATIVES} alternatives")
        return res

    def expand(self, raw: Raw, exact: bool = False) -> list[frozenset]:
        """Disjunctive normal form of one schema: a list of flat conjunctions (sets of applicator-free Raws).

        ``exact``: inside the scope of ``unevaluatedProperties`` / ``unevaluatedItems``, where an alternative must
        also say what its instance has *evaluated* (annotations, :meth:`_evaluated`): ``anyOf`` then also yields
        the conjunctions of its branches that evaluate something (an instance may meet several, and every branch
        it meets evaluates). The other applicators are exact as they stand: ``oneOf`` lets one branch hold, ``not``
        and a failed ``if`` contribute no annotations (their raws are synthetic), ``$ref`` and ``allOf`` are
        conjunctions.
        """
        key = (id(raw), exact)
        if key in self._expand_memo:
            return self._expand_memo[key]
        if key in self._expanding:
            raise UnsupportedSchemaError("$ref", raw.path, "reference cycle that consumes no input")
        self._expanding.add(key)
        try:
            res = self._expand(raw, exact)
        finally:
            self._expanding.discard(key)
        if id(raw) in self._unannotated:
            # a synthetic schema's in-place parts are synthetic too (the anyOf of a structural "not const", ...):
            # none of them evaluates anything
            self._unannotated.update(id(r) for flat in res for r in flat)
        self._expand_memo[key] = res
        return res

    def _expand(self, raw: Raw, exact: bool) -> list[frozenset]:
        s = raw.schema
        if s is True:
            return [frozenset()]
        if s is False:
            return []
        if not isinstance(s, dict):
            raise SchemaError("a schema must be an object or a boolean", raw.path)
        if any(k in s and not is_trivially_true(s[k]) for k in UNEVALUATED) or (
            exact and any(k in s for k in UNEVALUATED)
        ):
            return self._unevaluated(raw)
        flat = self._derive(raw, "applicators", APPLICATORS + UNEVALUATED) if any(k in s for k in APPLICATORS) else raw
        res = [frozenset([flat])]
        path = raw.path
        if "$ref" in s:
            ref = s["$ref"]
            if not isinstance(ref, str):
                raise SchemaError("$ref must be a string", path)
            res = self._cross(res, self.expand(self.doc.resolve(ref, raw), exact), path, "$ref")
        for kw in ("allOf", "anyOf", "oneOf"):
            if kw not in s:
                continue
            subs = s[kw]
            if not isinstance(subs, list) or not subs:
                raise SchemaError(f"{kw} must be a non-empty array", path)
            values = _enum_union(subs, overlap=kw == "anyOf") if kw != "allOf" else None
            if values is not None:  # anyOf of enums = one enum (Azure Pipelines: 518 task names, each its own branch)
                union = self._synthetic({"enum": values}, self.doc.raw_for(subs[0], raw.base, f"{path}/{kw}"))
                res = self._cross(res, self.expand(union), path, kw)
                continue
            raws = [self.doc.raw_for(sub, raw.base, f"{path}/{kw}/{i}") for i, sub in enumerate(subs)]
            if kw == "allOf":
                res = self._all_of(res, raws, path, exact)
                continue
            branches = [self.expand(r, exact) for r in raws]
            # oneOf is anyOf where its branches are disjoint, alone or within the parts of this schema conjoined so
            # far (a "type" required here that each branch fixes); else each branch and not the others
            if (
                kw == "oneOf"
                and len(branches) > 1
                and not self._disjoint(branches)
                and (exact or not self._disjoint_within(res, branches, path))
            ):
                branches = self._exactly_one(raws, branches, f"{path}/oneOf")
            if kw == "anyOf" and exact:
                branches = branches + self._evaluating_combinations(branches, f"{path}/anyOf")
            union = list(dict.fromkeys(x for br in branches for x in br))
            res = self._cross(res, union, path, kw)
        if "not" in s:
            res = self._cross(res, self.negate(self.doc.raw_for(s["not"], raw.base, f"{path}/not")), path, "not")
        if "dependentSchemas" in s:
            # {name: S}: an object that has ``name`` meets S, anything else is left alone. Two disjoint branches: "an
            # object with the name, and S" or "no such name" (which non-objects satisfy too).
            ds = s["dependentSchemas"]
            if not isinstance(ds, dict):
                raise SchemaError("dependentSchemas must be an object", path)
            for name, sub in ds.items():
                if is_trivially_true(sub):
                    continue
                at = f"{path}/dependentSchemas/{pointer_escape(name)}"
                has = self.expand(self._synthetic({"type": "object", "required": [name]}, raw))
                then = self._cross(has, self.expand(self.doc.raw_for(sub, raw.base, at), exact), at, "dependentSchemas")
                lacks = self.expand(self._synthetic({"properties": {name: False}}, raw))
                res = self._cross(res, list(dict.fromkeys(then + lacks)), path, "dependentSchemas")
        if "if" in s and (
            exact or not (is_trivially_true(s.get("then", True)) and is_trivially_true(s.get("else", True)))
        ):
            cond = self.doc.raw_for(s["if"], raw.base, f"{path}/if")
            then = self.expand(self.doc.raw_for(s.get("then", True), raw.base, f"{path}/then"), exact)
            other = self.expand(self.doc.raw_for(s.get("else", True), raw.base, f"{path}/else"), exact)
            both = self._cross(self.expand(cond, exact), then, path, "if") + self._cross(
                self.negate(cond), other, path, "if"
            )
            res = self._cross(res, list(dict.fromkeys(both)), path, "if")
        return res

    def _evaluating_combinations(self, branches: list[list[frozenset]], path: str) -> list[list[frozenset]]:
        """For an ``anyOf`` under ``unevaluated*``: the conjunction of every set of two or more branches that
        evaluate properties or items (an instance meeting several has the union of their annotations; meeting
        only a subset is the smaller alternative, whose annotations are fewer, so nothing is wrongly allowed)."""
        evaluating = [br for br in branches if any(self._evaluated(f) != NOTHING_EVALUATED for f in br)]
        if len(evaluating) > MAX_EVALUATING_BRANCHES:
            raise UnsupportedSchemaError(
                "anyOf", path, f"more than {MAX_EVALUATING_BRANCHES} branches evaluate properties or items under "
                "unevaluatedProperties / unevaluatedItems"
            )  # fmt: skip
        out: list[list[frozenset]] = []
        for mask in range(1, 1 << len(evaluating)):
            chosen = [br for i, br in enumerate(evaluating) if mask >> i & 1]
            if len(chosen) < 2:
                continue
            acc = chosen[0]
            for br in chosen[1:]:
                acc = self._cross(acc, br, path, "anyOf")
            out.append(acc)
        return out

    def _evaluated(self, flat: frozenset) -> Evaluated:
        """What an instance of the conjunction ``flat`` has evaluated: property names, name patterns, prefix
        items, ``contains`` schemas, and whether every name / item is covered (``additionalProperties``,
        ``items``). Synthetic raws (complements, the "name absent" branch of ``dependentSchemas``) carry none."""
        names: set[str] = set()
        patterns: set[str] = set()
        contains: list = []
        all_names = all_items = False
        prefix = 0
        for r in flat:
            s = r.schema
            if not isinstance(s, dict) or id(r) in self._unannotated:
                continue
            all_names = all_names or "additionalProperties" in s
            all_items = all_items or "items" in s
            if isinstance(s.get("properties"), dict):
                names.update(s["properties"])
            if isinstance(s.get("patternProperties"), dict):
                patterns.update(s["patternProperties"])
            if isinstance(s.get("prefixItems"), list):
                prefix = max(prefix, len(s["prefixItems"]))
            if "contains" in s:
                contains.append(self.doc.raw_for(s["contains"], r.base, f"{r.path}/contains"))
        return Evaluated(
            None if all_names else (frozenset(names), frozenset(patterns)),
            None if all_items else (prefix, tuple(sorted(set(contains), key=lambda c: c.path))),
        )

    def _unevaluated(self, raw: Raw) -> list[frozenset]:
        """``unevaluatedProperties`` / ``unevaluatedItems`` of ``raw``: each alternative of the rest of the schema
        object (expanded exactly, :meth:`expand`) gets one more conjunct saying what its unevaluated names and items
        must meet: ``{"properties": {evaluated names: true}, "patternProperties": {evaluated patterns: true},
        "additionalProperties": U}`` and ``{"prefixItems": [true] * evaluated prefix, "items": {"anyOf": [U, the
        contains schemas]}}`` (an item that matches a ``contains`` was evaluated by it). That conjunct itself
        evaluates every name and item, as ``unevaluated*`` does for the schemas around it."""
        s = raw.schema
        inner = self._derive(raw, "evaluated", UNEVALUATED)
        out: list[frozenset] = []
        for flat in self.expand(inner, exact=True):
            ev = self._evaluated(flat)
            extras: list[tuple[str, dict]] = []
            if "unevaluatedProperties" in s and ev.properties is not None:
                names, patterns = ev.properties
                extra: dict = {"properties": {n: True for n in sorted(names)}}
                if patterns:
                    extra["patternProperties"] = {p: True for p in sorted(patterns)}
                extra["additionalProperties"] = s["unevaluatedProperties"]
                extras.append(("unevaluatedProperties", extra))
            if "unevaluatedItems" in s and ev.items is not None:
                prefix, contains = ev.items
                u = s["unevaluatedItems"]
                extra = {"items": {"anyOf": [u, *(c.schema for c in contains)]} if contains else u}
                if prefix:
                    extra["prefixItems"] = [True] * prefix
                extras.append(("unevaluatedItems", extra))
            for kw, extra in extras:
                key = (id(raw), kw, ev)
                r = self._uneval_raws.get(key)
                if r is None:
                    self._keep.append(extra)
                    r = self._uneval_raws[key] = self.doc.raw_for(extra, raw.base, f"{raw.path}/{kw}")
                flat = flat | {r}
            out.append(flat)
        return list(dict.fromkeys(out))

    def _all_of(self, res: list[frozenset], raws: list[Raw], path: str, exact: bool) -> list[frozenset]:
        """``res`` and every ``allOf`` branch. A branch that is only a ``oneOf`` whose alternatives overlap on their
        own is taken last, within the others: its alternatives may be disjoint among the instances of its siblings
        (Drone: ``allOf: [{$ref: kind_pipeline}, {oneOf: [pipeline_docker, pipeline_exec, ...]}]``, where each
        alternative fixes ``type`` to a different value and only the sibling requires it). Exactness holds either way:
        a ``oneOf`` is ``anyOf`` wherever no instance of the conjunction can meet two of its alternatives."""
        deferred = []
        for r in raws:
            split = None if exact else self._lone_one_of(r)
            if split is None:
                res = self._cross(res, self.expand(r, exact), path, "allOf")
            else:
                deferred.append((r, split))
        for r, (rest, branches) in deferred:
            within = self._cross(res, rest, path, "allOf")
            if self._disjoint_within(within, branches, r.path):
                res = self._cross(within, list(dict.fromkeys(x for br in branches for x in br)), r.path, "oneOf")
            else:
                res = self._cross(res, self.expand(r), path, "allOf")  # branch i and not the others, as usual
        return res

    def _lone_one_of(self, raw: Raw) -> tuple[list[frozenset], list[list[frozenset]]] | None:
        """``(the DNF of raw without its oneOf, the DNF of each oneOf branch)`` when ``raw``'s only applicator is a
        ``oneOf`` whose branches are not provably disjoint by themselves; else None."""
        s = raw.schema
        if not isinstance(s, dict) or not isinstance(s.get("oneOf"), list) or len(s["oneOf"]) < 2:
            return None
        if any(k in s for k in (*APPLICATORS, *UNEVALUATED) if k != "oneOf"):
            return None
        if _enum_union(s["oneOf"], overlap=False) is not None:
            return None
        raws = [self.doc.raw_for(sub, raw.base, f"{raw.path}/oneOf/{i}") for i, sub in enumerate(s["oneOf"])]
        branches = [self.expand(r) for r in raws]
        if self._disjoint(branches):
            return None
        return self.expand(self._derive(raw, "applicators", APPLICATORS + UNEVALUATED)), branches

    def _disjoint_within(self, context: list[frozenset], branches: list[list[frozenset]], path: str) -> bool:
        """Whether no instance of ``context`` (a DNF conjoined with the ``oneOf``) meets two of its ``branches``:
        the branches, each narrowed to the context, are provably pairwise disjoint."""
        light = self._light_context(context)
        if light is None:
            return False
        try:
            return self._disjoint([self._cross([light], br, path, "oneOf") for br in branches])
        except UnsupportedSchemaError:
            return False

    def _light_context(self, context: list[frozenset]) -> frozenset | None:
        """What a one-alternative ``context`` says that tells branches apart cheaply: its ``type``, ``required``
        names, the names of a closed object, and properties held to an ``enum`` / ``const`` (a discriminator's
        values); None when it has none of these, or several alternatives. A weaker context than the real one (it
        keeps only some of its keywords), so a proof under it holds under the real one; and merging it builds no
        pattern automata, which a proof that fails would have built for nothing (Meltano's schedules: 90 ms)."""
        if len(context) != 1:
            return None
        parts = []
        for r in context[0]:
            s = r.schema
            if not isinstance(s, dict):
                continue
            light = {k: s[k] for k in ("type", "required") if k in s}
            props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
            kept = {
                n: {k: v[k] for k in ("enum", "const") if k in v}
                for n, v in props.items()
                if isinstance(v, dict) and ("enum" in v or "const" in v)
            }
            if s.get("additionalProperties") is False and not s.get("patternProperties"):
                light["additionalProperties"] = False
                kept = {n: kept.get(n, True) for n in props}
            if kept:
                light["properties"] = kept
            if light:
                parts.append(self._synthetic(light, r))
        return frozenset(parts) if parts else None

    def _exactly_one(self, raws: list[Raw], branches: list[list[frozenset]], path: str) -> list[list[frozenset]]:
        """``oneOf`` with overlapping branches: branch ``i`` and the complement of every other branch."""
        try:
            negs = [self.negate(r) for r in raws]
        except UnsupportedSchemaError as e:
            raise UnsupportedSchemaError(
                "oneOf", path, f"branches not provably disjoint, and {e.keyword!r} at {e.path} cannot be negated"
            ) from e
        out = []
        for i, br in enumerate(branches):
            acc = br
            for j, neg in enumerate(negs):
                if j != i:
                    acc = self._cross(acc, neg, path, "oneOf")
            out.append(acc)
        return out

    def negate(self, raw: Raw) -> list[frozenset]:
        """Disjunctive normal form of ``not raw`` (De Morgan over its DNF, keyword negation: negation.py)."""
        key = id(raw)
        if key in self._negate_memo:
            hit = self._negate_memo[key][1]
            if isinstance(hit, UnsupportedSchemaError):
                raise hit  # (a failure is remembered: the structural retry must not redo it at every level)
            return hit
        if key in self._negating:
            raise UnsupportedSchemaError("not", raw.path, "self-referential negation")
        self._negating.add(key)
        try:
            res = self._negate(raw)
        except _TooManyAlternatives as e:
            # De Morgan over the whole normal form multiplies out; the schema's structure may not (a oneOf is
            # "none or two", not the complement of each of its "one and not the others")
            try:
                res = self._negate_structurally(raw)
            except UnsupportedSchemaError as again:
                self._negate_memo[key] = (raw, again)
                raise
            if res is None:
                self._negate_memo[key] = (raw, e)
                raise
        finally:
            self._negating.discard(key)
        self._negate_memo[key] = (raw, res)
        return res

    def _negate(self, raw: Raw) -> list[frozenset]:
        """De Morgan over ``raw``'s normal form: every alternative fails, each by some keyword (negation.py)."""
        s = raw.schema
        if (
            isinstance(s, dict)
            and "not" in s
            and not any(k in s for k in _CONSTRAINING if k != "not")
            and not self._annotations_read
        ):
            # not (not S) is S: negating the complement's own normal form would negate complements again (the
            # items of an array "with an item that fails S", under a oneOf's other branch: Travis's webhooks).
            # S's own raws are returned, annotations and all: a complement evaluates nothing, so this holds only
            # where no unevaluated* reads annotations.
            return self.expand(self.doc.raw_for(s["not"], raw.base, f"{raw.path}/not"))
        flats = self.expand(raw)
        # The parts every alternative shares (the schema object's own keywords, beside a oneOf of small branches)
        # are negated once: not (C and (R1 or R2 ...)) = not C or (not R1 and not R2 ...). Negating each
        # alternative whole multiplies C's complement out once per alternative (Bitbucket's storage_aws_auth:
        # 10 keywords x 3 alternatives passed 512).
        common = frozenset.intersection(*flats) if len(flats) > 1 else frozenset()
        res = [frozenset()]
        for flat in flats:
            res = self._cross(res, self._negated_raws(flat - common), raw.path, "not")
        if common:
            res = self._capped(self._negated_raws(common) + res, raw.path)
        return res

    def _capped(self, alts: list[frozenset], path: str) -> list[frozenset]:
        res = list(dict.fromkeys(alts))
        if len(res) > MAX_ALTERNATIVES:
            raise _TooManyAlternatives("not", path, f"expands to more than {MAX_ALTERNATIVES} alternatives")
        return res

    def _negate_structurally(self, raw: Raw) -> list[frozenset] | None:
        """``not raw`` keyword by keyword, applicators included: the union of the complements of its applicator-free
        keywords and of each applicator (``allOf``: some part fails; ``anyOf``: every branch fails; ``oneOf``: every
        branch fails, or two hold; ``if``: the condition holds and ``then`` fails, or fails and ``else`` fails; ...).
        Returns ``oneOf`` branches' and ``if`` conditions' own raws, annotations and all, so only where no
        ``unevaluated*`` reads annotations (None: not applicable here)."""
        s = raw.schema
        if not isinstance(s, dict) or self._annotations_read:
            return None
        for kw in s:
            self._check_keyword(kw, s, raw)
        path = raw.path
        # the applicator-free keywords, negated as usual
        parts = self._keyword_complements({k: v for k, v in s.items() if k not in APPLICATORS}, raw)

        def sub(v, at: str) -> Raw:
            return self.doc.raw_for(v, raw.base, at)

        if "$ref" in s:
            if not isinstance(s["$ref"], str):
                raise SchemaError("$ref must be a string", path)
            parts += self.negate(self.doc.resolve(s["$ref"], raw))
        for kw in ("allOf", "anyOf", "oneOf"):
            subs = s.get(kw)
            if subs is None:
                continue
            if not isinstance(subs, list) or not subs:
                raise SchemaError(f"{kw} must be a non-empty array", path)
            raws = [sub(v, f"{path}/{kw}/{i}") for i, v in enumerate(subs)]
            if kw == "allOf":
                for r in raws:
                    parts += self.negate(r)
                continue
            none = [frozenset()]
            for r in raws:
                none = self._cross(none, self.negate(r), path, kw)
            parts += none
            if kw == "oneOf":
                dnfs = [self.expand(r) for r in raws]
                for i in range(len(dnfs)):
                    for j in range(i + 1, len(dnfs)):
                        parts += self._cross(dnfs[i], dnfs[j], path, kw)
        if "not" in s:
            parts += self.expand(sub(s["not"], f"{path}/not"))
        if "dependentSchemas" in s:
            ds = s["dependentSchemas"]
            if not isinstance(ds, dict):
                raise SchemaError("dependentSchemas must be an object", path)
            for name, v in ds.items():
                if not is_trivially_true(v):
                    has = self.expand(self._synthetic({"type": "object", "required": [name]}, raw))
                    at = f"{path}/dependentSchemas/{pointer_escape(name)}"
                    parts += self._cross(has, self.negate(sub(v, at)), at, "dependentSchemas")
        if "if" in s:
            cond = sub(s["if"], f"{path}/if")
            then, other = sub(s.get("then", True), f"{path}/then"), sub(s.get("else", True), f"{path}/else")
            parts += self._cross(self.expand(cond), self.negate(then), path, "if")
            parts += self._cross(self.negate(cond), self.negate(other), path, "if")
        return self._capped(parts, path)

    def _negated_raws(self, raws: frozenset) -> list[frozenset]:
        """Disjunctive normal form of "some raw of ``raws`` fails" (each applicator-free: its keywords' complements)."""
        alts: list[frozenset] = []
        for r in raws:
            for kw in r.schema:
                self._check_keyword(kw, r.schema, r)
            alts += self._keyword_complements(r.schema, r)
        return list(dict.fromkeys(alts))

    def _keyword_complements(self, schema: dict, origin: Raw) -> list[frozenset]:
        """Normal form of "some keyword of the applicator-free ``schema`` fails" (negation.negate_keywords)."""
        out: list[frozenset] = []
        for d in negate_keywords(schema, origin.path, self.formats, is_trivially_true, self._type_kinds):
            out += self.expand(self._synthetic(d, origin))
        return out

    def _synthetic(self, schema: dict, origin: Raw) -> Raw:
        """A Raw for a schema the compiler made up (a complement, a branch of ``dependentSchemas``): it evaluates
        nothing (``_evaluated``)."""
        self._keep.append(schema)
        r = self.doc.raw_for(schema, origin.base, origin.path)
        self._unannotated.add(id(r))
        return r

    @cached_property
    def _annotations_read(self) -> bool:
        """Whether an ``unevaluatedProperties`` / ``unevaluatedItems`` may read annotations: the key anywhere in the
        documents (a property of that name counts too: erring towards True only turns shortcuts off). Walked once,
        the first time a shortcut asks."""
        return any(_mentions(d, UNEVALUATED) for d in self._documents)

    def _disjoint(self, branches: list[list[frozenset]]) -> bool:
        """Whether the ``oneOf`` branches are provably pairwise disjoint (then ``oneOf`` is ``anyOf``)."""
        key = tuple(tuple(br) for br in branches)
        r = self._disjoint_memo.get(key)
        if r is None:
            r = self._disjoint_memo[key] = self._prove_disjoint(branches)
        return r

    def _prove_disjoint(self, branches: list[list[frozenset]]) -> bool:
        from .disjoint import simples_disjoint

        nodes = []
        for br in branches:
            simples: list[Simple] = []
            for flat in br:
                simples.extend(self.merge(flat))
                if flat in self._hidden:
                    return False  # strings that another reading of a pattern admits: nothing is proved
            nodes.append(simples)
        for i in range(len(nodes)):
            for j in range(i + 1, len(nodes)):
                for a in nodes[i]:
                    for b in nodes[j]:
                        if not simples_disjoint(a, b, self):
                            return False
        return True

    def _derive(self, raw: Raw, tag: str, drop: tuple[str, ...]) -> Raw:
        key = (id(raw), tag)
        d = self._derived.get(key)
        if d is None:
            d = Raw({k: v for k, v in raw.schema.items() if k not in drop}, raw.base, raw.path)
            self._derived[key] = d
        return d

    def synth_const(self, value, path: str) -> Raw:
        """A schema object that matches exactly the array/object ``value`` (children as ``const``)."""
        key = json_key(value)
        r = self._synth.get(key)
        if r is None:
            if isinstance(value, list):
                s = {
                    "type": "array",
                    "prefixItems": [{"const": x} for x in value],
                    "items": False,
                    "minItems": len(value),
                    "maxItems": len(value),
                }
            else:
                s = {
                    "type": "object",
                    "properties": {k: {"const": x} for k, x in value.items()},
                    "required": list(value),
                    "additionalProperties": False,
                }
            r = self._synth[key] = self.doc.raw_for(s, "urn:omnifuse:const", path)
        return r

    # merging ------------------------------------------------------------------------------------------------
    def merge(self, flat: frozenset) -> tuple[Simple, ...]:
        r = self._merge_memo.get(flat)
        if r is None:
            r = self._merge_memo[flat] = self._merge(flat)
        return r

    def _merge(self, flat: frozenset) -> tuple[Simple, ...]:
        markers = [raw for raw in flat if K_EXTRA_NAME in raw.schema]
        if markers:  # (the first by path: an error then names the same keyword on every run)
            return self._merge_extra_name(flat, min(markers, key=lambda r: r.path))
        members = sorted(flat, key=lambda r: r.path)
        path = members[0].path if members else "#"
        kinds = set(ALL_KINDS)
        enum_vals: list | None = None
        excluded: list = []
        lo = hi = None  # (value, exclusive)
        min_len, max_len = 0, None
        nfas = []  # the string's automata where it must match (lower readings)
        nfas_up = []  # the same, read widest: what the disjointness proofs must assume (regex.py)
        min_items, max_items = 0, None
        min_props, max_props = 0, None
        multiples: list = []  # (divisor, path)
        unique = None  # path of a uniqueItems: true
        repeat = None  # path of a uniqueItems: true negated (negation.K_REPEAT): some item equal to another
        contains = []  # (raw, minContains, maxContains)
        required: set[str] = set()
        deps: dict[str, set[str]] = {}
        for raw in members:
            s = raw.schema
            p = raw.path
            for kw in s:
                self._check_keyword(kw, s, raw)
            if "type" in s:
                kinds &= self._type_kinds(s["type"], p)
            for kw in ("enum", "const"):
                if kw in s:
                    vals = s[kw] if kw == "enum" else [s[kw]]
                    if not isinstance(vals, list):
                        raise SchemaError("enum must be an array", p)
                    if enum_vals is None:
                        enum_vals = list(vals)
                    else:
                        keys = {json_key(v) for v in vals}
                        enum_vals = [v for v in enum_vals if json_key(v) in keys]
            if K_KINDS in s:
                kinds &= set(s[K_KINDS])
            if K_NOT_VALUES in s:
                excluded.extend(s[K_NOT_VALUES])
            if K_NOT_PATTERN in s:
                # what neither engine matches: the complement of the upper reading (and, for the disjointness
                # proofs, the widest such set: the complement of the lower one)
                lower, upper = _pattern_nfas(s[K_NOT_PATTERN], f"{p}/pattern", "pattern")
                nfas.append(_complement_nfa(upper, f"{p}/pattern"))
                nfas_up.append(_complement_nfa(lower, f"{p}/pattern"))
            if K_NOT_FORMAT in s:
                fp = format_pattern(s[K_NOT_FORMAT]) if isinstance(s[K_NOT_FORMAT], str) else None
                if fp is None:
                    raise UnsupportedSchemaError(
                        "format", p, f"format {s[K_NOT_FORMAT]!r} is not in the supported subset"
                    )
                lower, upper = _pattern_nfas(fp, f"{p}/format", "format")
                nfas.append(_complement_nfa(upper, f"{p}/format"))
                nfas_up.append(_complement_nfa(lower, f"{p}/format"))
            if s.get("uniqueItems") is True:
                unique = unique or p
            if K_REPEAT in s:
                repeat = repeat or s[K_REPEAT]
            if "contains" in s:
                lo_c = _nonneg_int(s.get("minContains", 1), "minContains", p)
                hi_c = _nonneg_int(s["maxContains"], "maxContains", p) if "maxContains" in s else None
                contains.append((raw, lo_c, hi_c))
            if "multipleOf" in s:
                d = _number(s["multipleOf"], "multipleOf", p)
                if d <= 0:
                    raise SchemaError("multipleOf must be greater than 0", p)
                multiples.append((d, p))
            if "minimum" in s:
                lo = _tighter_lo(lo, (_number(s["minimum"], "minimum", p), False))
            if "exclusiveMinimum" in s:
                lo = _tighter_lo(lo, (_number(s["exclusiveMinimum"], "exclusiveMinimum", p), True))
            if "maximum" in s:
                hi = _tighter_hi(hi, (_number(s["maximum"], "maximum", p), False))
            if "exclusiveMaximum" in s:
                hi = _tighter_hi(hi, (_number(s["exclusiveMaximum"], "exclusiveMaximum", p), True))
            if "minLength" in s:
                min_len = max(min_len, _nonneg_int(s["minLength"], "minLength", p))
            if "maxLength" in s:
                v = _nonneg_int(s["maxLength"], "maxLength", p)
                max_len = v if max_len is None else min(max_len, v)
            if "pattern" in s:
                pat = s["pattern"]
                if not isinstance(pat, str):
                    raise SchemaError("pattern must be a string", p)
                lower, upper = _pattern_nfas(pat, f"{p}/pattern", "pattern")
                nfas.append(lower)
                nfas_up.append(upper)
            if "format" in s and self.formats == "assert":
                fmt = s["format"]
                fp = format_pattern(fmt) if isinstance(fmt, str) else None
                if fp is None:
                    raise UnsupportedSchemaError("format", p, f"format {fmt!r} is not in the supported subset")
                lower, upper = _pattern_nfas(fp, f"{p}/format", "format")
                nfas.append(lower)
                nfas_up.append(upper)
            if "minItems" in s:
                min_items = max(min_items, _nonneg_int(s["minItems"], "minItems", p))
            if "maxItems" in s:
                v = _nonneg_int(s["maxItems"], "maxItems", p)
                max_items = v if max_items is None else min(max_items, v)
            if "minProperties" in s:
                min_props = max(min_props, _nonneg_int(s["minProperties"], "minProperties", p))
            if "maxProperties" in s:
                v = _nonneg_int(s["maxProperties"], "maxProperties", p)
                max_props = v if max_props is None else min(max_props, v)
            if "dependentRequired" in s:
                dr = s["dependentRequired"]
                if not isinstance(dr, dict) or not all(
                    isinstance(v, list) and all(isinstance(x, str) for x in v) for v in dr.values()
                ):
                    raise SchemaError("dependentRequired must map names to arrays of strings", p)
                for k, v in dr.items():
                    deps.setdefault(k, set()).update(v)
            if "required" in s:
                req = s["required"]
                if not isinstance(req, list) or not all(isinstance(x, str) for x in req):
                    raise SchemaError("required must be an array of strings", p)
                required.update(req)
            if "items" in s and isinstance(s["items"], list):
                raise UnsupportedSchemaError("items", p, "array form of items (use prefixItems in 2020-12)")

        node = Simple(path)
        out: list[Simple] = []
        evals = enum_vals if enum_vals is not None else None
        node.null = NULL in kinds and (evals is None or any(v is None for v in evals)) and None not in excluded
        if BOOL in kinds:
            bools = frozenset((True, False)) if evals is None else frozenset(v for v in evals if isinstance(v, bool))
            node.bools = frozenset(b for b in bools if not any(x is b for x in excluded))
        if INT in kinds or FRAC in kinds:
            vals = (
                None
                if evals is None
                else tuple(v for v in evals if isinstance(v, (int, float)) and not isinstance(v, bool))
            )
            if vals is None or vals:
                num = NumSpec(
                    integer=FRAC not in kinds,
                    frac_only=INT not in kinds,
                    excluded=tuple(excluded),
                    lo=None if lo is None else lo[0],
                    lo_excl=bool(lo and lo[1]),
                    hi=None if hi is None else hi[0],
                    hi_excl=bool(hi and hi[1]),
                    values=vals,
                    multiples=tuple(d for d, _ in multiples),
                )
                if multiples and vals is None and num.cost(None, "", None) is None:
                    # generation writes integer multiples only (numbers.py): where none is in range, valid numbers
                    # might still exist that it cannot produce, and recognition would refuse them: fail closed
                    raise UnsupportedSchemaError(
                        "multipleOf", multiples[0][1], "no integer multiple lies in the allowed range"
                    )
                if num.intervals and (vals is None or num.values):
                    node.num = num
        if STR in kinds:
            strs = None if evals is None else [v for v in evals if isinstance(v, str)]
            not_strs = {v for v in excluded if isinstance(v, str)}
            for v in (*(strs or ()), *not_strs):
                if _SURROGATE.search(v):
                    # a lone surrogate is a JSON string ("\ud800") that no UTF-8 output can hold: fail closed
                    raise UnsupportedSchemaError("enum", path, f"the string {v!r} holds a lone surrogate")
            if strs is not None:
                strs = sorted(set(strs) - not_strs)  # a finite set minus a finite set: no complement automaton
            if any(a is not b for a, b in zip(nfas, nfas_up)):
                # read differently by the two engines: a proof that this node and another admit no common string
                # must use the widest reading (Compiler.widest_strings)
                node.str_widest = (tuple(nfas_up), None if strs is None else tuple(strs), frozenset(not_strs),
                                   min_len, max_len, path)  # fmt: skip
            if strs is None or strs:
                auto = self._strings(nfas, None if strs is None else tuple(strs), not_strs, min_len, max_len, path)
                if auto is not None and auto.sat:
                    node.str = auto
        if ARR in kinds and repeat is not None:
            if unique is None:  # "two equal items" is satisfiable here, and no machine runs it: fail closed
                raise UnsupportedSchemaError("uniqueItems", repeat, "cannot be negated (an array with a repeated item)")
            kinds = kinds - {ARR}  # unique and not unique: no array
        if ARR in kinds and evals is None:
            node.arr = self._arr_spec(members, min_items, max_items, path)
            if unique is not None:
                node.arr.unique, node.arr.path = True, unique
            if contains:
                self._add_contains(node.arr, contains, path)
        if OBJ in kinds and evals is None:
            node.obj = self._obj_spec(members, required, min_props, max_props, path, deps)
        if node.str is None and node.str_widest is not None and self.widest_strings(node) is not None:
            self._hidden.add(flat)  # its strings are empty in the lower reading only (Alt.hidden)
        if node.null or node.bools or node.num or node.str or node.arr or node.obj:
            node.id = len(self.simples)
            self.simples.append(node)
            out.append(node)
        if evals is not None and ((ARR in kinds) or (OBJ in kinds)):
            stripped = frozenset(self._derive(r, "enum", ("enum", "const")) for r in members)
            for v in evals:
                if (isinstance(v, list) and ARR in kinds) or (isinstance(v, dict) and OBJ in kinds):
                    synth = self.synth_const(v, f"{path}/enum")
                    value_key = _value_key(v)
                    for flat2 in self._cross([stripped], self.expand(synth), path, "enum"):
                        merged = self.merge(flat2)
                        for m in merged:  # a conjunction with the const of v: at most v itself
                            m.value_key = value_key
                        out.extend(merged)
        return tuple(dict.fromkeys(out))

    def _matching(self, strings: tuple[str, ...], nfas: list, path: str) -> tuple[str, ...]:
        """The strings that every NFA accepts (each NFA determinised once per compile; one that is too large alone is
        intersected with the strings instead, where the finite set bounds the product)."""
        if not nfas:
            return strings
        memo = (strings, tuple(id(n) for n in nfas))  # the NFAs are alive in _alone: their ids stay theirs
        hit = self._matched.get(memo)
        if hit is not None:
            return hit
        out = strings
        for nfa in nfas:
            key = id(nfa)
            if key not in self._alone:
                try:
                    self._alone[key] = (nfa, build_dfa([nfa], path))
                except UnsupportedSchemaError:
                    self._alone[key] = (nfa, False)
            dfa = self._alone[key][1]
            if dfa is False:
                dfa = build_dfa([nfa, self._literal_set_nfa(out)], path, _literal_states(out)) if out else None
            out = tuple(x for x in out if dfa_accepts(dfa, x)) if dfa is not None else ()
        self._matched[memo] = out
        return out

    def _literal_set_nfa(self, strings: tuple[str, ...]):
        """The NFA of a finite set of strings, one object per set and compile, so that the automata built from it
        are shared (``_string_automaton`` and ``_alone`` key on NFA ids): Azure Pipelines asks for the same enum's
        automaton thousands of times."""
        nfa = self._literal_nfas.get(strings)
        if nfa is None:
            nfa = self._literal_nfas[strings] = literal_set_nfa(strings)
        return nfa

    def _string_automaton(self, nfas: list, min_len: int, max_len, path: str) -> StringAutomaton | None:
        """The automaton of the intersection of ``nfas`` with the length bounds (None: no string), shared by every
        node that asks for the same one: a schema like Azure Pipelines' merges the same enum tens of thousands of
        times (one ``oneOf`` branch per task, each with the others' complements)."""
        key = (tuple(id(n) for n in nfas), min_len, max_len)
        hit = self._automata.get(key)
        if hit is None:
            dfa = build_dfa(nfas, path) if nfas else None
            auto = StringAutomaton(dfa, min_len, max_len, path) if not nfas or dfa is not None else None
            hit = self._automata[key] = (list(nfas), auto)  # the NFAs kept alive: their ids stay theirs
        return hit[1]

    def widest_strings(self, node: Simple) -> StringAutomaton | None:
        """The strings ``node`` admits under the widest reading of its patterns (either engine's): ``node.str``
        itself unless some pattern reads differently; None where no string is admitted even so."""
        if node.str_widest is None:
            return node.str
        key = ("widest", id(node))
        hit = self._automata.get(key)
        if hit is None:
            auto = self._strings(*node.str_widest)
            hit = self._automata[key] = (node, auto if auto is not None and auto.sat else None)
        return hit[1]

    def _strings(self, nfas, strs, not_strs, min_len: int, max_len, path: str) -> StringAutomaton | None:
        """The string automaton of a node: its patterns' ``nfas``, its finite set ``strs`` (None: no such limit) or
        the values ``not_strs`` it excludes, and its length bounds."""
        if strs is not None:
            # a finite set meets the patterns in those of its strings that match them all: filter the strings (one
            # automaton per pattern, shared) instead of building each product automaton
            literals = self._matching(strs, list(nfas), path)
            return self._literal_automaton(literals, min_len, max_len, path) if literals else None
        all_nfas = list(nfas)
        if not_strs:
            all_nfas.append(_complement_nfa(self._literal_set_nfa(tuple(sorted(not_strs))), path))
        return self._string_automaton(all_nfas, min_len, max_len, path)

    def _literal_automaton(self, strings: tuple[str, ...], min_len: int, max_len, path: str) -> StringAutomaton:
        """The automaton of a finite set of strings with the length bounds: its trie is its DFA (no subset
        construction, and no cap but the size of the set itself: 1,772 language names in GitHub's issue forms)."""
        key = ("literal", strings, min_len, max_len)
        hit = self._automata.get(key)
        if hit is None:
            hit = self._automata[key] = (None, StringAutomaton(literal_set_dfa(strings, path), min_len, max_len, path))
        return hit[1]

    def _merge_extra_name(self, flat: frozenset, marker: Raw) -> tuple[Simple, ...]:
        """``flat`` with the complement of an ``additionalProperties`` (:data:`~.negation.K_EXTRA_NAME`): "an object
        with some name outside ``names`` and ``patterns`` whose value fails ``schema``".

        Where the rest of the conjunction allows finitely many names (no undeclared ones), that is a finite union:
        for each allowed name outside the set, "the name is present and its value fails the schema". Typical of a
        ``oneOf`` over objects with ``additionalProperties: false``: another branch's names decide it.
        """
        from .patternkeys import python_regex_agrees

        names, patterns, schema = marker.schema[K_EXTRA_NAME]
        rest = frozenset(r for r in flat if r is not marker) | {self._synthetic({"type": "object"}, marker)}
        at = marker.path
        candidates: set[str] = set()
        out: list[Simple] = []
        for node in self.merge(rest):
            if node.obj is None:
                continue
            keys = getattr(node.obj, "keys", None)
            others = [f for f in keys.final if f is not None] if keys is not None else [node.obj.additional]
            if any(self.resolved(alt).simples for alt in others):
                # undeclared names are allowed: "one of them fails the schema" is a state of the object frame
                # (ExistsObjSpec), where the names outside the complement's are all alike (no patterns on either side)
                if keys is not None or patterns or node.obj.hit is not None:
                    # (the complement of an unevaluatedProperties, which Compiler._unevaluated wrote as one: name it)
                    kw = at.rsplit("/", 1)[-1] if at.endswith("/unevaluatedProperties") else "additionalProperties"
                    why = "two complements on one object" if node.obj.hit is not None else "beside patternProperties"
                    raise UnsupportedSchemaError(
                        kw, at, f"cannot be negated where undeclared names are allowed ({why})"
                    )
                out.append(self._exists_node(node.obj, names, schema, marker))
            candidates.update(node.obj.special)
        dfas = [(p, build_dfa([_pattern_nfa(p, f"{at}/patternProperties", "patternProperties")], at)) for p in patterns]
        for name in sorted(candidates):
            if name in names:
                continue
            matched = False
            for p, dfa in dfas:
                ours = dfa_accepts(dfa, name)
                if not python_regex_agrees(p, name, ours):
                    raise UnsupportedSchemaError(
                        "patternProperties", at, f"the ECMA-262 and Python regex dialects disagree on {name!r}"
                    )
                matched = matched or ours
            if matched:
                continue
            present = self._synthetic(
                {"type": "object", "required": [name], "properties": {name: {"not": schema}}}, marker
            )
            out.extend(self.merge(rest | {present}))
        return tuple(dict.fromkeys(out))

    def _exists_node(self, plain: ObjSpec, names: tuple, schema, marker: Raw) -> Simple:
        """The node of "some fresh name's value fails ``schema``" over the object ``plain`` (ExistsObjSpec), and the
        plain node it becomes once such a name is written. The complement's declared ``names`` join the special
        names with the value they already had (the other names' schema): they never count as fresh."""
        props = dict(plain.props)
        for name in names:
            props.setdefault(name, plain.additional)
        sub = self.doc.raw_for(schema, marker.base, marker.path)
        yes = self.alt(plain.additional.key | {self._synthetic({"not": schema}, marker)}, marker.path)
        no = self.alt(plain.additional.key | {sub}, marker.path)
        hit = self._register(Simple(marker.path))
        hit.obj = ObjSpec(props, plain.required, plain.additional, plain.min_props, plain.max_props, plain.deps)
        node = self._register(Simple(marker.path))
        node.obj = ExistsObjSpec(hit.obj, hit, yes, no)
        return node

    def _register(self, node: Simple) -> Simple:
        node.id = len(self.simples)
        self.simples.append(node)
        return node

    def _add_contains(self, arr: ArrSpec, contains: list, path: str) -> None:
        """Split every position into "matches ``contains``" and "does not" (the complement: negation.py)."""
        if len(contains) > 1:
            raise UnsupportedSchemaError("contains", path, "more than one contains on one array")
        raw, lo_c, hi_c = contains[0]
        at = f"{raw.path}/contains"
        sub = self.doc.raw_for(raw.schema["contains"], raw.base, at)
        neg = self._synthetic({"not": raw.schema["contains"]}, sub)
        self.negate(sub)  # refuse now, with its path, what cannot be complemented

        def split(alt: Alt) -> tuple[Alt, Alt]:
            return self.alt(alt.key | {sub}, f"{alt.path}/contains"), self.alt(alt.key | {neg}, f"{alt.path}/contains")

        yes_no = [split(a) for a in arr.prefix]
        yes_i, no_i = split(arr.items)
        arr.contains = (tuple(y for y, _ in yes_no), yes_i, tuple(n for _, n in yes_no), no_i)
        arr.min_contains, arr.max_contains = lo_c, hi_c

    def _arr_spec(self, members: list[Raw], min_items: int, max_items, path: str) -> ArrSpec:
        n_prefix = 0
        for raw in members:
            pi = raw.schema.get("prefixItems")
            if pi is not None:
                if not isinstance(pi, list):
                    raise SchemaError("prefixItems must be an array", raw.path)
                n_prefix = max(n_prefix, len(pi))

        def item_raw(raw: Raw, i: int | None):
            s = raw.schema
            pi = s.get("prefixItems")
            if i is not None and pi is not None and i < len(pi):
                return self.doc.raw_for(pi[i], raw.base, f"{raw.path}/prefixItems/{i}")
            if "items" in s:
                return self.doc.raw_for(s["items"], raw.base, f"{raw.path}/items")
            return None

        prefix = []
        for i in range(n_prefix):
            conj = frozenset(r for r in (item_raw(m, i) for m in members) if r is not None)
            prefix.append(self.alt(conj, f"{path}/prefixItems/{i}"))
        conj = frozenset(r for r in (item_raw(m, None) for m in members) if r is not None)
        items = self.alt(conj, f"{path}/items")
        return ArrSpec(tuple(prefix), items, min_items, max_items)

    def _obj_spec(self, members: list[Raw], required: set, min_props, max_props, path: str, deps: dict) -> ObjSpec:
        if any(_constrains_names(m.schema) for m in members):
            return self._pattern_obj_spec(members, required, min_props, max_props, path, deps)
        names: set[str] = set()
        for raw in members:
            props = raw.schema.get("properties")
            if props is not None:
                if not isinstance(props, dict):
                    raise SchemaError("properties must be an object", raw.path)
                names.update(props)

        def prop_raw(raw: Raw, name: str | None):
            s = raw.schema
            props = s.get("properties") or {}
            if name is not None and name in props:
                return self.doc.raw_for(props[name], raw.base, f"{raw.path}/properties/{pointer_escape(name)}")
            if "additionalProperties" in s:
                return self.doc.raw_for(s["additionalProperties"], raw.base, f"{raw.path}/additionalProperties")
            return None

        # Per name: the members that declare it give their property schema, every other member its
        # additionalProperties (if any). Computed from who declares what, not member by member for every name: a
        # schema with hundreds of names in an allOf of many members (real configs) would otherwise take seconds.
        extra = [(i, prop_raw(m, None)) for i, m in enumerate(members)]
        extra = [(i, r) for i, r in extra if r is not None]
        declaring: dict[str, list[int]] = {}
        for i, m in enumerate(members):
            for name in m.schema.get("properties") or {}:
                declaring.setdefault(name, []).append(i)
        props = {}
        for name in sorted(names):
            own = declaring[name]
            taken = set(own)
            conj = frozenset([prop_raw(members[i], name) for i in own] + [r for i, r in extra if i not in taken])
            props[name] = self.alt(conj, f"{path}/properties/{pointer_escape(name)}")
        additional = self.alt(frozenset(r for _, r in extra), f"{path}/additionalProperties")
        return ObjSpec(props, frozenset(required), additional, min_props, max_props, deps)

    def _pattern_obj_spec(self, members: list[Raw], required: set, min_props, max_props, path: str, deps: dict):
        """The object part when ``patternProperties`` or ``propertyNames`` constrain names (:mod:`.patternkeys`)."""
        from .patternkeys import KeyAutomaton, PatternObjSpec, key_alphabet, python_regex_agrees

        pats = []  # (member index, pattern, value schema, DFA or None)
        extra: dict[int, Raw] = {}
        declared: list[dict] = []
        for i, m in enumerate(members):
            s = m.schema
            pp = s.get("patternProperties") or {}
            for pat, sub in pp.items():
                at = f"{m.path}/patternProperties/{pointer_escape(pat)}"
                dfa = build_dfa([_pattern_nfa(pat, at, "patternProperties")], at)
                pats.append((i, pat, self.doc.raw_for(sub, m.base, at), dfa))
            if "additionalProperties" in s:
                extra[i] = self.doc.raw_for(s["additionalProperties"], m.base, f"{m.path}/additionalProperties")
            props = s.get("properties") or {}
            if not isinstance(props, dict):
                raise SchemaError("properties must be an object", m.path)
            declared.append(props)
        never = self.alt(frozenset([self.doc.raw_for(False, "urn:omnifuse:never", f"{path}/propertyNames")]), path)

        names_auto, no_names = None, False
        name_raws = [
            self.doc.raw_for(m.schema["propertyNames"], m.base, f"{m.path}/propertyNames")
            for m in members
            if "propertyNames" in m.schema
        ]
        if name_raws:
            strings = [x.str for x in self.resolved(self.alt(frozenset(name_raws), f"{path}/propertyNames")).simples]
            strings = [x for x in strings if x is not None]
            if len(strings) > 1:  # propertyNames: {anyOf: [...]}: one automaton for the union
                at = next(m.path for m in members if "propertyNames" in m.schema)
                names_auto = union_automata(strings, f"{at}/propertyNames")
            elif strings:
                names_auto = strings[0]
            if names_auto is None:
                no_names = True  # no string satisfies it: the object must be empty

        def named(name: str) -> bool:
            if no_names:
                return False
            if names_auto is None:
                return True
            q, n = 0, 0
            for ch in name:
                r = names_auto.step(q, n, ord(ch))
                if r is None:
                    return False
                q, n = r
            return names_auto.can_end(q, n)

        def conj_for(matched, name: str | None) -> frozenset:
            conj = []
            for i, m in enumerate(members):
                if name is not None and name in declared[i]:
                    conj.append(
                        self.doc.raw_for(declared[i][name], m.base, f"{m.path}/properties/{pointer_escape(name)}")
                    )
                    own_declared = True
                else:
                    own_declared = False
                own = [pats[k][2] for k in matched if pats[k][0] == i]
                conj.extend(own)
                if not own and not own_declared and i in extra:
                    conj.append(extra[i])
            return frozenset(conj)

        special = set(required) | set(deps)
        for d in declared:
            special.update(d)
        for v in deps.values():
            special.update(v)
        props = {}
        for name in sorted(special):
            if not named(name):
                props[name] = never
                continue
            matched = []
            for k, (i, pat, _, dfa) in enumerate(pats):
                ours = dfa_accepts(dfa, name)
                if not python_regex_agrees(pat, name, ours):
                    raise UnsupportedSchemaError(
                        "patternProperties",
                        f"{members[i].path}/patternProperties/{pointer_escape(pat)}",
                        f"the ECMA-262 and Python regex dialects disagree on the property name {name!r}",
                    )
                if ours:
                    matched.append(k)
            props[name] = self.alt(conj_for(matched, name), f"{path}/properties/{pointer_escape(name)}")

        sources = tuple(p[1] for p in pats)
        keys = KeyAutomaton([p[3] for p in pats], names_auto, key_alphabet(list(sources)), path, sources)
        if not no_names:
            for st, matched in enumerate(keys.matched):
                if keys.named[st]:
                    where = "patternProperties" if matched else "additionalProperties"
                    alt = keys.final[st] = self.alt(conj_for(sorted(matched), None), f"{path}/{where}")
                    keys.by_class[matched] = alt
            if len(pats) <= MAX_NAME_CLASSES_BITS:
                # names outside the alphabet (never generated, judged when fed) may match any set of patterns
                for bits in range(1 << len(pats)):
                    matched = frozenset(k for k in range(len(pats)) if bits >> k & 1)
                    if matched not in keys.by_class:
                        where = "patternProperties" if matched else "additionalProperties"
                        keys.by_class[matched] = self.alt(conj_for(sorted(matched), None), f"{path}/{where}")
        return PatternObjSpec(props, frozenset(required), never, min_props, max_props, deps, keys)

    # keyword checks -------------------------------------------------------------------------------------
    def _check_keyword(self, kw: str, s: dict, raw: Raw) -> None:
        v = s[kw]
        p = raw.path
        if kw in INTERNAL:
            return
        if kw in HANDLED or kw in ANNOTATIONS:
            if kw == "$schema" and (not isinstance(v, str) or v.rstrip("#") != DRAFT_2020_12):
                raise UnsupportedSchemaError("$schema", p, f"only draft 2020-12 is supported, got {v!r}")
            return
        if kw in ALWAYS_UNSUPPORTED:
            raise UnsupportedSchemaError(kw, p)
        if kw == "patternProperties":
            if not isinstance(v, dict):
                raise SchemaError("patternProperties must be an object", p)
            return  # see _pattern_obj_spec
        if kw == "propertyNames":
            return
        if kw in ("unevaluatedProperties", "unevaluatedItems"):
            if is_trivially_true(v):
                return
            raise UnsupportedSchemaError(kw, p)
        # unknown keyword: an annotation per the specification

    @staticmethod
    def _type_kinds(t, path: str) -> frozenset:
        names = [t] if isinstance(t, str) else t
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise SchemaError("type must be a string or an array of strings", path)
        out: set = set()
        for name in names:
            if name not in TYPE_KINDS:
                raise SchemaError(f"unknown type {name!r}", path)
            out |= TYPE_KINDS[name]
        return frozenset(out)

    # shortest instances -------------------------------------------------------------------------------------
    def _fixpoint(self) -> None:
        for s in self.simples:
            kc = s.kind_cost
            if s.null:
                kc[NULL] = 4
            if s.bools:
                kc[BOOL] = 4 if True in s.bools else 5
            if s.num is not None:
                c = s.num.cost(None, "", None)
                if c is not None:
                    kc["number"] = c
            if s.str is not None:
                c = s.str.cost(0, 0)
                if c is not None:
                    kc[STR] = 1 + c
        changed = True
        alts = list(self.alts.values())
        while changed:
            changed = False
            for s in self.simples:
                if s.arr is not None:
                    c = s.arr.rest_cost(0, True)
                    if c is not None and c + 1 < s.kind_cost.get(ARR, math.inf):
                        s.kind_cost[ARR] = c + 1
                        changed = True
                if s.obj is not None:
                    c = s.obj.rest_cost(frozenset(), True, memo=False)
                    if c is not None and c + 1 < s.kind_cost.get(OBJ, math.inf):
                        s.kind_cost[OBJ] = c + 1
                        changed = True
                m = min(s.kind_cost.values(), default=None)
                if m != s.min_cost:
                    s.min_cost = m
                    changed = True
            for a in alts:
                m = min((s.min_cost for s in a.simples if s.min_cost is not None), default=None)
                if m != a.min_cost:
                    a.min_cost = m
                    changed = True
        for s in self.simples:
            s.first = _first_chars(s)
        for a in alts:
            fs = EMPTY
            for s in a.simples:
                fs = fs | s.first
            a.first = fs
            a.simples = tuple(s for s in a.simples if s.min_cost is not None)


def _first_chars(s: Simple) -> CharSet:
    kc = s.kind_cost
    chars: list[str] = []
    if NULL in kc:
        chars.append("n")
    if BOOL in kc:
        if True in s.bools:
            chars.append("t")
        if False in s.bools:
            chars.append("f")
    if "number" in kc:
        num = s.num
        if num.cost(True, "", None) is not None:
            chars.append("-")
        chars.extend(d for d in "0123456789" if num.cost(False, d, None) is not None)
    if STR in kc:
        chars.append('"')
    if ARR in kc:
        chars.append("[")
    if OBJ in kc:
        chars.append("{")
    return CharSet.of(*chars)


def _check_unique(arr: ArrSpec) -> None:
    """``uniqueItems`` within what unique.py supports: at most one item needed to close (the cheapest set of several
    *different* items is not costed)."""
    if arr.min_items > 1:
        raise UnsupportedSchemaError("uniqueItems", arr.path, "with minItems above 1")
    if arr.contains is not None and arr.min_contains > 1:
        raise UnsupportedSchemaError("uniqueItems", arr.path, "with minContains above 1")
    if arr.contains is not None and arr.prefix:
        # a match still needed may lie past prefix positions: several different items to cost
        raise UnsupportedSchemaError("uniqueItems", arr.path, "with contains and prefixItems together")


class _Facts(NamedTuple):
    """What :func:`_contradictory` reads of one member (computed once per Raw: a large schema tests the same members
    in thousands of conjunctions)."""

    kinds: frozenset | None  # the kinds it allows (None: no limit)
    required: frozenset
    forbidden: frozenset  # properties: {name: false}
    holds: frozenset  # (name, base, schema text): the value, if the name is present, satisfies the schema
    fails: frozenset  # the same from "properties: {name: {not: schema}}" with the name required
    closed: frozenset | None  # names allowed under additionalProperties: false (and no patterns)
    extra: frozenset | None  # complement of additionalProperties: some name outside these must exist
    unique: bool = False  # uniqueItems: true
    repeat: bool = False  # its complement, negation.K_REPEAT: some item equal to another


_NO_FACTS = _Facts(None, frozenset(), frozenset(), frozenset(), frozenset(), None, None)


def _facts(raw) -> _Facts:
    f = raw.facts
    if f is not None:
        return f
    s = raw.schema
    if not isinstance(s, dict):
        raw.facts = _NO_FACTS
        return _NO_FACTS
    req = s.get("required")
    required = frozenset(x for x in req if isinstance(x, str)) if isinstance(req, list) else frozenset()
    props = s.get("properties")
    forbidden, holds, fails = set(), set(), set()
    if isinstance(props, dict):
        forbidden.update(n for n, v in props.items() if v is False)
        for n, v in props.items():
            if isinstance(v, dict) and len(v) == 1 and isinstance(v.get("not"), dict):
                if isinstance(req, list) and n in req:
                    fails.add((n, raw.base, _canonical(v["not"])))
            elif isinstance(v, dict):
                holds.add((n, raw.base, _canonical(v)))
    closed = None
    if s.get("additionalProperties") is False and not s.get("patternProperties"):
        closed = frozenset(n for n, v in (props or {}).items() if v is not False)
    extra = frozenset(s[K_EXTRA_NAME][0]) if K_EXTRA_NAME in s and not s[K_EXTRA_NAME][1] else None
    f = raw.facts = _Facts(
        _raw_kinds(raw),
        required,
        frozenset(forbidden),
        frozenset(holds),
        frozenset(fails),
        closed,
        extra,
        s.get("uniqueItems") is True,
        K_REPEAT in s,
    )
    return f


def _mentions(value, keys) -> bool:
    """Whether any object inside the JSON ``value`` has one of ``keys``."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if any(k in v for k in keys):
                return True
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _contradictory(flat: frozenset) -> bool:
    """A quick, sound test that a flat conjunction admits nothing: the types its members allow have no common
    kind, or a name is required by one member and forbidden (``properties: {name: false}``) by another."""
    kinds = ALL_KINDS
    required: set = set()
    forbidden: set = set()
    closed: list = []  # names allowed by members with additionalProperties: false (and no patterns)
    extra_names: list = []  # complements of additionalProperties: some name outside these must exist
    holds: set = set()
    fails: set = set()
    facts = [_facts(raw) for raw in flat]
    if any(f.repeat for f in facts) and any(f.unique for f in facts):
        return True  # an array with two equal items, and unique items (negation.K_REPEAT)
    for f in facts:
        if f.kinds is not None:
            kinds = kinds & f.kinds
            if not kinds:
                return True
    if kinds != frozenset((OBJ,)):
        return False  # the name rules below bind objects only
    for f in facts:
        required |= f.required
        forbidden |= f.forbidden
        holds |= f.holds
        fails |= f.fails
        if f.closed is not None:
            closed.append(f.closed)
        if f.extra is not None:
            extra_names.append(f.extra)
    if required & forbidden or any(required - allowed for allowed in closed) or holds & fails:
        return True
    return any(allowed <= names for allowed in closed for names in extra_names)


class _TooManyAlternatives(UnsupportedSchemaError):
    """A normal form passed MAX_ALTERNATIVES (Compiler.negate then tries the schema's structure)."""


_CONSTRAINING = (
    HANDLED | set(APPLICATORS) | ALWAYS_UNSUPPORTED | set(UNEVALUATED) | {"patternProperties", "propertyNames"}
)


def _value_key(value) -> tuple | None:
    """The :func:`unique.compound_key` of an array or object from the schema (None: one JSON cannot spell)."""
    from .unique import compound_key  # (unique imports this module)

    try:
        return compound_key(json.dumps(value, allow_nan=False))
    except (ValueError, RecursionError):
        return None


def _enum_union(subs: list, overlap: bool):
    """The values of an ``anyOf`` / ``oneOf`` whose branches only list values (``enum`` / ``const``, besides
    annotations), as one list (JSON equality, first occurrence kept); None if some branch constrains otherwise, or
    (``oneOf``) if a value is in two branches, where "exactly one" would exclude it."""
    out: dict = {}
    for sub in subs:
        if not isinstance(sub, dict) or not ("enum" in sub or "const" in sub):
            return None
        if any(k in _CONSTRAINING and k not in ("enum", "const") for k in sub):
            return None
        vals = sub.get("enum", [sub["const"]] if "const" in sub else None)
        if not isinstance(vals, list):
            return None
        if "enum" in sub and "const" in sub:
            vals = [v for v in vals if json_key(v) == json_key(sub["const"])]
        keys = {json_key(v): v for v in vals}
        if not overlap and any(k in out for k in keys):
            return None  # overlapping branches: for oneOf the value is excluded; leave it to the general path
        out.update(keys)
    return list(out.values())


def _canonical(schema: dict) -> str:
    """A schema's text, as a key: two members with the same text under the same base URI mean the same schema."""
    key = id(schema)
    hit = _CANONICAL.get(key)
    if hit is None or hit[0] is not schema:
        hit = _CANONICAL[key] = (schema, json.dumps(schema, sort_keys=True, default=str))
        if len(_CANONICAL) > 100_000:
            _CANONICAL.clear()
    return hit[1]


_CANONICAL: dict[int, tuple] = {}


_KINDS_OF_VALUE = {bool: BOOL, int: INT, float: FRAC, str: STR, list: ARR, dict: OBJ, type(None): NULL}


def _raw_kinds(raw) -> frozenset | None:
    """The kinds ``raw`` allows by ``type``, the internal kind set or ``enum``/``const`` (None: no such limit)."""
    s = raw.schema
    out = None
    t = s.get("type")
    if isinstance(t, str) and t in TYPE_KINDS:
        out = TYPE_KINDS[t]
    elif isinstance(t, list) and all(isinstance(x, str) and x in TYPE_KINDS for x in t):
        out = frozenset().union(*(TYPE_KINDS[x] for x in t))
    if K_KINDS in s:
        ks = frozenset(s[K_KINDS])
        out = ks if out is None else out & ks
    for kw in ("enum", "const"):
        if kw in s:
            vals = s[kw] if kw == "enum" else [s[kw]]
            if isinstance(vals, list):
                ks = frozenset(
                    INT if isinstance(v, float) and v.is_integer() else _KINDS_OF_VALUE.get(type(v), OBJ) for v in vals
                )
                out = ks if out is None else out & ks
    return out


def _constrains_names(s: dict) -> bool:
    """Whether ``s`` makes a name's value schema depend on the name itself, or constrains names."""
    pp = s.get("patternProperties")
    if pp and not (
        all(is_trivially_true(x) for x in pp.values()) and is_trivially_true(s.get("additionalProperties", True))
    ):
        return True
    return "propertyNames" in s and not is_trivially_true(s["propertyNames"])


def _tighter_lo(cur, new):
    if cur is None:
        return new
    if new[0] > cur[0] or (new[0] == cur[0] and new[1]):
        return new
    return cur


def _tighter_hi(cur, new):
    if cur is None:
        return new
    if new[0] < cur[0] or (new[0] == cur[0] and new[1]):
        return new
    return cur


@lru_cache(maxsize=1024)
def _pattern_nfas(pattern: str, path: str, keyword: str):
    """(NFA of the lower reading, NFA of the upper one): the same object where the two engines read the pattern
    alike (regex.py: the lower reading where a pattern must match, the upper one under a complement)."""
    lower, upper = pattern_readings(pattern, path, keyword)
    nfa = build_nfa(lower)
    return nfa, (nfa if upper is None else build_nfa(upper))


def _pattern_nfa(pattern: str, path: str, keyword: str):
    return _pattern_nfas(pattern, path, keyword)[0]


@lru_cache(maxsize=1024)
def _complement_nfa(nfa, path: str):
    dfa = build_dfa([nfa], path)
    comp = complement_dfa(dfa)
    if comp is None:  # complement is empty: an NFA that accepts nothing
        from .regex import NFA

        empty = NFA()
        empty.start, empty.accept = empty.new(), empty.new()
        return empty
    return dfa_to_nfa(comp)


def _literal_states(strings) -> int:
    """The most states an intersection with a finite set of strings can have: one per prefix (the trie's nodes)."""
    return 1 + sum(len(x) for x in strings)


_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps_key(schema) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
