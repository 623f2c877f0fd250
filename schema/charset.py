"""Sets of Unicode code points as sorted disjoint ranges, and the UTF-8 arithmetic the recogniser needs.

Code points are ints. The universe is every Unicode scalar value (``0..0x10FFFF`` without the surrogates
``0xD800..0xDFFF``): JSON text that is valid UTF-8 can never contain a raw surrogate, and escaped surrogates are
only accepted in pairs (see :mod:`.lexer`).

UTF-8 preserves code point order, so the code points whose encoding starts with a given byte prefix form one
interval; :func:`utf8_prefix_interval` computes it and :func:`allowed_bytes` turns a :class:`CharSet` into the
set of next bytes (a 256-bit int) that can still complete to an allowed character.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from functools import lru_cache

MAX_CP = 0x10FFFF
SUR_LO, SUR_HI = 0xD800, 0xDFFF
WS_CODES = (0x20, 0x09, 0x0A, 0x0D)  # JSON insignificant whitespace
WS_BITS = sum(1 << c for c in WS_CODES)


class CharSet:
    """An immutable, hashable set of code points stored as sorted, disjoint, non-adjacent ``(lo, hi)`` ranges."""

    __slots__ = ("ranges", "_hash", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        rs = sorted((int(a), int(b)) for a, b in ranges if a <= b)
        merged: list[tuple[int, int]] = []
        for a, b in rs:
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        self.ranges: tuple[tuple[int, int], ...] = tuple(merged)
        self._hash = hash(self.ranges)
        self._starts = [a for a, _ in merged]

    @classmethod
    def _normalized(cls, ranges: tuple[tuple[int, int], ...]) -> CharSet:
        """Build from ranges that are already sorted, disjoint and non-adjacent (no re-normalisation)."""
        cs = cls.__new__(cls)
        cs.ranges = ranges
        cs._hash = hash(ranges)
        cs._starts = [a for a, _ in ranges]
        return cs

    # construction helpers -------------------------------------------------------------------------------
    @classmethod
    def of(cls, *chars: str | int) -> CharSet:
        cps = [c if isinstance(c, int) else ord(c) for c in chars]
        return cls((c, c) for c in cps)

    @classmethod
    def span(cls, lo: str | int, hi: str | int) -> CharSet:
        lo = lo if isinstance(lo, int) else ord(lo)
        hi = hi if isinstance(hi, int) else ord(hi)
        return cls([(lo, hi)])

    # set algebra ----------------------------------------------------------------------------------------
    def __or__(self, other: CharSet) -> CharSet:
        if not other.ranges:
            return self
        if not self.ranges:
            return other
        return CharSet(self.ranges + other.ranges)

    def __and__(self, other: CharSet) -> CharSet:
        out = []
        i = j = 0
        a, b = self.ranges, other.ranges
        while i < len(a) and j < len(b):
            lo = max(a[i][0], b[j][0])
            hi = min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return CharSet._normalized(tuple(out))

    def complement(self) -> CharSet:
        """Complement within the Unicode scalar values (surrogates are never members)."""
        out = []
        prev = 0
        for a, b in self.ranges:
            if a > prev:
                out.append((prev, a - 1))
            prev = b + 1
        if prev <= MAX_CP:
            out.append((prev, MAX_CP))
        return CharSet(out) & UNIVERSE

    def __sub__(self, other: CharSet) -> CharSet:
        return self & other.complement()

    # queries --------------------------------------------------------------------------------------------
    def __contains__(self, cp: int | str) -> bool:
        if isinstance(cp, str):
            cp = ord(cp)
        i = bisect_right(self._starts, cp) - 1
        return i >= 0 and cp <= self.ranges[i][1]

    def intersects(self, lo: int, hi: int) -> bool:
        """Whether some member lies in ``[lo, hi]``."""
        i = bisect_right(self._starts, hi) - 1
        return i >= 0 and self.ranges[i][1] >= lo

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharSet) and self.ranges == other.ranges

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        def fmt(c: int) -> str:
            return repr(chr(c)) if 0x20 < c < 0x7F else hex(c)

        return "CharSet(" + ", ".join(fmt(a) if a == b else f"{fmt(a)}-{fmt(b)}" for a, b in self.ranges) + ")"

    def min(self) -> int:
        return self.ranges[0][0]

    def size(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)


EMPTY = CharSet()
UNIVERSE = CharSet([(0, SUR_LO - 1), (SUR_HI + 1, MAX_CP)])
WS = CharSet.of(*WS_CODES)


# ---------------------------------------------------------------------------------------------------------
# UTF-8


def utf8_len(cp: int) -> int:
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def utf8_needed(lead: int) -> int:
    """Total length of a sequence that starts with ``lead`` (0 if ``lead`` can never start one)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


_VALID_BY_LEN = {1: (0, 0x7F), 2: (0x80, 0x7FF), 3: (0x800, 0xFFFF), 4: (0x10000, MAX_CP)}


_PREFIX_CACHE: dict[bytes, tuple[int, int] | None] = {}


def utf8_prefix_interval(prefix: bytes) -> tuple[int, int] | None:
    """The interval of scalar values whose UTF-8 encoding starts with ``prefix`` (None if there is none)."""
    try:
        return _PREFIX_CACHE[prefix]
    except KeyError:
        pass
    r = _prefix_interval(prefix)
    if len(_PREFIX_CACHE) < 1 << 20:
        _PREFIX_CACHE[prefix] = r
    return r


def _prefix_interval(prefix: bytes) -> tuple[int, int] | None:
    n = utf8_needed(prefix[0])
    if n == 0 or len(prefix) > n or any(not 0x80 <= b <= 0xBF for b in prefix[1:]):
        return None
    lo_b = prefix + b"\x80" * (n - len(prefix))
    hi_b = prefix + b"\xbf" * (n - len(prefix))

    def raw(bs: bytes) -> int:
        if n == 1:
            return bs[0]
        cp = bs[0] & (0xFF >> (n + 1))
        for b in bs[1:]:
            cp = (cp << 6) | (b & 0x3F)
        return cp

    vlo, vhi = _VALID_BY_LEN[n]
    lo, hi = max(raw(lo_b), vlo), min(raw(hi_b), vhi)
    if n == 3:  # carve out the surrogates
        if lo >= SUR_LO and hi <= SUR_HI:
            return None
        if SUR_LO <= lo <= SUR_HI:
            lo = SUR_HI + 1
        if SUR_LO <= hi <= SUR_HI:
            hi = SUR_LO - 1
    return (lo, hi) if lo <= hi else None


_LEAD_INTERVALS = [(b, utf8_prefix_interval(bytes([b]))) for b in range(0x80, 0x100)]


def allowed_bytes(cs: CharSet, pending: bytes = b"") -> int:
    """Bitmask over byte values: which next byte keeps a path to some character of ``cs``.

    ``pending`` holds the bytes already emitted of an incomplete multi-byte character.
    """
    return _allowed_bytes(cs, pending)


@lru_cache(maxsize=65536)
def _allowed_bytes(cs: CharSet, pending: bytes) -> int:
    bits = 0
    if not pending:
        for a, b in cs.ranges:
            if a >= 0x80:
                break
            for c in range(a, min(b, 0x7F) + 1):
                bits |= 1 << c
        if cs.ranges and cs.ranges[-1][1] >= 0x80:
            for byte, iv in _LEAD_INTERVALS:
                if iv is not None and cs.intersects(*iv):
                    bits |= 1 << byte
        return bits
    for byte in range(0x80, 0xC0):
        iv = utf8_prefix_interval(pending + bytes([byte]))
        if iv is not None and cs.intersects(*iv):
            bits |= 1 << byte
    return bits


# ---------------------------------------------------------------------------------------------------------
# cost (in UTF-8 bytes) of writing a code point inside a JSON string

_SHORT_ESCAPES = {0x22: '"', 0x5C: "\\", 0x2F: "/", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}


def json_char_cost(cp: int) -> int:
    """Bytes needed for ``cp`` inside a JSON string, in its cheapest form (raw or escaped)."""
    if cp == 0x22 or cp == 0x5C:
        return 2
    if cp < 0x20:
        return 2 if cp in _SHORT_ESCAPES else 6
    return utf8_len(cp)


COST_BREAKS = [  # (lo, hi, cost) in increasing cp order
    (0x00, 0x07, 6),
    (0x08, 0x08, 2),
    (0x09, 0x0A, 2),
    (0x0B, 0x0B, 6),
    (0x0C, 0x0D, 2),
    (0x0E, 0x1F, 6),
    (0x20, 0x21, 1),
    (0x22, 0x22, 2),
    (0x23, 0x5B, 1),
    (0x5C, 0x5C, 2),
    (0x5D, 0x7F, 1),
    (0x80, 0x7FF, 2),
    (0x800, 0xFFFF, 3),
    (0x10000, MAX_CP, 4),
]


def min_json_cost(lo: int, hi: int) -> tuple[int, int] | None:
    """Cheapest code point in ``[lo, hi]`` to write inside a JSON string: ``(cost, cp)``, or None if empty."""
    if lo == hi and 0x20 <= lo <= 0x7F and lo != 0x22 and lo != 0x5C:  # one plain ASCII character (an enum's edge)
        return (1, lo)
    best = None
    for a, b, c in COST_BREAKS:
        if b < lo or a > hi:
            continue
        cp = max(a, lo)
        if SUR_LO <= cp <= SUR_HI:
            cp = SUR_HI + 1
            if cp > min(b, hi):
                continue
        if best is None or c < best[0]:
            best = (c, cp)
    return best


def json_escape_char(cp: int) -> str:
    """The cheapest JSON spelling of ``cp`` inside a string."""
    if cp in _SHORT_ESCAPES:
        return "\\" + _SHORT_ESCAPES[cp] if cp != 0x2F else "/"
    if cp < 0x20:
        return f"\\u{cp:04x}"
    return chr(cp)
