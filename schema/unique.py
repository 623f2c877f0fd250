"""``uniqueItems``: arrays whose items are each different from the ones before it.

The array frame of the recogniser carries the set of items written so far (:func:`item_key` values: JSON equality,
so ``1`` and ``1.0`` are the same item and ``true`` is not ``1``). Each new item runs on :func:`restricted`, its node
with those values taken out: numbers through ``NumSpec`` exclusions, booleans and null dropped once used, strings
through :class:`ExcludingStrings`, a string machine that refuses to *end* on a used value and costs its completions
around them (an A* search over the string automaton, :func:`cheapest_strings`). So the mask never lets a repeated
item be finished, and never lets a comma open an item that no longer has a value left.

Arrays and objects as items (:func:`compound_key`, :func:`compound_only`): the recogniser runs such an item on a
machine of its own (the item node cut down to its array and object alternatives), keeps the item's text, and runs
beside it, for every array or object already written, a machine of ``{"const": that value}``: while one of those
can still accept the text, the item may still turn out a repeat. The item is refused when it ends equal to one of
them, and a character is masked out when every completion after it would be a repeat (an A* search for the
cheapest completion that no ``const`` machine accepts: the recogniser's ``_fresh_cost``). The ``const`` machines
give JSON equality in every spelling (key order, ``1`` / ``1.0``, escapes, whitespace).

``minItems`` above 1 (closing would then need several *different* items, whose cheapest set this engine does not
cost) is refused at compile time.
"""

from __future__ import annotations

import json

from .automaton import cheapest_strings
from .charset import UNIVERSE, CharSet
from .keys import next_chars

NULL_KEY = ("null",)
COMPOUND = "c"  # the kind of an array or object item's key: (COMPOUND, canonical form)


def item_key(kind: str, value) -> tuple:
    """The identity of a finished scalar item under JSON equality."""
    if kind == "string":
        return ("s", value)
    if kind == "number":
        return ("n", value)  # Python numbers: 1 == 1.0 and hash(1) == hash(1.0)
    if kind == "literal":
        return NULL_KEY if value is None else ("b", value)
    raise ValueError(kind)


def compound_key(text: str) -> tuple:
    """The identity of a finished array or object item (its JSON text) under JSON equality, as a flat string (deep
    items compare and hash without recursion): keys sorted, ``1`` / ``1.0`` / ``1e0`` one number, ``true`` not
    ``1`` (as the reference validator's ``equal``)."""
    value = json.loads(text, parse_float=_float)
    return (COMPOUND, json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def _float(text: str):
    f = float(text)
    return int(f) if f.is_integer() else f  # an integral float is that integer (1.0 == 1, 1e20 == 10**20)


def key_value(key: tuple):
    """The JSON value of a :func:`compound_key`."""
    return json.loads(key[1])


def compound_only(alt, make_alt, make_simple, drop: frozenset = frozenset()):
    """``alt`` cut down to its array and object alternatives (None: it has none), less the nodes of a single value
    (``Simple.value_key``: an enum member) whose key is in ``drop``: the node an array or object item runs on, apart
    from its scalar alternatives (those are :func:`restricted`). ``make_alt(key, path)`` and ``make_simple(path)``
    build empty nodes."""
    from .compiler import ARR, OBJ, _first_chars

    simples = []
    for s in alt.simples:
        kc = {k: v for k, v in s.kind_cost.items() if k in (ARR, OBJ)}
        if not kc or (s.value_key is not None and s.value_key in drop):
            continue
        out = make_simple(s.path)
        out.id = -1
        out.arr = s.arr if ARR in kc else None
        out.obj = s.obj if OBJ in kc else None
        out.kind_cost = kc
        out.value_key = s.value_key
        out.min_cost = min(kc.values())
        out.first = _first_chars(out)
        simples.append(out)
    if not simples:
        return None
    out_alt = make_alt(alt.key, alt.path)
    out_alt.simples = tuple(simples)
    out_alt.min_cost = min(x.min_cost for x in simples)
    first = simples[0].first
    for x in simples[1:]:
        first = first | x.first
    out_alt.first = first
    return out_alt


def number_value(neg: bool, ip: str, fr: str | None, ex: str | None):
    text = ("-" if neg else "") + ip + ("" if fr is None else "." + fr) + (ex or "")
    return float(text) if (fr is not None or ex) else int(text)


class ExcludingStrings:
    """The string machine (lexer protocol) of a :class:`~.automaton.StringAutomaton` minus a finite set of values.

    State ``ms`` = ``((q, n), text so far)``; ``dfa`` is None on purpose: the recogniser's shortcuts for plain
    automata do not apply, it takes the exact byte-by-byte path.
    """

    dfa = None

    def __init__(self, auto, excluded: frozenset) -> None:
        self.auto = auto
        self.excluded = excluded
        self._names = tuple(sorted(excluded))
        self._cost: dict = {}

    def start(self):
        return ((0, 0), "")

    def _special_next(self, p: str) -> set[int]:
        return next_chars(self._names, p)

    def _transitions(self, qn):
        auto = self.auto
        q, n = qn
        n1 = auto.norm(n + 1)
        if auto.dfa is None:
            return [(a, b, (0, n1)) for a, b in UNIVERSE.ranges] if auto.live(0, n1) else []
        return [(a, b, (t, n1)) for a, b, t in auto.dfa.trans[q] if auto.live(t, n1)]

    def _end(self, qn):
        return 1 if self.auto.can_end(*qn) else None

    def m_step(self, ms, cp: int):
        qn, p = ms
        r = self.auto.step(qn[0], qn[1], cp)
        if r is None:
            return None
        ms2 = (r, p + chr(cp))
        return ms2 if self.m_cost(ms2) is not None else None

    def m_can_end(self, ms) -> bool:
        qn, p = ms
        return self.auto.can_end(*qn) and p not in self.excluded

    def m_cost(self, ms) -> int | None:
        """Cheapest completion, closing quote included, that is not an excluded value."""
        r = self._cost.get(ms)
        if r is None and ms not in self._cost:
            qn, p = ms
            if not self._special_next(p) and p not in self.excluded:
                r = self.auto.cost(*qn)  # no excluded value starts like this: the automaton's own cost
            else:
                r = None
                for cost, text in cheapest_strings(qn, p, self._transitions, lambda s: self.auto.cost(*s), self._end):
                    if text not in self.excluded:
                        r = cost
                        break
            self._cost[ms] = r
        return r

    def m_allowed(self, ms) -> CharSet:
        qn, p = ms
        base = self.auto.allowed(*qn)
        special = self._special_next(p)
        if not special:
            return base
        out = base - CharSet.of(*special)
        ok = [c for c in special if c in base and self.m_step(ms, c) is not None]
        return out | CharSet.of(*ok) if ok else out

    def m_cost_range(self, ms, lo: int, hi: int) -> int | None:
        qn, p = ms
        special = self._special_next(p)
        best = None
        for c in special:
            if lo <= c <= hi:
                r = self.m_step(ms, c)
                cost = None if r is None else self.m_cost(r)
                if cost is not None and (best is None or cost < best):
                    best = cost
        for a, b, t in self._transitions(qn):
            a2, b2 = max(a, lo), min(b, hi)
            rep = a2
            while rep <= b2 and rep in special:
                rep += 1
            if rep <= b2:
                cost = self.auto.cost(*t)
                if cost is not None and (best is None or cost < best):
                    best = cost
        return best


def restricted(simple, taken: frozenset, make_simple):
    """``simple`` without the values in ``taken`` (its string part always an :class:`ExcludingStrings`, so that a
    finished string item is known by its text). ``make_simple(path)`` builds an empty node."""
    from .compiler import _first_chars

    out = make_simple(simple.path)
    out.id = -1
    out.null = simple.null and NULL_KEY not in taken
    out.bools = frozenset(b for b in simple.bools if ("b", b) not in taken)
    out.arr, out.obj, out.value_key = simple.arr, simple.obj, simple.value_key
    numbers = tuple(v for kind, *rest in taken if kind == "n" for v in rest)
    out.num = simple.num.without(numbers) if simple.num is not None and numbers else simple.num
    if simple.str is not None:
        strings = frozenset(v for kind, *rest in taken if kind == "s" for v in rest)
        out.str = ExcludingStrings(simple.str, strings)
    kc = out.kind_cost
    if out.null:
        kc["null"] = 4
    if out.bools:
        kc["boolean"] = 4 if True in out.bools else 5
    if out.num is not None:
        c = out.num.cost(None, "", None)
        if c is not None:
            kc["number"] = c
    if out.str is not None:
        c = out.str.m_cost(out.str.start())
        if c is not None:
            kc["string"] = 1 + c
    out.min_cost = min(kc.values(), default=None)
    out.first = _first_chars(out)
    return out
