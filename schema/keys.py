"""The string machine for object keys: which property name may be written next.

Given an object node and the names already written (``seen``), a name is *admissible* if writing it keeps the
object completable:

* a declared, required or dependency-related name (see ``ObjSpec.special``) when its value schema is
  satisfiable and the object can still be closed afterwards (``required``, ``dependentRequired`` and
  ``maxProperties`` all taken into account, see ``ObjSpec.admissible``);
* any other (*fresh*) name likewise, with the ``additionalProperties`` schema;
* a name already written never is (duplicate keys are refused: the parsed object would silently drop one).

The machine state is the decoded key prefix. Costs include the rest of the object: the closing quote, the
colon, the value's shortest instance and the cheapest way to close the object afterwards.
"""

from __future__ import annotations

from bisect import bisect_left

from .charset import SUR_HI, SUR_LO, UNIVERSE, CharSet, json_char_cost
from .compiler import fresh_names


def with_prefix(names: tuple[str, ...], p: str):
    """The names of the sorted tuple ``names`` that start with ``p``."""
    i = bisect_left(names, p)
    while i < len(names) and names[i].startswith(p):
        yield names[i]
        i += 1


def next_chars(names: tuple[str, ...], p: str) -> set[int]:
    """Code points ``c`` for which ``p + c`` starts one of the sorted ``names``."""
    return {ord(n[len(p)]) for n in with_prefix(names, p) if len(n) > len(p)}


def entry_tail(spec, seen: frozenset, name: str) -> int | None:
    """Closing quote + colon + value + rest of the object, once ``name`` is fully written after ``seen``."""
    t = spec.value_tail(seen, name)
    return None if t is None else 2 + t


class KeyMachine:
    __slots__ = ("spec", "seen", "ok", "ok_set", "free", "_cost", "_allowed", "_generic", "_names")

    def __init__(self, spec, seen: frozenset) -> None:
        self.spec = spec
        self.seen = seen
        names = {n for n in spec.special if spec.admissible(seen, n)}
        self.ok = tuple(sorted(names))
        self.ok_set = frozenset(names)
        rep = next(iter(fresh_names(frozenset(spec.special) | seen, 1)))
        self.free = spec.admissible(seen, rep)
        self._cost: dict[str, int | None] = {}
        self._allowed: dict[str, CharSet] = {}
        self._generic: dict[str, int | None] = {}
        self._names = tuple(sorted(set(spec.special) | seen))  # names that make a prefix "special"

    def possible(self) -> bool:
        """Whether some key can be started at all."""
        return bool(self.ok) or self.free

    def _fresh(self, name: str) -> bool:
        return self.free and self.spec.is_fresh(name, self.seen)

    def _with_prefix(self, p: str):
        return with_prefix(self.ok, p)

    # string-machine protocol ------------------------------------------------------------------------
    def m_step(self, p: str, cp: int) -> str | None:
        p2 = p + chr(cp)
        if self.free:
            return p2
        for _ in self._with_prefix(p2):
            return p2
        return None

    def m_allowed(self, p: str) -> CharSet:
        r = self._allowed.get(p)
        if r is None:
            if self.free:
                r = UNIVERSE
            else:
                r = CharSet.of(*{ord(n[len(p)]) for n in self._with_prefix(p) if len(n) > len(p)})
            self._allowed[p] = r
        return r

    def m_can_end(self, p: str) -> bool:
        return p in self.ok_set or self._fresh(p)

    def _entry_tail(self, name: str) -> int | None:
        return entry_tail(self.spec, self.seen, name)

    def m_cost(self, p: str) -> int | None:
        if p in self._cost:
            return self._cost[p]
        best = None
        for n in self._with_prefix(p):
            t = self._entry_tail(n)
            if t is not None:
                c = sum(json_char_cost(ord(ch)) for ch in n[len(p) :]) + t
                best = c if best is None or c < best else best
        if self.free:
            if self._fresh(p):
                t = self._entry_tail(p)
            else:
                t = None
                for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
                    if self._fresh(p + ch):
                        t0 = self._entry_tail(p + ch)
                        t = None if t0 is None else 1 + t0
                        break
            if t is not None and (best is None or t < best):
                best = t
        self._cost[p] = best
        return best

    def special_next(self, p: str) -> set[int]:
        """Code points ``c`` for which ``p + c`` starts some declared, required or written name."""
        return next_chars(self._names, p)

    def generic_cost(self, p: str) -> int | None:
        """``m_cost(p + c)`` for any character ``c`` outside :meth:`special_next` (a fresh name), free mode."""
        if p in self._generic:
            return self._generic[p]
        r = None
        if self.free:
            special = self.special_next(p)
            for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
                if ord(ch) not in special:
                    r = self.m_cost(p + ch)
                    break
        self._generic[p] = r
        return r

    def m_cost_range(self, p: str, lo: int, hi: int) -> int | None:
        best = None
        special = self.special_next(p)
        n_special = 0
        for c in special:
            if lo <= c <= hi:
                n_special += 1
                cost = self.m_cost(p + chr(c))
                if cost is not None and (best is None or cost < best):
                    best = cost
        if self.free:
            size = hi - lo + 1 - max(0, min(hi, SUR_HI) - max(lo, SUR_LO) + 1)
            if size > n_special:
                g = self.generic_cost(p)
                if g is not None and (best is None or g < best):
                    best = g
        return best
