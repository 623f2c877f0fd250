"""A conservative prover that two merged schema nodes admit no common instance.

``oneOf`` means "exactly one branch"; the recogniser can only run it as ``anyOf``, which is exact when no
instance satisfies two branches. :func:`simples_disjoint` returns True only when that is *proved*:

* no JSON type in common (``integer`` counts as a ``number``), or for every common type:
* numbers: disjoint ranges, no common integer when one side is integer-only, or finite value sets that the
  other side rejects;
* strings: disjoint length ranges, or an empty intersection of the two automata under the common lengths, each
  pattern read as widely as either regex engine reads it (``Compiler.widest_strings``);
* booleans / null: no common value;
* arrays: disjoint item-count ranges, or disjoint item schemas at a position both sides require;
* objects: disjoint property-count ranges, or a name required by one side whose value schemas are disjoint
  (this includes a name the other side forbids), or non-empty objects where one side allows only its declared
  names and the other side's value schema is disjoint from its own for each of them.

Anything else counts as "maybe overlapping", and the compiler then refuses the ``oneOf``.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .automaton import DFA, StringAutomaton
from .errors import UnsupportedSchemaError

MAX_DEPTH = 6


def simples_disjoint(a, b, compiler, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if a.null and b.null:
        return False
    if a.bools & b.bools:
        return False
    if a.num is not None and b.num is not None and not _nums_disjoint(a.num, b.num):
        return False
    a_str, b_str = compiler.widest_strings(a), compiler.widest_strings(b)  # what either engine reads the patterns as
    if a_str is not None and b_str is not None and not _strs_disjoint(a_str, b_str):
        return False
    if a.arr is not None and b.arr is not None and not _arrs_disjoint(a.arr, b.arr, compiler, depth):
        return False
    return not (a.obj is not None and b.obj is not None and not _objs_disjoint(a.obj, b.obj, compiler, depth))


def alts_disjoint(x, y, compiler, depth: int) -> bool:
    xs, ys = _simples(x, compiler), _simples(y, compiler)
    if xs == () or ys == ():  # one side admits nothing (e.g. a name the other side forbids)
        return True
    if xs is None or ys is None:
        return False
    return all(simples_disjoint(a, b, compiler, depth + 1) for a in xs for b in ys)


def _simples(alt, compiler):
    """The alternatives of ``alt``, or None when they cannot be built yet (a reference back into the ``oneOf``
    being expanded): then nothing is proved, and the compiler builds that node later as usual."""
    try:
        resolved = compiler.resolved(alt)
    except UnsupportedSchemaError:
        return None
    return None if resolved.hidden else resolved.simples  # hidden: not provably empty (Alt.hidden)


def _nums_disjoint(a, b) -> bool:
    if a.values is not None:
        return not any(b.accepts_value(v) for v in a.values)
    if b.values is not None:
        return not any(a.accepts_value(v) for v in b.values)
    lo, lo_x = _max_lo((a.lo, a.lo_excl), (b.lo, b.lo_excl))
    hi, hi_x = _min_hi((a.hi, a.hi_excl), (b.hi, b.hi_excl))
    if lo is not None and hi is not None:
        if lo > hi or (lo == hi and (lo_x or hi_x)):
            return True
        if a.integer or b.integer:
            first = math.floor(Fraction(lo)) + 1 if lo_x else math.ceil(Fraction(lo))
            last = math.ceil(Fraction(hi)) - 1 if hi_x else math.floor(Fraction(hi))
            return first > last
    return False


def _max_lo(x, y):
    if x[0] is None:
        return y
    if y[0] is None:
        return x
    if x[0] > y[0] or (x[0] == y[0] and x[1]):
        return x
    return y


def _min_hi(x, y):
    if x[0] is None:
        return y
    if y[0] is None:
        return x
    if x[0] < y[0] or (x[0] == y[0] and x[1]):
        return x
    return y


def _strs_disjoint(a: StringAutomaton, b: StringAutomaton) -> bool:
    lo = max(a.min_len, b.min_len)
    his = [h for h in (a.max_len, b.max_len) if h is not None]
    hi = min(his) if his else None
    if hi is not None and lo > hi:
        return True
    if a.dfa is None and b.dfa is None:
        return False  # both unconstrained beyond the (overlapping) lengths
    dfa = _product(a.dfa, b.dfa)
    if dfa is None:  # empty intersection
        return True
    return not StringAutomaton(dfa, lo, hi).sat


def _product(x: DFA | None, y: DFA | None) -> DFA | None:
    """Intersection of two pruned DFAs (an argument None stands for "any string", not both); None if empty."""
    if x is None:
        return y
    if y is None:
        return x
    index = {(0, 0): 0}
    order = [(0, 0)]
    trans: list[list[tuple[int, int, int]]] = []
    i = 0
    while i < len(order):
        p, q = order[i]
        i += 1
        row = []
        for lo1, hi1, t1 in x.trans[p]:
            for lo2, hi2, t2 in y.trans[q]:
                lo, hi = max(lo1, lo2), min(hi1, hi2)
                if lo > hi:
                    continue
                k = index.get((t1, t2))
                if k is None:
                    k = index[(t1, t2)] = len(order)
                    order.append((t1, t2))
                    if len(order) > 20_000:
                        return x  # give up: treat as overlapping
                row.append((lo, hi, k))
        row.sort()
        trans.append(row)
    accept = [x.accept[p] and y.accept[q] for p, q in order]
    # prune to co-reachable states
    alive = {k for k, acc in enumerate(accept) if acc}
    preds: list[set[int]] = [set() for _ in order]
    for k, row in enumerate(trans):
        for _, _, t in row:
            preds[t].add(k)
    stack = list(alive)
    while stack:
        t = stack.pop()
        for k in preds[t]:
            if k not in alive:
                alive.add(k)
                stack.append(k)
    if 0 not in alive:
        return None
    keep = sorted(alive)
    remap = {k: j for j, k in enumerate(keep)}
    return DFA([[(lo, hi, remap[t]) for lo, hi, t in trans[k] if t in remap] for k in keep], [accept[k] for k in keep])


def _arrs_disjoint(a, b, compiler, depth: int) -> bool:
    lo = max(a.min_items, b.min_items)
    his = [h for h in (a.max_items, b.max_items) if h is not None]
    if his and lo > min(his):
        return True
    return any(alts_disjoint(a.alt_at(i), b.alt_at(i), compiler, depth) for i in range(lo))


def _objs_disjoint(a, b, compiler, depth: int) -> bool:
    lo = max(a.min_props, b.min_props)
    his = [h for h in (a.max_props, b.max_props) if h is not None]
    if his and lo > min(his):
        return True
    if any(alts_disjoint(a.value_alt(n), b.value_alt(n), compiler, depth) for n in sorted(a.required | b.required)):
        return True
    if max(a.min_props, b.min_props) >= 1:
        # a common instance has some name; if one side allows only finitely many names (declared ones, nothing
        # else), and for each of them the two sides' value schemas are disjoint, there is none
        for x, y in ((a, b), (b, a)):
            names = _only_names(x, compiler)
            if names is not None and all(alts_disjoint(x.value_alt(n), y.value_alt(n), compiler, depth) for n in names):
                return True
    return False


def _only_names(obj, compiler):
    """The names an object may have when it allows no undeclared name at all; None if it may have others."""
    keys = getattr(obj, "keys", None)  # patternProperties / propertyNames: schema/patternkeys.py
    # every class of undeclared names: those the key automaton generates, and those only a fed name reaches
    others = (
        [f for f in (*keys.final, *keys.by_class.values()) if f is not None] if keys is not None else [obj.additional]
    )
    if any(compiler.resolved(alt).simples or compiler.resolved(alt).hidden for alt in others):
        return None
    return obj.special
