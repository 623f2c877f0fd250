"""Unicode general categories for ``\\p{..}`` / ``\\P{..}`` in patterns (ECMA-262 with the ``u`` flag).

Python's :mod:`re` has no ``\\p``; an ECMA-262 engine reads ``\\p{Cc}`` as "any code point of general category
Cc" under the Unicode version it was built with. Categories move between versions (U+0295 was ``Ll`` in Unicode 14
and is ``Lo`` since 16; unassigned ``Cn`` code points become letters, marks ...). So each category has two sets
(:func:`category_bounds`): the *lower* one holds a code point only when both Python's :mod:`unicodedata` and the
``regex`` module (a dependency of open_clip; its tables follow newer Unicode versions) put it in the category, never
``Cn``; the *upper* one holds the category's ASCII characters and every non-ASCII code point. A pattern is
built on the lower sets where it must match and on the upper ones where it must not (:mod:`.regex`), so whatever
version an engine has, its verdict agrees with ours wherever ours accepts.

Accepted names: every general category, short or long (``L``, ``Letter``, ``Lu``, ``Uppercase_Letter``, ``LC``,
``Cased_Letter`` ...), alone or as ``gc=..`` / ``General_Category=..``, plus ``Any``, ``ASCII`` and ``Assigned``.
Scripts and other binary properties are not supported (the caller fails closed).
"""

from __future__ import annotations

import functools
import unicodedata

from .charset import EMPTY, UNIVERSE, CharSet

_LONG = {
    "Letter": "L", "Cased_Letter": "LC", "Uppercase_Letter": "Lu", "Lowercase_Letter": "Ll", "Titlecase_Letter": "Lt",
    "Modifier_Letter": "Lm", "Other_Letter": "Lo", "Mark": "M", "Combining_Mark": "M", "Nonspacing_Mark": "Mn",
    "Spacing_Mark": "Mc", "Enclosing_Mark": "Me", "Number": "N", "Decimal_Number": "Nd", "digit": "Nd",
    "Letter_Number": "Nl", "Other_Number": "No", "Punctuation": "P", "punct": "P", "Connector_Punctuation": "Pc",
    "Dash_Punctuation": "Pd", "Open_Punctuation": "Ps", "Close_Punctuation": "Pe", "Initial_Punctuation": "Pi",
    "Final_Punctuation": "Pf", "Other_Punctuation": "Po", "Symbol": "S", "Math_Symbol": "Sm",
    "Currency_Symbol": "Sc", "Modifier_Symbol": "Sk", "Other_Symbol": "So", "Separator": "Z", "Space_Separator": "Zs",
    "Line_Separator": "Zl", "Paragraph_Separator": "Zp", "Other": "C", "Control": "Cc", "cntrl": "Cc",
    "Format": "Cf", "Surrogate": "Cs", "Private_Use": "Co", "Unassigned": "Cn",
}  # fmt: skip
_GROUPS = {"L": "Lu Ll Lt Lm Lo", "LC": "Lu Ll Lt", "M": "Mn Mc Me", "N": "Nd Nl No", "P": "Pc Pd Ps Pe Pi Pf Po",
           "S": "Sm Sc Sk So", "Z": "Zs Zl Zp", "C": "Cc Cf Cs Co Cn"}  # fmt: skip
LEAVES = tuple(sorted({leaf for group in _GROUPS.values() for leaf in group.split()}))
ASCII = CharSet.span(0, 0x7F)
LATIN_1 = CharSet.span(0, 0xFF)
NON_ASCII = UNIVERSE - ASCII


def category_bounds(name: str) -> tuple[CharSet, CharSet] | None:
    """``(lower, upper)`` for ``\\p{name}``: ``lower`` holds only code points every reader puts in the category
    (used where the pattern must match), ``upper`` every code point some reader might (its complement is used where
    the pattern must *not* match: ``not``, the other branches of a ``oneOf``, a failed ``if``). ``upper`` is exact on
    ASCII, whose categories never changed, and holds every other code point: a superset is all soundness needs, and a
    few ranges keep the automata small. None when ``name`` is not a general category (or ``Any`` / ``ASCII`` /
    ``Assigned``)."""
    for prefix in ("General_Category=", "gc="):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    else:
        if name == "Any":
            return UNIVERSE, UNIVERSE
        if name == "ASCII":
            return ASCII, ASCII
        if name == "Assigned":
            return _with_upper(_lower(leaf for leaf in LEAVES if leaf != "Cn"))
    short = _LONG.get(name, name)
    if short in _GROUPS:
        return _with_upper(_lower(_GROUPS[short].split()))
    return _with_upper(_lower([short])) if short in LEAVES else None


def _with_upper(lower: CharSet) -> tuple[CharSet, CharSet]:
    return lower, (lower & ASCII) | NON_ASCII


def _lower(leaves) -> CharSet:
    """Code points that Python's table and the regex module's both put in one of ``leaves`` (never Cn)."""
    out = EMPTY
    for leaf in leaves:
        if leaf != "Cn":
            out = out | _leaf(leaf)
    return out


@functools.cache
def _leaf(category: str) -> CharSet:
    if category == "Cn":  # the unassigned: the next Unicode version assigns some of them
        return EMPTY
    theirs = _regex_sets()
    mine = _unicodedata_sets()[category]
    return mine & LATIN_1 if theirs is None else mine & theirs[category]


@functools.cache
def _regex_sets() -> dict[str, CharSet] | None:
    """Every leaf category's code points per the ``regex`` module (None without it)."""
    try:
        import regex
    except ImportError:  # open_clip depends on it; without it, Latin-1 only (stable since Unicode 1.1)
        return None
    out = {}
    for leaf in LEAVES:
        found = regex.finditer(rf"\p{{{leaf}}}+", _every_char())
        # a run across the surrogate gap spans it here: cut it out
        out[leaf] = CharSet((_code_point(m.start()), _code_point(m.end() - 1)) for m in found) & UNIVERSE
    return out


@functools.cache
def _unicodedata_sets() -> dict[str, CharSet]:
    """Every leaf category's code points per :mod:`unicodedata` (one scan of the code space, ~0.3 s, cached)."""
    runs: dict[str, list[tuple[int, int]]] = {leaf: [] for leaf in LEAVES}
    start, current = 0, unicodedata.category("\x00")
    for cp in range(1, 0x110000):
        cat = unicodedata.category(chr(cp))
        if cat != current:
            runs[current].append((start, cp - 1))
            start, current = cp, cat
    runs[current].append((start, 0x10FFFF))
    return {leaf: CharSet(r) & UNIVERSE for leaf, r in runs.items()}


@functools.cache
def _every_char() -> str:
    """Every code point outside the surrogates, in order, as one string (what ``regex`` scans)."""
    return "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))


def _code_point(index: int) -> int:
    """The code point at ``index`` of :func:`_every_char`."""
    return index if index < 0xD800 else index + 0x800
