"""JSON string lexing over a *string machine* that constrains the decoded content.

A string machine (``StringAutomaton`` for values, ``KeyMachine`` for object keys) works on decoded code points
and offers ``m_step``, ``m_allowed``, ``m_can_end``, ``m_cost`` and ``m_cost_range`` over its state ``ms``. This
module adds the JSON spelling on top: raw characters, the short escapes ``\\" \\\\ \\/ \\b \\f \\n \\r \\t``
and ``\\uXXXX`` (surrogate pairs for code points above U+FFFF; a lone surrogate escape is refused). The escape
sub-state ``esc`` is:

* ``0`` - ordinary content; ``1`` - after a backslash;
* ``(2, k, acc)`` - after ``\\u`` and ``k`` hex digits worth ``acc``;
* ``(3, hi)`` / ``(4, hi)`` - a high surrogate was read, expecting ``\\`` / ``u``;
* ``(5, hi, k, acc)`` - reading the low surrogate's hex digits.

Every function is exact with respect to the machine: a character is allowed iff the string can still be
completed, and costs are the cheapest completion in UTF-8 bytes (closing quote and, for keys, what follows).
"""

from __future__ import annotations

from .charset import EMPTY, CharSet

END = "end"
SIMPLE_ESCAPES = {
    ord('"'): 0x22,
    ord("\\"): 0x5C,
    ord("/"): 0x2F,
    ord("b"): 0x08,
    ord("f"): 0x0C,
    ord("n"): 0x0A,
    ord("r"): 0x0D,
    ord("t"): 0x09,
}
HEX = {ord(c): int(c, 16) for c in "0123456789abcdefABCDEF"}
SPECIAL = CharSet([(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])  # must be escaped inside a string
NOT_SPECIAL = SPECIAL.complement()
_RAW_CACHE: dict = {}
QUOTE = CharSet.of('"')
BACKSLASH = CharSet.of("\\")
HEX_CHARS = CharSet.of(*"0123456789abcdefABCDEF")
HI_LO, HI_HI, LO_LO, LO_HI = 0xD800, 0xDBFF, 0xDC00, 0xDFFF


def _bmp_parts(lo: int, hi: int) -> list[tuple[int, int]]:
    """``[lo, hi]`` without the surrogate block."""
    parts = []
    if lo < HI_LO:
        parts.append((lo, min(hi, HI_LO - 1)))
    if hi > LO_HI:
        parts.append((max(lo, LO_HI + 1), hi))
    return parts


def _supp_of_high(h1: int, h2: int) -> tuple[int, int]:
    """Supplementary code points whose high surrogate lies in ``[h1, h2]``."""
    return 0x10000 + ((h1 - HI_LO) << 10), 0x10000 + ((h2 - HI_LO) << 10) + 0x3FF


def _hex_interval(k: int, acc: int) -> tuple[int, int]:
    r = 4 - k
    return acc << (4 * r), ((acc + 1) << (4 * r)) - 1


def _u_viable(D: CharSet, k: int, acc: int) -> bool:
    lo, hi = _hex_interval(k, acc)
    if any(D.intersects(a, b) for a, b in _bmp_parts(lo, hi)):
        return True
    h1, h2 = max(lo, HI_LO), min(hi, HI_HI)
    return h1 <= h2 and D.intersects(*_supp_of_high(h1, h2))


def _low_range(hi_sur: int, k: int, acc: int) -> tuple[int, int] | None:
    lo, hi = _hex_interval(k, acc)
    lo, hi = max(lo, LO_LO), min(hi, LO_HI)
    if lo > hi:
        return None
    base = 0x10000 + ((hi_sur - HI_LO) << 10)
    return base + (lo - LO_LO), base + (hi - LO_LO)


def _feedable(m, ms):
    """Characters ``m`` accepts when fed (``m_feedable``, where a machine judges some text only when fed: names
    outside a generation alphabet, patternkeys.py), else its allowed set."""
    f = getattr(m, "m_feedable", None)
    return m.m_allowed(ms) if f is None else f(ms)


def lex_step(m, ms, esc, c: int):
    """Consume raw character ``c``: ``END`` (closing quote), ``(ms, esc)``, or None (rejected)."""
    if esc == 0:
        if c == 0x22:
            return END if m.m_can_end(ms) else None
        if c == 0x5C:
            return (ms, 1) if _feedable(m, ms) else None
        if c < 0x20:
            return None
        ms2 = m.m_step(ms, c)
        return None if ms2 is None else (ms2, 0)
    if esc == 1:
        if c == 0x75:  # 'u'
            return (ms, (2, 0, 0)) if _feedable(m, ms) else None
        cp = SIMPLE_ESCAPES.get(c)
        if cp is None:
            return None
        ms2 = m.m_step(ms, cp)
        return None if ms2 is None else (ms2, 0)
    tag = esc[0]
    if tag == 2:
        v = HEX.get(c)
        if v is None:
            return None
        k, acc = esc[1] + 1, esc[2] * 16 + v
        if k < 4:
            return (ms, (2, k, acc)) if _u_viable(_feedable(m, ms), k, acc) else None
        if HI_LO <= acc <= HI_HI:
            return (ms, (3, acc)) if _feedable(m, ms).intersects(*_supp_of_high(acc, acc)) else None
        if LO_LO <= acc <= LO_HI:
            return None
        ms2 = m.m_step(ms, acc)
        return None if ms2 is None else (ms2, 0)
    if tag == 3:
        return (ms, (4, esc[1])) if c == 0x5C else None
    if tag == 4:
        return (ms, (5, esc[1], 0, 0)) if c == 0x75 else None
    # tag == 5
    v = HEX.get(c)
    if v is None:
        return None
    k, acc = esc[2] + 1, esc[3] * 16 + v
    rng = _low_range(esc[1], k, acc)
    if rng is None or not _feedable(m, ms).intersects(*rng):
        return None
    if k < 4:
        return (ms, (5, esc[1], k, acc))
    ms2 = m.m_step(ms, rng[0])
    return None if ms2 is None else (ms2, 0)


def lex_allowed(m, ms, esc) -> CharSet:
    """Raw characters that keep the string completable."""
    D = m.m_allowed(ms)
    if esc == 0:
        key = (D, m.m_can_end(ms))
        out = _RAW_CACHE.get(key)
        if out is None:
            out = D & NOT_SPECIAL
            if D:
                out = out | BACKSLASH
            if key[1]:
                out = out | QUOTE
            if len(_RAW_CACHE) > 10_000:
                _RAW_CACHE.clear()
            _RAW_CACHE[key] = out
        return out
    if esc == 1:
        letters = [e for e, cp in SIMPLE_ESCAPES.items() if cp in D]
        if D:
            letters.append(0x75)
        return CharSet.of(*letters)
    tag = esc[0]
    if tag == 2:
        k, acc = esc[1] + 1, esc[2]
        return CharSet.of(*(h for h, v in HEX.items() if _u_viable(D, k, acc * 16 + v)))
    if tag == 3:
        return BACKSLASH
    if tag == 4:
        return CharSet.of("u")
    k, acc = esc[2] + 1, esc[3]
    out = []
    for h, v in HEX.items():
        rng = _low_range(esc[1], k, acc * 16 + v)
        if rng is not None and D.intersects(*rng):
            out.append(h)
    return CharSet.of(*out) if out else EMPTY


def _min(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


def lex_cost(m, ms, esc) -> int | None:
    """Cheapest completion in bytes from this lexer state (None: cannot complete)."""
    if esc == 0:
        return m.m_cost(ms)
    if esc == 1:
        best = None
        for cp in SIMPLE_ESCAPES.values():
            ms2 = m.m_step(ms, cp)
            if ms2 is not None:
                c = m.m_cost(ms2)
                if c is not None:
                    best = _min(best, 1 + c)
        u = _u_cost(m, ms, 0, 0)
        return _min(best, None if u is None else 1 + u)
    tag = esc[0]
    if tag == 2:
        return _u_cost(m, ms, esc[1], esc[2])
    if tag in (3, 4):
        rest = 6 if tag == 3 else 5
        c = m.m_cost_range(ms, *_supp_of_high(esc[1], esc[1]))
        return None if c is None else rest + c
    rng = _low_range(esc[1], esc[2], esc[3])
    if rng is None:
        return None
    c = m.m_cost_range(ms, *rng)
    return None if c is None else (4 - esc[2]) + c


def _u_cost(m, ms, k: int, acc: int) -> int | None:
    r = 4 - k
    lo, hi = _hex_interval(k, acc)
    best = None
    for a, b in _bmp_parts(lo, hi):
        c = m.m_cost_range(ms, a, b)
        if c is not None:
            best = _min(best, r + c)
    h1, h2 = max(lo, HI_LO), min(hi, HI_HI)
    if h1 <= h2:
        c = m.m_cost_range(ms, *_supp_of_high(h1, h2))
        if c is not None:
            best = _min(best, r + 6 + c)
    return best


def lex_cost_range(m, ms, esc, lo: int, hi: int) -> int | None:
    """Cheapest completion after a raw (non-ASCII) character in ``[lo, hi]``; only ordinary content allows one."""
    if esc != 0:
        return None
    return m.m_cost_range(ms, lo, hi)
