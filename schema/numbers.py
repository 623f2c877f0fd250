"""Numeric constraints: exact acceptance of a JSON number text, and completability of a number prefix.

Acceptance is exact with respect to what the reference validator sees: the text is parsed like ``json.loads``
(``int`` when there is no fraction/exponent, else ``float``), then ``type: integer`` (``1.0`` is an integer),
``minimum``/``maximum``/``exclusive*`` and ``enum``/``const`` values are compared with Python semantics.

Generation (the token mask) uses a conservative sub-grammar so that every prefix it allows can be finished: plain
decimal notation (no exponent), no fraction for integer-only schemas, and each constraint turned into inclusive
intervals on the exact decimal value such that any decimal inside parses (after float rounding) to a valid value
(excluded values cut out their whole rounding neighbourhood; non-integers stay small with few fraction digits).
:meth:`NumSpec.cost` answers "how many more characters at least" (None = dead end) for such a prefix by interval
arithmetic on :class:`fractions.Fraction`: a digit prefix ``n`` with ``j`` more integer digits covers
``[n*10^j, (n+1)*10^j)``, and ``k`` fraction digits give a grid of step ``10^-k``.
"""

from __future__ import annotations

import math
import struct
import sys
from fractions import Fraction

MAXD = Fraction(sys.float_info.max)
MIN_NORMAL = sys.float_info.min  # 2**-1022, the smallest normal double
INT_DIGIT_LIMIT = 4300  # CPython's default int max_str_digits: json.loads refuses longer integers
MAX_FRACTION_DIGITS = 1200
DIGITS = "0123456789"

Interval = tuple  # (lo: Fraction | None, hi: Fraction | None, mode), inclusive bounds
ANY, INT_ONLY, FRAC_ONLY = 0, 1, 2  # interval modes: which decimals count
# A non-integer decimal can still parse to an integer-valued float (1.0000000000000000001, or anything beyond
# 2**52). Generated non-integers therefore keep |x| < 2**32 and at most 6 fraction digits: the float spacing there
# is below 2**-20, so the nearest double of such a decimal is never an integer.
FRAC_ONLY_LIMIT = Fraction(2**32 - 1)
FRAC_ONLY_DIGITS = 6


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _next_up(f: float) -> float:
    """The next double above ``f`` by bit arithmetic (no floating-point operation: immune to flush-to-zero)."""
    if f == 0:
        return MIN_NORMAL
    (bits,) = struct.unpack("<q", struct.pack("<d", f))
    bits = bits + 1 if f > 0 else bits - 1
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def _next_down(f: float) -> float:
    return -_next_up(-f)


def _normal(f: float, up: bool) -> float:
    """``f`` if it is zero or a normal double, else the nearest of 0 / +-MIN_NORMAL in direction ``up``.

    The mask never relies on subnormal doubles: with flush-to-zero / denormals-are-zero enabled (as
    ``torch.set_flush_denormal(True)`` does) they parse and compare as 0.
    """
    (bits,) = struct.unpack("<q", struct.pack("<d", f))
    exponent = (bits >> 52) & 0x7FF
    if exponent != 0 or (bits & ((1 << 52) - 1)) == 0:
        return f  # normal, infinite or (signed) zero
    negative = bits < 0
    if up:
        return 0.0 if negative else MIN_NORMAL
    return -MIN_NORMAL if negative else 0.0


def _smallest_double_at_least(b, strict: bool) -> tuple[Fraction | None, bool]:
    """Lower bound for the mask: a normal double ``d`` with ``d >= b`` (``> b`` if strict); also int_only."""
    if isinstance(b, float):
        b = _normal(b, up=True) if b != 0 or strict else 0.0
    try:
        f = float(b)
    except OverflowError:
        f = math.inf if b > 0 else -math.inf
    if math.isinf(f):
        if f > 0:  # beyond every double: only integer texts can get there
            return Fraction(b) + (1 if strict else 0), True
        return -MAXD, False
    fr = Fraction(f)
    if fr < b or (strict and fr <= b):
        f = _normal(_next_up(f), up=True)
        if math.isinf(f):
            return Fraction(math.floor(b)) + 1, True
    return Fraction(f), False


def _largest_double_at_most(b, strict: bool) -> tuple[Fraction | None, bool]:
    lo, io = _smallest_double_at_least(-b, strict)
    return -lo, io


class NumSpec:
    """The number part of a merged schema node."""

    def __init__(
        self,
        integer: bool = False,
        lo=None,
        lo_excl: bool = False,
        hi=None,
        hi_excl: bool = False,
        values: tuple | None = None,
        frac_only: bool = False,
        excluded: tuple = (),
        multiples: tuple = (),
    ) -> None:
        self.integer = integer
        self.frac_only = frac_only and not integer
        self.multiples = tuple(multiples)
        # Generation writes only integers that are multiples of ``modulus`` (see _generation_modulus); with a float
        # divisor they stay within 2**53, where the validator's float division is exact.
        self.modulus, self.modulus_cap = _generation_modulus(self.multiples)
        self.lo, self.lo_excl, self.hi, self.hi_excl = lo, lo_excl, hi, hi_excl
        self.excluded = tuple(v for v in excluded if _is_num(v))
        self.values = None
        if values is not None:
            values = tuple(v for v in values if self.accepts_value(v))
        self.values = values
        self.intervals = self._mask_intervals()
        self.unbounded = (
            values is None and lo is None and hi is None and not self.excluded and not self.frac_only and not multiples
        )
        self._cost: dict = {}

    def without(self, values: tuple) -> NumSpec:
        """The same constraints with ``values`` excluded as well (``uniqueItems``: the numbers already written)."""
        return NumSpec(
            integer=self.integer,
            lo=self.lo,
            lo_excl=self.lo_excl,
            hi=self.hi,
            hi_excl=self.hi_excl,
            values=self.values,
            frac_only=self.frac_only,
            excluded=self.excluded + tuple(values),
            multiples=self.multiples,
        )

    # exact semantics -------------------------------------------------------------------------------------
    def accepts_value(self, x) -> bool:
        """Whether the Python number ``x`` (as ``json.loads`` returns it) satisfies the constraints."""
        is_int = isinstance(x, int) or (isinstance(x, float) and x.is_integer())
        if (self.integer and not is_int) or (self.frac_only and is_int):
            return False
        if any(x == v for v in self.excluded):
            return False
        if self.lo is not None and not (x > self.lo if self.lo_excl else x >= self.lo):
            return False
        if self.hi is not None and not (x < self.hi if self.hi_excl else x <= self.hi):
            return False
        if not all(_is_multiple(x, d) for d in self.multiples):
            return False
        return not (self.values is not None and not any(x == v for v in self.values))

    def accepts_text(self, text: str) -> bool:
        try:
            x = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            return False
        return self.accepts_value(x)

    # conservative mask intervals ------------------------------------------------------------------------
    def _mask_intervals(self) -> list[Interval]:
        if self.frac_only and self.modulus is not None:
            return []  # generation writes integer multiples only: none is a non-integer
        lo = hi = None
        io = self.integer or self.modulus is not None
        if self.lo is not None:
            lo, i1 = _smallest_double_at_least(self.lo, self.lo_excl)
            io = io or i1
        if self.hi is not None:
            hi, i2 = _largest_double_at_most(self.hi, self.hi_excl)
            io = io or i2
        if self.modulus_cap is not None:
            cap = Fraction(self.modulus_cap)
            lo = -cap if lo is None else max(lo, -cap)
            hi = cap if hi is None else min(hi, cap)
        if io:
            lo = None if lo is None else Fraction(math.ceil(lo))
            hi = None if hi is None else Fraction(math.floor(hi))
        if lo is not None and hi is not None and lo > hi:
            return []
        mode = INT_ONLY if io else (FRAC_ONLY if self.frac_only else ANY)
        if mode == FRAC_ONLY:  # see FRAC_ONLY_LIMIT: keep generated non-integers far from float rounding
            lo = -FRAC_ONLY_LIMIT if lo is None else max(lo, -FRAC_ONLY_LIMIT)
            hi = FRAC_ONLY_LIMIT if hi is None else min(hi, FRAC_ONLY_LIMIT)
            if lo > hi:
                return []
        if self.values is None:
            out = [(lo, hi, mode)]
        else:
            out = []
            for v in self.values:
                if isinstance(v, int) or (v.is_integer() and abs(v) <= 2**53):
                    p = Fraction(v)
                    out.append((p, p, INT_ONLY if isinstance(v, int) and abs(v) > 2**53 else ANY))
                else:  # any decimal strictly inside the rounding interval of v parses to v
                    fv = Fraction(v)
                    down = Fraction(_normal(_next_down(v), up=False))
                    up = Fraction(_normal(_next_up(v), up=True))
                    a, b = (down + fv) / 2, (fv + up) / 2
                    eps = (b - a) / 2**20
                    out.append((a + eps, b - eps, ANY))
        for v in self.excluded:  # cut out every decimal that could parse to an excluded value
            cut = []
            for a, b, m in out:
                fv = Fraction(v)
                if (a is not None and fv < a) or (b is not None and fv > b):
                    cut.append((a, b, m))
                    continue
                if m == INT_ONLY:
                    if fv.denominator != 1:
                        cut.append((a, b, m))
                        continue
                    below, above = fv - 1, fv + 1
                else:
                    below = Fraction(_normal(_next_down(float(v)), up=False))
                    above = Fraction(_normal(_next_up(float(v)), up=True))
                if a is None or a <= below:
                    cut.append((a, below, m))
                if b is None or above <= b:
                    cut.append((above, b, m))
            out = cut
        return out

    # prefix cost ----------------------------------------------------------------------------------------
    def cost(self, neg: bool | None, int_part: str, frac: str | None) -> int | None:
        """Fewest characters that complete the prefix to a value the mask accepts; None if impossible.

        ``neg`` is None before anything was written, ``int_part``/``frac`` the digits so far (``frac`` None
        before the decimal point).
        """
        key = (neg, int_part, frac)
        if key in self._cost:
            return self._cost[key]
        if self.unbounded and not self.integer:
            r = 1 if (neg is None or int_part == "" or frac == "") else 0
            if neg is None:
                r = 1
        elif neg is None:
            pos = self._mag_cost(self._mags(False), "", None)
            negc = self._mag_cost(self._mags(True), "", None)
            r = _min(pos, None if negc is None else negc + 1)
        else:
            r = self._mag_cost(self._mags(neg), int_part, frac)
        if len(self._cost) > 100_000:
            self._cost.clear()
        self._cost[key] = r
        return r

    def _mags(self, neg: bool) -> list[Interval]:
        out = []
        for lo, hi, mode in self.intervals:
            if not neg:
                a = max(lo, 0) if lo is not None else Fraction(0)
                b = hi
            else:
                a = max(-hi, 0) if hi is not None else Fraction(0)
                b = -lo if lo is not None else None
            if b is not None and (b < 0 or a > b):
                continue
            out.append((Fraction(a), b, mode))
        return out

    def _mag_cost(self, mags: list[Interval], ip: str, fr: str | None) -> int | None:
        best = None
        for a, b, mode in mags:
            # enum values were checked exactly (accepts_value): the generation modulus is for ranges only
            modulus = (self.modulus or 1) if self.values is None else 1
            best = _min(best, _interval_cost(a, b, mode, ip, fr, best, modulus))
        return best


def _min(x, y):
    if x is None:
        return y
    if y is None:
        return x
    return x if x <= y else y


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def _grid(
    lo: Fraction, b: Fraction | None, hi_excl: Fraction, k0: int, limit: int | None, nonint: bool = False
) -> int | None:
    """Fewest fraction digits ``k >= k0`` such that some multiple of ``10^-k`` lies in ``[lo, min(b, hi_excl))``
    (and, with ``nonint``, is not an integer).

    ``limit`` caps ``k`` (None: up to ``k0 + MAX_FRACTION_DIGITS``).
    """
    if (b is not None and lo > b) or lo >= hi_excl:
        return None
    k = k0
    stop = k0 + MAX_FRACTION_DIGITS
    if limit is not None:
        stop = min(stop, limit)
    while k <= stop:
        scale = 10**k
        p = _ceil(lo * scale)
        upper = _ceil(hi_excl * scale) - 1
        if b is not None:
            upper = min(upper, _floor(b * scale))
        if p <= upper and (not nonint or (k > 0 and (p % scale != 0 or p + 1 <= upper))):
            return k
        k += 1
        if nonint and k > FRAC_ONLY_DIGITS:
            break
    return None


def _interval_cost(
    a: Fraction, b: Fraction | None, mode: int, ip: str, fr: str | None, bound, modulus: int = 1
) -> int | None:
    """Shortest completion of magnitude text ``ip[.fr]`` to a value in ``[a, b]`` (``b`` None: unbounded); with a
    ``modulus`` (INT_ONLY intervals only), to an integer multiple of it."""
    io = mode == INT_ONLY
    nonint = mode == FRAC_ONLY
    if ip == "":
        best = None
        for d in DIGITS:
            c = _interval_cost(a, b, mode, d, None, None if best is None else best - 1, modulus)
            if c is not None:
                best = _min(best, c + 1)
        return best
    if fr is not None:
        if io:
            return None
        s0 = len(fr)
        v0 = Fraction(int(ip + fr), 10**s0)
        s = _grid(max(a, v0), b, v0 + Fraction(1, 10**s0), s0 + (1 if fr == "" else 0), None, nonint)
        return None if s is None else s - s0
    n = int(ip)
    best = 0 if (not nonint and a <= n and (b is None or n <= b) and n % modulus == 0) else None
    if best == 0:
        return 0
    if bound is not None and bound < 1:
        return None
    if ip == "0":
        if io:
            return best
        k = _grid(a, b, Fraction(1), 1, None, nonint)
        return _min(best, None if k is None else 1 + k)
    j = 0
    a_int = _ceil(a)
    b_int = None if b is None else _floor(b)
    while len(ip) + j <= INT_DIGIT_LIMIT:
        scale = 10**j
        lo_j = n * scale
        if b is not None and lo_j > b:
            break
        if best is not None and j >= best:
            break
        if bound is not None and j > bound:
            break
        hi_excl = (n + 1) * scale
        if j > 0 and not nonint:  # integer option: j more digits
            lo_i, hi_i = max(lo_j, a_int), hi_excl - 1
            if b_int is not None:
                hi_i = min(hi_i, b_int)
            if -(-lo_i // modulus) * modulus <= hi_i:  # the first multiple of the modulus from lo_i
                best = _min(best, j)
                break
        if not io and (best is None or j + 2 < best):
            lim = None if best is None else best - j - 2
            k = _grid(max(a, Fraction(lo_j)), b, Fraction(hi_excl), 1, lim, nonint)
            if k is not None:
                best = _min(best, j + 1 + k)
        j += 1
    return best


def _is_multiple(x, d) -> bool:
    """``multipleOf: d`` exactly as the reference validator (``jsonschema``) decides it, float arithmetic included."""
    if isinstance(d, float):
        try:
            quotient = x / d
        except OverflowError:
            return False  # an integer too large for a float: the validator itself raises there
        try:
            return int(quotient) == quotient
        except OverflowError:
            return (Fraction(x) / Fraction(d)).denominator == 1
    return not (x % d)


def _generation_modulus(multiples: tuple) -> tuple[int | None, int | None]:
    """``(M, cap)``: generated numbers are the integers that are multiples of ``M`` (and at most ``cap`` in
    magnitude). An integer divisor ``d`` gives ``d``. A float divisor is exactly ``p / 2**e``, and for an integer
    ``x = k * p`` with ``|x| <= 2**53`` the validator's ``x / d`` is exactly ``k * 2**e``: an integer, so ``M`` is
    ``p``. Several divisors: the least common multiple."""
    if not multiples:
        return None, None
    modulus, cap = 1, None
    for d in multiples:
        if isinstance(d, float):
            p = Fraction(d).numerator
            cap = 2**53
        else:
            p = d
        modulus = modulus * p // math.gcd(modulus, p)
    return modulus, cap


def is_number_char(c: str) -> bool:
    return c in DIGITS or c in "-+.eE"
