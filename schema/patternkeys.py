"""Object keys under ``patternProperties`` and ``propertyNames``.

Without these keywords every undeclared ("fresh") name of an object behaves alike (its value follows
``additionalProperties``), which :class:`~.keys.KeyMachine` exploits. With them, a name's value schema depends on the
name itself: every ``patternProperties`` regex it matches (search semantics) adds its schema, and
``additionalProperties`` applies only to names that no declared property and no pattern covers; ``propertyNames``
constrains every name as a string instance.

:class:`KeyAutomaton` is the product of the pattern DFAs and the ``propertyNames`` string automaton over key strings:
a state knows which patterns the name so far matches and whether ``propertyNames`` accepts it, so each accepting
state carries the value node (:class:`~.compiler.Alt`) of the names ending there, built at compile time.
:class:`PatternObjSpec` is the object part of a node with such keys, and :class:`PatternKeyMachine` the string
machine for its keys. Costs stay exact: the cheapest names of each kind come from an A* enumeration over the product,
with the exact cheapest completion of every state as the heuristic.

Regex dialects: patterns run with the ECMA-262 subset of :mod:`.regex`; the ``jsonschema`` validator runs them with
Python's :mod:`re`. On that subset the two read a name differently only through a few characters: line terminators
(``.`` and ``$``), ``\\x1c-\\x1f`` (whitespace to Python) and, where a pattern uses ``\\d \\w \\s`` or their
complements, every non-ASCII character (Unicode classes in Python, ASCII here). With patterns present, undeclared
names avoid those characters (:func:`key_alphabet`), and a declared or required name on which the two dialects
disagree is refused at compile time: which schema a name gets never depends on the engine.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right

from .automaton import cheapest_strings, cheapest_to_targets, dfa_accepts
from .charset import UNIVERSE, CharSet, json_char_cost, min_json_cost
from .compiler import ObjSpec
from .errors import SchemaError, UnsupportedSchemaError
from .keys import entry_tail, next_chars, with_prefix

MAX_KEY_STATES = 5000
# characters a pattern of the supported subset may read differently in ECMA-262 and in Python's re
_LINE_AND_SEPARATORS = CharSet([(0x0A, 0x0A), (0x0D, 0x0D), (0x1C, 0x1F), (0x2028, 0x2029)])
_SHORTHAND = re.compile(r"\\[dwsDWSpP]")  # \p{..}: Python cannot judge a non-ASCII name (no \p in re)


def key_alphabet(patterns: list[str]) -> CharSet:
    """Characters allowed in undeclared names when ``patterns`` classify them (see the module docstring)."""
    if not patterns:
        return UNIVERSE
    out = UNIVERSE - _LINE_AND_SEPARATORS
    if any(_SHORTHAND.search(p) for p in patterns):
        out = out & CharSet([(0, 0x7F)])
    return out


class _Phantom:
    """A stand-in written name: counts towards the number of properties, matches no real name."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<phantom name>"


PHANTOM = _Phantom()


class KeyAutomaton:
    """Product of the pattern DFAs (``None``: a pattern that matches nothing) and the ``propertyNames`` automaton.

    ``trans[s]`` = sorted ``(lo, hi, target)``; ``matched[s]`` = indices of the patterns the name so far matches;
    ``named[s]`` = whether ``propertyNames`` accepts it. ``final[s]`` (the value node of names ending in ``s``) is set
    by the compiler once the classes of names are known.
    """

    def __init__(self, patterns: list, names, alphabet: CharSet, path: str, sources: tuple[str, ...] = ()) -> None:
        self.patterns = patterns
        self.sources = sources  # the patterns as written (for Python's verdict on names outside the alphabet)
        self.names = names
        self.alphabet = alphabet
        self.by_class: dict[frozenset, object] = {}  # value node per set of matched patterns (set by the compiler)
        start = (tuple(-1 if d is None else 0 for d in patterns), (0, 0) if names is not None else None)
        index = {start: 0}
        order = [start]
        trans: list[list[tuple[int, int, int]]] = []
        i = 0
        while i < len(order):
            qs, ns = order[i]
            i += 1
            bounds = {b for a, z in alphabet.ranges for b in (a, z + 1)}
            for dfa, q in zip(patterns, qs):
                if q >= 0:
                    for a, b, _ in dfa.trans[q]:
                        bounds.add(a)
                        bounds.add(b + 1)
            if names is not None and names.dfa is not None:
                for a, b, _ in names.dfa.trans[ns[0]]:
                    bounds.add(a)
                    bounds.add(b + 1)
            pts = sorted(bounds)
            row: list[tuple[int, int, int]] = []
            for a, b in zip(pts, pts[1:]):
                if a not in alphabet:
                    continue
                nns = None
                if names is not None:
                    nns = names.step(ns[0], ns[1], a)
                    if nns is None:
                        continue
                nqs = tuple(-1 if q < 0 else _dfa_step(dfa, q, a) for dfa, q in zip(patterns, qs))
                key = (nqs, nns)
                j = index.get(key)
                if j is None:
                    j = index[key] = len(order)
                    order.append(key)
                    if len(order) > MAX_KEY_STATES:
                        raise UnsupportedSchemaError(
                            "patternProperties", path, f"property-name automaton larger than {MAX_KEY_STATES} states"
                        )
                if row and row[-1][2] == j and row[-1][1] == a - 1:
                    row[-1] = (row[-1][0], b - 1, j)
                else:
                    row.append((a, b - 1, j))
            trans.append(row)
        self.trans = trans
        self._starts = [[a for a, _, _ in row] for row in trans]
        self.matched = [
            frozenset(k for k, (d, q) in enumerate(zip(patterns, qs)) if q >= 0 and d.accept[q]) for qs, _ in order
        ]
        self.named = [names is None or names.can_end(*ns) for _, ns in order]
        self.final: list = [None] * len(order)
        self._state_of: dict[str, int | None] = {"": 0}
        self._dist: list | None = None

    def step(self, s: int, cp: int) -> int | None:
        i = bisect_right(self._starts[s], cp) - 1
        if i >= 0:
            a, b, t = self.trans[s][i]
            if cp <= b:
                return t
        return None

    def state_of(self, name: str) -> int | None:
        """The state after ``name`` (None: no name starts like this)."""
        r = self._state_of.get(name, -1)
        if r == -1:
            prev = self.state_of(name[:-1])
            r = None if prev is None else self.step(prev, ord(name[-1]))
            if len(self._state_of) > 100_000:
                self._state_of.clear()
                self._state_of[""] = 0
            self._state_of[name] = r
        return r

    def outside_value(self, name: str):
        """Value node of a name with characters outside the alphabet (only ever *fed*, never generated): its class
        from the patterns where both regex dialects agree on it; None if they disagree, if ``propertyNames`` rejects
        it, or if no name inside the alphabet has that class (its node was never built)."""
        matched = []
        for k, (dfa, source) in enumerate(zip(self.patterns, self.sources)):
            ours = dfa_accepts(dfa, name)
            if not python_regex_agrees(source, name, ours):
                return None
            if ours:
                matched.append(k)
        if self.names is not None:
            q, n = 0, 0
            for ch in name:
                r = self.names.step(q, n, ord(ch))
                if r is None:
                    return None
                q, n = r
            if not self.names.can_end(q, n):
                return None
        return self.by_class.get(frozenset(matched))

    def tail_weight(self, s: int) -> int | None:
        """Closing quote + colon + the cheapest value, for a name ending in ``s`` (None: no name may end there)."""
        alt = self.final[s]
        if alt is None or alt.min_cost is None:
            return None
        return 2 + alt.min_cost

    def distances(self, memo: bool = True) -> list:
        """Per state: the cheapest (rest of the name + closing quote + colon + value); None where nothing completes.

        ``memo=False`` while the compiler's fixpoint is still lowering the value costs.
        """
        if memo and self._dist is not None:
            return self._dist
        n = len(self.trans)
        rev: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for s, row in enumerate(self.trans):
            for a, b, t in row:
                w = min_json_cost(a, b)
                if w is not None:
                    rev[t].append((w[0], s))
        dist = cheapest_to_targets(rev, [(w, s) for s in range(n) if (w := self.tail_weight(s)) is not None])
        if memo:
            self._dist = dist
        return dist

    def completions(self, s: int, prefix: str, dist: list):
        """Yield ``(cost, name)`` for every name that extends ``prefix`` (in state ``s``) and may end, cheapest first.

        ``cost`` = bytes of the rest of the name + closing quote + colon + the cheapest value (A* over the product,
        ``dist`` the exact heuristic, so names come out in non-decreasing cost and each exactly once).
        """
        yield from cheapest_strings(s, prefix, self.trans.__getitem__, dist.__getitem__, self.tail_weight)


def _dfa_step(dfa, q: int, cp: int) -> int:
    t = dfa.step(q, cp)
    return -1 if t is None else t


def python_regex_agrees(pattern: str, name: str, ours: bool) -> bool:
    """Whether both engines say what ``ours`` (the pattern's lower reading, regex.py) says of ``name``: Python's
    :mod:`re` (the reference validator's) and every ECMA-262 reading, which lies within the upper reading. A "no"
    that the upper reading would turn into a "yes" is not settled."""
    try:
        if bool(re.search(pattern, name)) != ours:
            return False
    except re.error:
        return False
    # ECMA-262 reads \\d \\w "." "$" as the lower reading does; where it may match more (\\s, the complements, \\p,
    # a negated class that the lower reading keeps to ASCII) a "no" must also hold in the upper reading
    return ours or not _ECMA_WIDER.search(pattern) or not _upper_matches(pattern, name)


_ECMA_WIDER = re.compile(r"\\[DWSspP]|\[\^[^\]]*\\")


def _upper_matches(pattern: str, name: str) -> bool:
    dfa = _upper_dfa(pattern)
    return True if dfa is False else dfa_accepts(dfa, name)


@functools.lru_cache(maxsize=256)
def _upper_dfa(pattern: str):
    """The DFA of the pattern's upper reading (None: matches nothing; False: could not be built, so unsettled)."""
    from .automaton import build_dfa
    from .regex import build_nfa, pattern_readings

    try:
        lower, upper = pattern_readings(pattern)
        return build_dfa([build_nfa(upper if upper is not None else lower)])
    except SchemaError:
        return False


class PatternObjSpec(ObjSpec):
    """:class:`~.compiler.ObjSpec` whose undeclared names are classified by a :class:`KeyAutomaton`.

    ``props`` holds the value node of every special name (declared, required, dependency-related), patterns and
    ``additionalProperties`` already folded in; any other name's value node is ``keys.final`` of its state
    (``never`` where no name may end).
    """

    __slots__ = ("keys", "never")

    def __init__(self, props: dict, required: frozenset, never, min_props: int, max_props, deps, keys) -> None:
        super().__init__(props, required, never, min_props, max_props, deps)
        self.keys = keys
        self.never = never

    def value_alt(self, name: str):
        alt = self.props.get(name)
        if alt is not None:
            return alt
        keys = self.keys
        s = keys.state_of(name)
        if s is not None:
            alt = keys.final[s]
        elif not all(ord(ch) in keys.alphabet for ch in name):
            alt = keys.outside_value(name)
        return self.never if alt is None else alt

    def rest_cost(self, seen: frozenset, first: bool, memo: bool = True) -> int | None:
        key = (seen, first)
        if memo and key in self._rest:
            return self._rest[key]
        r = self._rest_cost(seen, first, memo)
        if memo:
            if len(self._rest) > 200_000:
                self._rest.clear()
            self._rest[key] = r
        return r

    def fresh_options(self, seen: frozenset, k: int, memo: bool = True) -> list[int]:
        """Entry costs (quoted name, colon, cheapest value) of the ``k`` cheapest undeclared names not in ``seen``."""
        out: list[int] = []
        for cost, _ in self.cheapest_fresh(seen, k, memo):
            out.append(1 + cost)
        return out

    def cheapest_fresh(self, seen: frozenset, k: int, memo: bool = True) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        if k <= 0:
            return out
        dist = self.keys.distances(memo)
        for cost, name in self.keys.completions(0, "", dist):
            if name in self._special_set or name in seen:
                continue
            out.append((cost, name))
            if len(out) == k:
                break
        return out


class PatternKeyMachine:
    """The string machine (lexer protocol, see :mod:`.lexer`) for keys of a :class:`PatternObjSpec`.

    State = the decoded name so far. A character is allowed when the name can still be completed to an admissible
    one (its value satisfiable, the object still closable). Characters that start a special name, a written name or
    one of the cheapest undeclared names (those change what closing the object costs) are costed one by one; all
    others in one automaton transition share a cost.
    """

    __slots__ = ("spec", "seen", "ok", "ok_set", "_names", "_exclude", "_top", "_lower", "_cost", "_allowed")

    def __init__(self, spec: PatternObjSpec, seen: frozenset) -> None:
        self.spec = spec
        self.seen = seen
        names = {n for n in spec.special if spec.admissible(seen, n)}
        self.ok = tuple(sorted(names))
        self.ok_set = frozenset(names)
        written = {n for n in seen if isinstance(n, str)}
        self._exclude = frozenset(spec.special) | written
        # undeclared names whose choice changes the rest of the object's cost: the cheapest ones that closing the
        # object might still need (minProperties)
        need = max(0, spec.min_props - len(seen))
        self._top = frozenset(n for _, n in spec.cheapest_fresh(seen, need + 1)) if need else frozenset()
        self._names = tuple(sorted(self._exclude | self._top))
        self._lower = spec.rest_cost(seen | {PHANTOM}, False)  # rest after any other undeclared name
        self._cost: dict[str, int | None] = {}
        self._allowed: dict[str, CharSet] = {}

    def possible(self) -> bool:
        return self.m_cost("") is not None

    @property
    def outside_names(self) -> bool:
        """Whether names outside the generation alphabet exist (they may be fed, and are judged at their end)."""
        return self.spec.keys.alphabet != UNIVERSE

    def _special_next(self, p: str) -> set[int]:
        return next_chars(self._names, p)

    def _entry_tail(self, name: str) -> int | None:
        return entry_tail(self.spec, self.seen, name)

    def _outside(self, p: str) -> bool:
        """Whether ``p`` has a character outside the automaton's alphabet (see the module docstring): such a name
        is never generated, and when fed it is judged whole, at its end."""
        alphabet = self.spec.keys.alphabet
        return not all(ord(ch) in alphabet for ch in p)

    # string-machine protocol ---------------------------------------------------------------------------------
    def m_step(self, p: str, cp: int) -> str | None:
        p2 = p + chr(cp)
        if self.m_cost(p2) is not None or self.outside_names:
            # where names outside the alphabet exist, any fed prefix may still become one: judged at its end
            # (generation never gets here without a cost: the mask only offers characters with one)
            return p2
        return None

    def m_can_end(self, p: str) -> bool:
        if p in self.ok_set:
            return True
        if p in self._exclude:
            return False
        s = self.spec.keys.state_of(p)
        if s is None and not self._outside(p):
            return False
        if s is not None and self.spec.keys.final[s] is None:
            return False
        return self.spec.admissible(self.seen, p)

    def m_cost(self, p: str) -> int | None:
        if p in self._cost:
            return self._cost[p]
        best = None
        for n in with_prefix(self.ok, p):
            t = self._entry_tail(n)
            if t is not None:
                c = sum(json_char_cost(ord(ch)) for ch in n[len(p) :]) + t
                best = c if best is None or c < best else best
        keys = self.spec.keys
        s = keys.state_of(p)
        if s is not None and self._lower is not None:
            dist = keys.distances()
            for cost, name in keys.completions(s, p, dist):
                if best is not None and cost + self._lower >= best:
                    break
                if name in self._exclude:
                    continue
                rest = self._lower if name not in self._top else self.spec.rest_cost(self.seen | {name}, False)
                if rest is not None and (best is None or cost + rest < best):
                    best = cost + rest
        self._cost[p] = best
        return best

    def _generic(self, p: str):
        """``(lo, hi, cost)`` per automaton transition from ``p``: the cost after any of its characters that does
        not start a special, written or cheapest name."""
        keys = self.spec.keys
        s = keys.state_of(p)
        if s is None:
            return
        special = self._special_next(p)
        for a, b, _ in keys.trans[s]:
            rep = a
            while rep <= b and rep in special:
                rep += 1
            if rep <= b:
                yield a, b, self.m_cost(p + chr(rep))

    def m_allowed(self, p: str) -> CharSet:
        r = self._allowed.get(p)
        if r is None and self._outside(p):
            r = self._allowed[p] = UNIVERSE  # only reachable by feeding: any continuation, judged at the end
        if r is None:
            special = self._special_next(p)
            ranges = [(a, b) for a, b, c in self._generic(p) if c is not None]
            cs = CharSet(ranges) - CharSet.of(*special) if special else CharSet(ranges)
            ok = [c for c in special if self.m_cost(p + chr(c)) is not None]
            r = cs | CharSet.of(*ok) if ok else cs
            self._allowed[p] = r
        return r

    def m_feedable(self, p: str) -> CharSet:
        """Allowed characters plus those outside the alphabet: a fed name may leave it (and is then judged whole)."""
        return self.m_allowed(p) | (UNIVERSE - self.spec.keys.alphabet)

    def m_cost_range(self, p: str, lo: int, hi: int) -> int | None:
        best = None
        special = self._special_next(p)
        for c in special:
            if lo <= c <= hi:
                cost = self.m_cost(p + chr(c))
                if cost is not None and (best is None or cost < best):
                    best = cost
        for a, b, _ in self.spec.keys.trans[s] if (s := self.spec.keys.state_of(p)) is not None else ():
            a2, b2 = max(a, lo), min(b, hi)
            rep = a2
            while rep <= b2 and rep in special:
                rep += 1
            if rep <= b2:
                cost = self.m_cost(p + chr(rep))
                if cost is not None and (best is None or cost < best):
                    best = cost
        return best
