"""Deterministic automata over code points for string values, with length bounds kept as a counter.

:func:`build_dfa` determinises the *conjunction* of several NFAs (every ``pattern``/``format`` of a merged schema,
plus the literal set of an ``enum``/``const``) by subset construction on tuples of NFA state sets, then prunes
states that cannot reach acceptance. :class:`StringAutomaton` adds ``minLength``/``maxLength``: the length is
recogniser state (an int next to the DFA state), never unrolled into the automaton. It answers the questions the
recogniser and the token mask ask: which decoded characters keep a string completable, whether it may end now,
and the cheapest completion in UTF-8 bytes (for budget-aware decoding).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from itertools import count

from .charset import COST_BREAKS, SUR_HI, SUR_LO, UNIVERSE, CharSet, min_json_cost
from .errors import UnsupportedSchemaError
from .regex import NFA

MAX_DFA_STATES = 4000
MAX_LITERAL_DFA_STATES = 100_000  # an enum's strings, total code points
MAX_COST_TABLE = 2_000_000


class DFA:
    """A pruned DFA: state 0 is the start; ``trans[q]`` = sorted ``(lo, hi, target)``; every state is co-reachable."""

    def __init__(self, trans: list[list[tuple[int, int, int]]], accept: list[bool]) -> None:
        self.trans = trans
        self.accept = accept
        self.n = len(trans)
        self._starts = [[lo for lo, _, _ in tr] for tr in trans]
        self._labels: list[list[tuple[CharSet, int]] | None] = [None] * self.n  # made per state on first use
        self.weights: list[list[tuple[int, int]]] = []  # (cheapest byte cost, target)
        for tr in trans:
            best: dict[int, int] = {}
            for lo, hi, t in tr:
                w = min_json_cost(lo, hi)[0]
                if w < best.get(t, w + 1):
                    best[t] = w
            self.weights.append([(w, t) for t, w in best.items()])

    def labels(self, q: int) -> list[tuple[CharSet, int]]:
        """``(characters, target)`` per target of state ``q`` (only the states a mask visits ever need them)."""
        row = self._labels[q]
        if row is None:
            by_t: dict[int, list[tuple[int, int]]] = {}
            for lo, hi, t in self.trans[q]:
                by_t.setdefault(t, []).append((lo, hi))
            row = self._labels[q] = [(CharSet(rs), t) for t, rs in by_t.items()]
        return row

    def step(self, q: int, cp: int) -> int | None:
        i = bisect_right(self._starts[q], cp) - 1
        if i >= 0:
            lo, hi, t = self.trans[q][i]
            if cp <= hi:
                return t
        return None


def cheapest_to_targets(rev: list[list[tuple[int, int]]], targets: list[tuple[int, int]]) -> list:
    """Dijkstra on reversed edges: per state, the cheapest path to some target plus that target's own weight.

    ``rev[t]`` = ``(weight, s)`` for every edge ``s -> t``; ``targets`` = ``(weight, state)``; None where none is
    reachable.
    """
    dist: list = [None] * len(rev)
    heap = list(targets)
    heapq.heapify(heap)
    while heap:
        d, t = heapq.heappop(heap)
        if dist[t] is not None:
            continue
        dist[t] = d
        for w, s in rev[t]:
            if dist[s] is None:
                heapq.heappush(heap, (d + w, s))
    return dist


def dfa_accepts(dfa: DFA | None, text: str) -> bool:
    """Whether ``dfa`` (None: the empty language) accepts the whole of ``text``."""
    if dfa is None:
        return False
    q = 0
    for ch in text:
        q = dfa.step(q, ord(ch))
        if q is None:
            return False
    return dfa.accept[q]


def _closure(nfa: NFA, states) -> frozenset:
    seen = set(states)
    stack = list(states)
    while stack:
        s = stack.pop()
        for t in nfa.eps[s]:
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return frozenset(seen)


def _accept_all(nfa: NFA) -> tuple[frozenset, frozenset | None]:
    """``(core, canonical)``: states ``t`` from which every string is accepted, found as the loop of an implicit or
    written ``.*`` (an edge on every character from ``x`` to ``t``, with ``x`` and the accepting state both in the
    closure of ``t``), and the closure of one of them. Any state set that holds one of them accepts everything from
    there on, so subset construction may replace it by ``canonical``: an unanchored pattern's counters
    (``\\$\\w{1,255}`` in GitLab's schema) then stop multiplying states once the pattern has matched."""
    if nfa.accept_all is not None:
        return nfa.accept_all
    core = set()
    for x, edges in enumerate(nfa.edges):
        for cs, t in edges:
            if cs == UNIVERSE and t not in core:
                c = _closure(nfa, [t])
                if x in c and nfa.accept in c:
                    core.add(t)
    core_f = frozenset(core)
    canonical = _closure(nfa, [min(core)]) if core else None
    nfa.accept_all = (core_f, canonical)  # kept on the NFA: it lives as long as the NFA, computed once
    return nfa.accept_all


def build_dfa(nfas: list[NFA], path: str = "#", bound: int | None = None) -> DFA | None:
    """Determinise the intersection of ``nfas``; None if the intersection is empty.

    Refused above ``MAX_DFA_STATES`` states, or above ``bound`` when the caller knows the intersection cannot have
    more (one of the NFAs is a finite set of strings: one state per prefix), up to ``MAX_LITERAL_DFA_STATES``."""
    cap = MAX_DFA_STATES if bound is None else max(MAX_DFA_STATES, min(bound, MAX_LITERAL_DFA_STATES))
    sinks = [_accept_all(n) for n in nfas]

    def canon(k: int, states: frozenset) -> frozenset:
        core, canonical = sinks[k]
        return canonical if canonical is not None and not states.isdisjoint(core) else states

    start = tuple(canon(k, _closure(n, [n.start])) for k, n in enumerate(nfas))
    index = {start: 0}
    order = [start]
    trans: list[list[tuple[int, int, int]]] = []
    i = 0
    while i < len(order):
        cur = order[i]
        i += 1
        # A sweep over the edges' range ends: between two consecutive ends the same edges are active, so each
        # interval's successor comes from the active set (no membership test per interval and edge: a \\p{L}
        # class has hundreds of ranges), and a repeated active set reuses its successor.
        edges = []  # (component, target)
        events = []  # (code point, +1 an edge's range starts / -1 it ended before this point, edge index)
        for k, (nfa, sset) in enumerate(zip(nfas, cur)):
            for s in sset:
                for cs, t in nfa.edges[s]:
                    e = len(edges)
                    edges.append((k, t))
                    for lo, hi in cs.ranges:
                        events.append((lo, 1, e))
                        events.append((hi + 1, -1, e))
        events.sort()
        active: set[int] = set()
        seen: dict[frozenset, int | None] = {}
        row: list[tuple[int, int, int]] = []
        n_events = len(events)
        e_i = 0
        while e_i < n_events:
            a = events[e_i][0]
            while e_i < n_events and events[e_i][0] == a:
                _, kind, e = events[e_i]
                if kind > 0:
                    active.add(e)
                else:
                    active.discard(e)
                e_i += 1
            if e_i >= n_events or not active:
                continue
            b = events[e_i][0]  # the interval [a, b) has exactly the active edges
            targets = frozenset(edges[e] for e in active)
            if targets in seen:
                j = seen[targets]
            else:
                nxt: list[set] = [set() for _ in nfas]
                for k, t in targets:
                    nxt[k].add(t)
                j = None
                if all(nxt):
                    key = tuple(canon(k, _closure(nfa, ns)) for k, (nfa, ns) in enumerate(zip(nfas, nxt)))
                    j = index.get(key)
                    if j is None:
                        j = index[key] = len(order)
                        order.append(key)
                        if len(order) > cap:
                            raise UnsupportedSchemaError("pattern", path, f"automaton larger than {cap} states")
                seen[targets] = j
            if j is None:
                continue
            if row and row[-1][2] == j and row[-1][1] == a - 1:
                row[-1] = (row[-1][0], b - 1, j)
            else:
                row.append((a, b - 1, j))
        trans.append(row)
    accept = [all(n.accept in s for n, s in zip(nfas, st)) for st in order]
    return _prune(trans, accept)


def literal_set_dfa(strings, path: str = "#") -> DFA | None:
    """The DFA of a finite set of strings (None: the empty set), built as their trie: what :func:`build_dfa` gives
    for ``literal_set_nfa(strings)`` alone, state for state (breadth-first, children by code point), without the
    subset construction. A trie is already deterministic and every node leads to a string's end (nothing to prune);
    enums are the most common string automata of large schemas."""
    if not strings:
        return None
    children: list[dict[int, int]] = [{}]
    ends = [False]
    for text in strings:
        s = 0
        for ch in text:
            kids = children[s]
            s = kids.get(ord(ch))
            if s is None:
                s = kids[ord(ch)] = len(children)
                children.append({})
                ends.append(False)
        ends[s] = True
    if len(children) > MAX_LITERAL_DFA_STATES:  # build_dfa's cap for a finite set
        raise UnsupportedSchemaError("enum", path, f"automaton larger than {MAX_LITERAL_DFA_STATES} states")
    order = [0]
    index = {0: 0}
    for s in order:  # grows while it is read: breadth-first
        for cp in sorted(children[s]):
            index[children[s][cp]] = len(order)
            order.append(children[s][cp])
    trans = [[(cp, cp, index[children[s][cp]]) for cp in sorted(children[s])] for s in order]
    return DFA(trans, [ends[s] for s in order])


class StringAutomaton:
    """String constraint: optional DFA (None = any string) plus ``min_len <= length <= max_len`` (code points).

    States are ``(q, n)``: DFA state and length so far (saturated at ``min_len`` when there is no ``max_len``,
    since longer lengths are then indistinguishable). Costs are UTF-8 bytes *including the closing quote*.
    """

    def __init__(self, dfa: DFA | None, min_len: int = 0, max_len: int | None = None, path: str = "#") -> None:
        self.dfa = dfa
        self.min_len = min_len
        self.max_len = max_len
        self.path = path
        self._live: dict[tuple[int, int], bool] = {}
        self._allowed: dict[tuple[int, int], CharSet] = {}
        self._layers: list[int] | None = None
        self._cost: dict[tuple[int, int], int | None] | None = None
        self.sat = (max_len is None or min_len <= max_len) and self.live(0, 0)

    def norm(self, n: int) -> int:
        return min(n, self.min_len) if self.max_len is None else n

    # liveness --------------------------------------------------------------------------------------------
    def live(self, q: int, n: int) -> bool:
        if self.max_len is not None and (n > self.max_len or self.min_len > self.max_len):
            return False
        if self.dfa is None:
            return True
        key = (q, n)
        r = self._live.get(key)
        if r is None:
            r = self._live[key] = self._compute_live(q, n)
        return r

    def _compute_live(self, q: int, n: int) -> bool:
        dfa = self.dfa
        lo_k = max(0, self.min_len - n)
        hi_k = (self.max_len - n) if self.max_len is not None else lo_k + dfa.n
        if lo_k == 0 and dfa.accept[q]:
            return True
        if self.max_len is None and n >= self.min_len:
            return True  # pruned DFA: every state reaches acceptance
        layers = self._get_layers()
        bit = 1 << q
        return any(layers[k] & bit for k in range(lo_k, min(hi_k, len(layers) - 1) + 1))

    def _get_layers(self) -> list[int]:
        if self._layers is None:
            dfa = self.dfa
            bound = self.max_len if self.max_len is not None else self.min_len + dfa.n
            if bound * dfa.n > MAX_COST_TABLE:
                kw = "maxLength" if self.max_len is not None else "minLength"
                raise UnsupportedSchemaError(kw, self.path, "length bound too large in combination with a pattern")
            pred = [0] * dfa.n
            for q, row in enumerate(dfa.trans):
                for _, _, t in row:
                    pred[t] |= 1 << q
            layer = sum(1 << q for q in range(dfa.n) if dfa.accept[q])
            layers = [layer]
            for _ in range(bound):
                nxt = 0
                m = layer
                while m:
                    low = m & -m
                    nxt |= pred[low.bit_length() - 1]
                    m ^= low
                layer = nxt
                layers.append(layer)
            self._layers = layers
        return self._layers

    def can_end(self, q: int, n: int) -> bool:
        if n < self.min_len or (self.max_len is not None and n > self.max_len):
            return False
        return self.dfa is None or self.dfa.accept[q]

    def step(self, q: int, n: int, cp: int) -> tuple[int, int] | None:
        """Consume decoded code point ``cp``; None if that leaves no completion."""
        n1 = self.norm(n + 1)
        if self.dfa is None:
            return (0, n1) if self.live(0, n1) else None
        t = self.dfa.step(q, cp)
        if t is None or not self.live(t, n1):
            return None
        return (t, n1)

    def allowed(self, q: int, n: int) -> CharSet:
        """Decoded code points that keep the string completable."""
        key = (q, n)
        r = self._allowed.get(key)
        if r is None:
            n1 = self.norm(n + 1)
            if self.dfa is None:
                r = UNIVERSE if self.live(0, n1) else CharSet()
            else:
                acc = CharSet()
                for cs, t in self.dfa.labels(q):
                    if self.live(t, n1):
                        acc = acc | cs
                r = acc
            self._allowed[key] = r
        return r

    # costs ----------------------------------------------------------------------------------------------
    def cost(self, q: int, n: int) -> int | None:
        """Cheapest completion (bytes, closing quote included) from ``(q, n)``; None if there is none."""
        if not self.live(q, n):
            return None
        if self.dfa is None:
            return max(0, self.min_len - n) + 1
        if self._cost is None:
            self._cost = self._build_costs()
        return self._cost.get((q, self.norm(n)))

    def cost_after_range(self, q: int, n: int, lo: int, hi: int) -> int | None:
        """Cheapest completion after consuming *some* allowed code point in ``[lo, hi]``."""
        n1 = self.norm(n + 1)
        if self.dfa is None:
            if not UNIVERSE.intersects(lo, hi):
                return None
            return self.cost(0, n1)
        best = None
        for a, b, t in self.dfa.trans[q]:
            if b < lo or a > hi:
                continue
            c = self.cost(t, n1)
            if c is not None and (best is None or c < best):
                best = c
        return best

    def _build_costs(self) -> dict[tuple[int, int], int | None]:
        dfa = self.dfa
        L = self.max_len if self.max_len is not None else self.min_len
        if (L + 1) * dfa.n > MAX_COST_TABLE:
            kw = "maxLength" if self.max_len is not None else "minLength"
            raise UnsupportedSchemaError(kw, self.path, "length bound too large in combination with a pattern")
        table: dict[tuple[int, int], int | None] = {}
        if self.max_len is None:
            # n >= min_len: plain shortest path to an accepting state (Dijkstra on reversed edges)
            rev: list[list[tuple[int, int]]] = [[] for _ in range(dfa.n)]
            for q, row in enumerate(dfa.weights):
                for w, t in row:
                    rev[t].append((w, q))
            dist = cheapest_to_targets(rev, [(1, q) for q in range(dfa.n) if dfa.accept[q]])
            for q in range(dfa.n):
                table[(q, L)] = dist[q]
            top = L - 1
        else:
            for q in range(dfa.n):
                table[(q, L)] = 1 if dfa.accept[q] and self.min_len <= L else None
            top = L - 1
        for n in range(top, -1, -1):
            for q in range(dfa.n):
                best = 1 if (dfa.accept[q] and n >= self.min_len) else None
                for w, t in dfa.weights[q]:
                    c = table[(t, n + 1)]
                    if c is not None and (best is None or w + c < best):
                        best = w + c
                table[(q, n)] = best
        return table

    # the "string machine" protocol used by the lexer (see recogniser.py); ms = (q, n)
    def m_step(self, ms: tuple[int, int], cp: int):
        return self.step(ms[0], ms[1], cp)

    def m_allowed(self, ms: tuple[int, int]) -> CharSet:
        return self.allowed(ms[0], ms[1])

    def m_can_end(self, ms: tuple[int, int]) -> bool:
        return self.can_end(ms[0], ms[1])

    def m_cost(self, ms: tuple[int, int]) -> int | None:
        return self.cost(ms[0], ms[1])

    def m_cost_range(self, ms: tuple[int, int], lo: int, hi: int) -> int | None:
        return self.cost_after_range(ms[0], ms[1], lo, hi)


def complement_dfa(dfa: DFA | None) -> DFA | None:
    """The DFA of all strings *not* accepted by ``dfa`` (``None`` stands for the empty language)."""
    from .charset import UNIVERSE

    if dfa is None:
        n, trans, accept = 0, [], []
    else:
        n, trans, accept = dfa.n, dfa.trans, dfa.accept
    sink = n
    new_trans: list[list[tuple[int, int, int]]] = []
    for q in range(n):
        row = list(trans[q])
        covered = CharSet([(lo, hi) for lo, hi, _ in row])
        for lo, hi in (UNIVERSE - covered).ranges:
            row.append((lo, hi, sink))
        row.sort()
        new_trans.append(row)
    new_trans.append([(lo, hi, sink) for lo, hi in UNIVERSE.ranges])
    new_accept = [not a for a in accept] + [True]
    if n == 0:  # complement of the empty language: every string
        return DFA([[(lo, hi, 0) for lo, hi in UNIVERSE.ranges]], [True])
    return _prune(new_trans, new_accept)


def _prune(trans: list[list[tuple[int, int, int]]], accept: list[bool]) -> DFA | None:
    preds: list[set[int]] = [set() for _ in trans]
    for q, row in enumerate(trans):
        for _, _, t in row:
            preds[t].add(q)
    alive = {q for q, acc in enumerate(accept) if acc}
    stack = list(alive)
    while stack:
        t = stack.pop()
        for q in preds[t]:
            if q not in alive:
                alive.add(q)
                stack.append(q)
    if 0 not in alive:
        return None
    keep = sorted(alive)
    remap = {q: k for k, q in enumerate(keep)}
    return DFA([[(lo, hi, remap[t]) for lo, hi, t in trans[q] if t in remap] for q in keep], [accept[q] for q in keep])


MAX_UNROLLED_LENGTH = 256  # union_automata writes length bounds into the automaton, one state per length


def _length_nfa(lo: int, hi: int | None) -> NFA:
    """Strings of ``lo <= length <= hi`` code points (``hi`` None: no upper bound)."""
    nfa = NFA()
    top = lo if hi is None else hi
    states = [nfa.new() for _ in range(top + 1)]
    final = nfa.new()
    for i, q in enumerate(states):
        if i < top:
            nfa.edges[q].append((UNIVERSE, states[i + 1]))
        if i >= lo:
            nfa.eps[q].append(final)
    if hi is None:
        nfa.edges[states[top]].append((UNIVERSE, states[top]))
    nfa.start, nfa.accept = states[0], final
    return nfa


def union_automata(autos: list[StringAutomaton], path: str = "#") -> StringAutomaton | None:
    """One automaton for strings that meet any of ``autos`` (``propertyNames: {anyOf: [...]}``); None: no string.

    The union keeps one length counter: the loosest bounds of the parts (every part's strings lie within them).
    A part's own, tighter bounds are written into its DFA first (refused above ``MAX_UNROLLED_LENGTH``)."""
    lo = min(a.min_len for a in autos)
    hi = None if any(a.max_len is None for a in autos) else max(a.max_len for a in autos)
    parts: list[NFA] = []
    for a in autos:
        nfas = [dfa_to_nfa(a.dfa)] if a.dfa is not None else []
        own_lo = a.min_len if a.min_len > lo else 0
        own_hi = a.max_len if a.max_len != hi else None
        if own_lo or own_hi is not None:
            if max(own_lo, own_hi or 0) > MAX_UNROLLED_LENGTH:
                raise UnsupportedSchemaError(
                    "propertyNames", path, f"a union of string schemas with lengths past {MAX_UNROLLED_LENGTH}"
                )
            nfas.append(_length_nfa(own_lo, own_hi))
        if not nfas:
            return StringAutomaton(None, lo, hi, path)  # this part allows every string within the bounds
        dfa = build_dfa(nfas, path)
        if dfa is not None:
            parts.append(dfa_to_nfa(dfa))
    if not parts:
        return None
    union = NFA()
    union.start = union.new()
    union.accept = union.new()
    for part in parts:
        base = len(union.edges)
        for _ in part.edges:
            union.new()
        for q, (edges, eps) in enumerate(zip(part.edges, part.eps)):
            union.edges[base + q] = [(cs, base + t) for cs, t in edges]
            union.eps[base + q] = [base + t for t in eps]
        union.eps[union.start].append(base + part.start)
        union.eps[base + part.accept].append(union.accept)
    dfa = build_dfa([union], path)
    return None if dfa is None else StringAutomaton(dfa, lo, hi, path)


def dfa_to_nfa(dfa: DFA) -> NFA:
    """The same language as an :class:`~.regex.NFA` (to intersect it with others in :func:`build_dfa`)."""
    nfa = NFA()
    for _ in range(dfa.n):
        nfa.new()
    final = nfa.new()
    for q, row in enumerate(dfa.trans):
        for lo, hi, t in row:
            nfa.edges[q].append((CharSet([(lo, hi)]), t))
        if dfa.accept[q]:
            nfa.eps[q].append(final)
    nfa.start, nfa.accept = 0, final
    return nfa


def chars_by_cost(lo: int, hi: int):
    """``(json cost, code point)`` for every code point of ``[lo, hi]``, cheapest first."""
    segments = sorted((c, max(a, lo), min(b, hi)) for a, b, c in COST_BREAKS if not (b < lo or a > hi))
    for c, a, b in segments:
        cp = a
        while cp <= b:
            if SUR_LO <= cp <= SUR_HI:
                cp = SUR_HI + 1
                continue
            yield c, cp
            cp += 1


def cheapest_strings(start, prefix: str, transitions, dist, end_weight):
    """Yield ``(cost, text)`` for every completion of ``prefix`` (machine state ``start``), cheapest first.

    ``transitions(state)`` gives ``(lo, hi, target)``; ``dist(state)`` is the exact cheapest completion cost from a
    state (None: dead) and ``end_weight(state)`` the cost of ending there (None: cannot end). A* with ``dist`` as the
    heuristic: each text comes out once, in non-decreasing cost; a range is expanded one character at a time.
    """
    d0 = dist(start)
    if d0 is None:
        return
    tick = count()
    heap: list = [(d0, next(tick), 0, prefix, start, None, False)]
    while heap:
        f, _, g, text, state, chars, done = heapq.heappop(heap)
        if done:
            yield g, text
            continue
        if chars is None:
            w = end_weight(state)
            if w is not None:
                heapq.heappush(heap, (g + w, next(tick), g + w, text, state, None, True))
            for a, b, t in transitions(state):
                dt = dist(t)
                if dt is not None:
                    it = chars_by_cost(a, b)
                    c, cp = next(it)
                    heapq.heappush(heap, (g + c + dt, next(tick), g, text, t, (it, c, cp, dt), False))
            continue
        it, c, cp, dt = chars  # a cursor over one range: emit its next-cheapest character, then advance
        heapq.heappush(heap, (f, next(tick), g + c, text + chr(cp), state, None, False))
        nxt = next(it, None)
        if nxt is not None:
            heapq.heappush(heap, (g + nxt[0] + dt, next(tick), g, text, state, (it, nxt[0], nxt[1], dt), False))
