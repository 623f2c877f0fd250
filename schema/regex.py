"""A small regular-expression compiler for JSON Schema ``pattern`` (and the regex-backed ``format`` values).

JSON Schema patterns are ECMA-262 regexes matched with *search* semantics (not anchored). The reference validator
(``jsonschema``) runs them with Python's :mod:`re`. This module accepts the subset on which both dialects agree, and
where they differ it builds two readings: the *lower* one, the intersection of the two languages, where a pattern
must match (whatever the recogniser accepts then matches under either engine), and the *upper* one, a superset of
their union, whose complement is used where a pattern must not match (:func:`pattern_readings`). Everything else
raises :class:`~.errors.UnsupportedSchemaError` (fail closed).

Supported subset of ``pattern``:

==========================  ================================================================================
syntax                      meaning here
==========================  ================================================================================
literals, ``\\.`` ``\\/`` ...  themselves (any escaped punctuation is the literal character)
``.``                       any character except ``\\n \\r \\u2028 \\u2029``
``[...]`` ``[^...]``        classes with ranges and the escapes below (a class may not start with ``]``; a
                            negated class that contains a shorthand is limited to ASCII)
``\\d \\w \\s``                ASCII only: ``[0-9]``, ``[A-Za-z0-9_]``, ``[\\t\\n\\v\\f\\r ]``
``\\D \\W \\S``                ASCII complements (``[\\x00-\\x7f]`` minus the class)
``\\t \\n \\r \\f \\v \\0``       control characters; ``\\xhh`` and ``\\uhhhh`` code points
``\\p{..} \\P{..}``          Unicode general categories as ECMA-262's ``u`` flag reads them (Python's ``re`` has
                            none): :mod:`.categories`; ``\\P`` and negated classes holding ``\\p`` are ASCII only
``( )`` ``(?: )`` ``|``     groups (capturing or not) and alternation
``* + ? {n} {n,} {n,m}``    greedy or lazy (``*?`` ...) repetition; bounds up to 1000
``^`` ``$``                 only at the start / end of a top-level alternative
==========================  ================================================================================

Not supported (raises): backreferences, lookaround, ``\\b``/``\\B``, ``\\p{Script=..}``, ``\\c``, named groups, inline
flags, possessive quantifiers, anchors inside groups or in the middle of an alternative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .categories import category_bounds
from .charset import EMPTY, UNIVERSE, CharSet
from .errors import SchemaError, UnsupportedSchemaError

MAX_REPEAT = 1000
MAX_NFA_STATES = 50_000

DIGIT = CharSet.span("0", "9")
WORD = CharSet([(ord("a"), ord("z")), (ord("A"), ord("Z")), (ord("0"), ord("9")), (ord("_"), ord("_"))])
SPACE = CharSet.of("\t", "\n", "\x0b", "\x0c", "\r", " ")
ASCII = CharSet.span(0, 0x7F)
DOT = UNIVERSE - CharSet.of("\n", "\r", 0x2028, 0x2029)


# The two readings of a character class: ``lower`` holds what both ECMA-262 (the u flag's ASCII \\d \\w \\s) and
# Python's re (Unicode-aware) match, ``upper`` (a superset of) what either may match. A pattern is built on the lower sets where it
# must match and on the upper ones where it must not (its complement: ``not``, a failed ``if``, the other branches
# of a ``oneOf``, the disjointness proofs), so neither use accepts a string either engine judges otherwise.
def _shorthand(c: str) -> tuple[CharSet, CharSet]:
    if c in "DWS":
        lo, hi = _shorthand(c.lower())
        return ASCII - hi, UNIVERSE - lo  # \\D \\W \\S: the lower one kept to ASCII
    lower = {"d": DIGIT, "w": WORD, "s": SPACE}[c]
    # upper: exact on ASCII (Python's \\s also takes \\x1c-\\x1f there), every non-ASCII code point beside it (a
    # superset is all soundness needs; Python's Unicode classes would cost thousands of ranges per automaton)
    ascii_part = lower | CharSet.span(0x1C, 0x1F) if c == "s" else lower
    return lower, ascii_part | (UNIVERSE - ASCII)


_SHORTHANDS = "dwsDWS"
_CONTROL = {"t": "\t", "n": "\n", "r": "\r", "f": "\x0c", "v": "\x0b", "0": "\x00"}

# AST: ("set", CharSet) | ("cat", [ast]) | ("alt", [ast]) | ("rep", ast, lo, hi|None) | ("bol",) | ("eol",)


class _Parser:
    def __init__(self, pattern: str, path: str, keyword: str, upper: bool = False) -> None:
        self.p = pattern
        self.i = 0
        self.path = path
        self.keyword = keyword
        self.upper = upper  # build the upper reading (see _shorthand) instead of the lower one
        self.narrowed = False  # some part of the pattern reads differently in the two engines
        # \p needs ECMA-262's u flag, under which identity escapes of non-syntax characters and lone braces are errors
        self.u_mode = "\\p" in pattern or "\\P" in pattern

    def pick(self, lo: CharSet, hi: CharSet) -> CharSet:
        if lo != hi:
            self.narrowed = True
        return hi if self.upper else lo

    def unsupported(self, what: str) -> UnsupportedSchemaError:
        return UnsupportedSchemaError(self.keyword, self.path, f"{what} in pattern {self.p!r}")

    def error(self, what: str) -> SchemaError:
        return SchemaError(f"invalid regular expression {self.p!r}: {what}", self.path)

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def parse(self):
        node = self.alternation()
        if self.i != len(self.p):
            raise self.error(f"unbalanced ')' at {self.i}")
        return node

    def alternation(self):
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self):
        items = []
        while True:
            c = self.peek()
            if c is None or c in "|)":
                break
            atom = self.atom()
            atom = self.quantified(atom)
            items.append(atom)
        return ("cat", items)

    def quantified(self, atom):
        c = self.peek()
        lo = hi = None
        if c == "*":
            lo, hi = 0, None
            self.i += 1
        elif c == "+":
            lo, hi = 1, None
            self.i += 1
        elif c == "?":
            lo, hi = 0, 1
            self.i += 1
        elif c == "{":
            q = self.braces()
            if q is None:
                return atom
            lo, hi = q
        else:
            return atom
        if atom[0] in ("bol", "eol"):
            raise self.unsupported("quantified anchor")
        if self.peek() == "?":  # lazy: same language
            self.i += 1
        if self.peek() in ("*", "+", "?", "{") and (self.peek() != "{" or self.braces(probe=True) is not None):
            raise self.unsupported("possessive or repeated quantifier")
        return ("rep", atom, lo, hi)

    def braces(self, probe: bool = False):
        """Parse ``{n}``, ``{n,}``, ``{n,m}`` at the cursor; None (cursor unmoved) if it is a literal brace."""
        j = self.i + 1
        p = self.p
        k = j + 1
        while k < len(p) and p[k].isdigit() and p[k].isascii():
            k += 1
        if p.startswith(",", j) and p.startswith("}", k):
            raise self.unsupported("repetition {,n} or {,} (Python reads them as {0,n} and *, ECMA-262 as text)")
        k = j
        while k < len(p) and p[k].isdigit() and p[k].isascii():
            k += 1
        if k == j:
            return None
        lo = int(p[j:k])
        hi: int | None = lo
        if k < len(p) and p[k] == ",":
            m = k + 1
            while m < len(p) and p[m].isdigit() and p[m].isascii():
                m += 1
            hi = int(p[k + 1 : m]) if m > k + 1 else None
            k = m
        if k >= len(p) or p[k] != "}":
            return None
        if probe:
            return (lo, hi)
        self.i = k + 1
        if hi is not None and hi < lo:
            raise self.error("bad repetition bounds")
        if lo > MAX_REPEAT or (hi is not None and hi > MAX_REPEAT):
            raise self.unsupported(f"repetition bound above {MAX_REPEAT}")
        return (lo, hi)

    def atom(self):
        c = self.p[self.i]
        if c == "(":
            self.i += 1
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.unsupported("lookaround, named group or inline flag")
            node = self.alternation()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return ("set", self.pick(*self.char_class()))
        if c == ".":
            self.i += 1
            return ("set", self.pick(DOT, UNIVERSE - CharSet.of("\n")))  # Python's "." also takes CR, LS, PS
        if c == "^":
            self.i += 1
            return ("bol",)
        if c == "$":
            self.i += 1
            return ("eol",)
        if c == "\\":
            return ("set", self.pick(*self.escape(in_class=False)))
        if c in "*+?":
            raise self.error("nothing to repeat")
        if c == "{" and self.braces(probe=True) is not None:
            raise self.error("nothing to repeat")
        if c in "{}]" and self.u_mode:
            raise self.error(f"lone {c!r} (an error under the u flag that \\p needs)")
        self.i += 1
        return ("set", CharSet.of(c))

    def escape(self, in_class: bool) -> tuple[CharSet, CharSet]:
        """The escape at the cursor, as its (lower, upper) readings (equal but for shorthands and \\p)."""
        self.i += 1
        if self.i >= len(self.p):
            raise self.error("trailing backslash")
        c = self.p[self.i]
        self.i += 1
        if c in _SHORTHANDS:
            return _shorthand(c)
        if c in "pP":
            return self.property(negate=c == "P")
        one = self.single_escape(c, in_class)
        return one, one

    def single_escape(self, c: str, in_class: bool) -> CharSet:
        if c in _CONTROL:
            if c == "0" and self.peek() is not None and self.peek().isdigit():
                raise self.unsupported("octal escape")
            return CharSet.of(_CONTROL[c])
        if c == "x":
            return CharSet.of(self.hex(2))
        if c == "u":
            if self.peek() == "{":
                raise self.unsupported("\\u{...} escape")
            return CharSet.of(self.hex(4))
        if c == "b" and in_class:
            return CharSet.of("\b")
        if c.isdigit():
            raise self.unsupported("backreference or octal escape")
        if c.isascii() and c.isalnum():
            raise self.unsupported(f"escape \\{c}")
        if self.u_mode and c not in "^$\\.*+?()[]{}|/" and not (in_class and c == "-"):
            raise self.error(f"escape \\{c} (an error under the u flag that \\p needs)")
        return CharSet.of(c)

    def property(self, negate: bool) -> tuple[CharSet, CharSet]:
        """``\\p{Name}`` / ``\\P{Name}`` (the cursor after the letter): a Unicode general category, read as an
        ECMA-262 engine with the ``u`` flag reads it (Python's ``re`` has none), as its (lower, upper) readings over
        Unicode versions (:mod:`.categories`); the lower reading of ``\\P`` is kept to ASCII, as for ``\\D``."""
        end = self.p.find("}", self.i)
        if self.peek() != "{" or end < 0:
            raise self.error("\\p and \\P need a {name}")
        name = self.p[self.i + 1 : end]
        bounds = category_bounds(name)
        if bounds is None:
            raise self.unsupported(f"Unicode property {name!r} (general categories only)")
        self.i = end + 1
        lo, hi = bounds
        return (ASCII - hi, UNIVERSE - lo) if negate else (lo, hi)

    def hex(self, n: int) -> int:
        h = self.p[self.i : self.i + n]
        if len(h) != n or any(ch not in "0123456789abcdefABCDEF" for ch in h):
            raise self.error("bad hex escape")
        self.i += n
        cp = int(h, 16)
        if 0xD800 <= cp <= 0xDFFF:
            raise self.unsupported("surrogate escape")
        return cp

    def char_class(self) -> tuple[CharSet, CharSet]:
        """The class at the cursor as its (lower, upper) readings. A negated class is the complement of the other
        reading; its lower one is kept to ASCII where it holds a shorthand or ``\\p`` (the readings differ there)."""
        self.i += 1
        negate = False
        if self.peek() == "^":
            negate = True
            self.i += 1
        if self.peek() == "]":
            raise self.unsupported("class starting with ']'")
        if self.peek() == "[" and self.p.startswith("[:", self.i):
            raise self.unsupported("POSIX class")
        lo_acc = hi_acc = EMPTY
        shorthand = False
        while True:
            c = self.peek()
            if c is None:
                raise self.error("missing ']'")
            if c == "]":
                self.i += 1
                break
            (lo, hi), is_class = self.class_atom()
            shorthand |= is_class
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                (lo2, _), is_class2 = self.class_atom()
                if is_class or is_class2 or lo.size() != 1 or lo2.size() != 1:
                    raise self.unsupported("class range with a shorthand or \\p end")
                a, b = lo.min(), lo2.min()
                if a > b:
                    raise self.error("bad class range")
                span = CharSet.span(a, b) & UNIVERSE
                lo_acc, hi_acc = lo_acc | span, hi_acc | span
            else:
                lo_acc, hi_acc = lo_acc | lo, hi_acc | hi
        if negate:
            lower = hi_acc.complement()
            return (lower & ASCII if shorthand else lower), lo_acc.complement()
        return lo_acc, hi_acc

    def class_atom(self) -> tuple[tuple[CharSet, CharSet], bool]:
        """((lower, upper), whether it is a class escape: a shorthand or \\p) of the class item at the cursor."""
        c = self.p[self.i]
        if c == "\\":
            is_class = self.i + 1 < len(self.p) and self.p[self.i + 1] in _SHORTHANDS + "pP"
            return self.escape(in_class=True), is_class
        if c == "[" and self.p.startswith(("[:", "[=", "[."), self.i):
            raise self.unsupported("POSIX class")
        self.i += 1
        one = CharSet.of(c)
        return (one, one), False


def pattern_readings(pattern: str, path: str = "#", keyword: str = "pattern"):
    """``pattern`` parsed to ASTs wrapped for *search* semantics (implicit ``.*`` where not anchored): ``(lower,
    upper or None)``, the upper reading (Python's ``$`` also matches before a final newline, ...) None when both
    engines read the pattern alike."""
    lower, narrowed = _parse(pattern, path, keyword, False)
    return lower, (_parse(pattern, path, keyword, True)[0] if narrowed else None)


def _parse(pattern: str, path: str, keyword: str, upper: bool):
    parser = _Parser(pattern, path, keyword, upper)
    ast = parser.parse()
    branches = ast[1] if ast[0] == "alt" else [ast]
    out = []
    any_star = ("rep", ("set", UNIVERSE), 0, None)
    for br in branches:
        items = list(br[1]) if br[0] == "cat" else [br]
        # unwrap a single group that spans the whole branch, e.g. "^(a|b)$" is handled by the anchors outside
        anchored_start = bool(items) and items[0] == ("bol",)
        if anchored_start:
            items = items[1:]
        anchored_end = bool(items) and items[-1] == ("eol",)
        if anchored_end:
            items = items[:-1]
        while items and items[0] == ("bol",):  # "^^a" is legal and means the same
            items = items[1:]
        while items and items[-1] == ("eol",):
            items = items[:-1]
        if _has_anchor(("cat", items)):
            raise UnsupportedSchemaError(keyword, path, f"anchor inside a group or alternative in {pattern!r}")
        tail = [any_star] if not anchored_end else [("rep", ("set", CharSet.of("\n")), 0, 1)] if upper else []
        if anchored_end:
            parser.narrowed = True  # Python's "$" also matches before a final newline
        out.append(("cat", ([] if anchored_start else [any_star]) + items + tail))
    return (out[0] if len(out) == 1 else ("alt", out)), parser.narrowed


def _has_anchor(node) -> bool:
    kind = node[0]
    if kind in ("bol", "eol"):
        return True
    if kind in ("cat", "alt"):
        return any(_has_anchor(n) for n in node[1])
    if kind == "rep":
        return _has_anchor(node[1])
    return False


# ---------------------------------------------------------------------------------------------------------
# Thompson NFA


@dataclass(eq=False)
class NFA:
    """Epsilon-NFA over code points: ``edges[s]`` = list of ``(CharSet, target)``, ``eps[s]`` = targets."""

    edges: list = field(default_factory=list)
    eps: list = field(default_factory=list)
    start: int = 0
    accept: int = 0
    accept_all: tuple | None = field(default=None, repr=False)  # automaton._accept_all, once the NFA is complete

    def new(self) -> int:
        self.edges.append([])
        self.eps.append([])
        if len(self.edges) > MAX_NFA_STATES:
            raise SchemaError("regular expression too large")
        return len(self.edges) - 1


def literal_set_nfa(strings) -> NFA:
    """Exactly the given strings, as a trie: one state per distinct prefix, each string's end joined to the one
    accepting state by an epsilon. Its size is the input's (no ``MAX_NFA_STATES`` cap: an enum of thousands of
    names is a valid schema, not an oversized regular expression)."""
    nfa = NFA()
    children: list[dict[str, int]] = []

    def state() -> int:
        nfa.edges.append([])
        nfa.eps.append([])
        children.append({})
        return len(nfa.edges) - 1

    root = state()
    ends = set()
    for text in strings:
        s = root
        for ch in text:
            nxt = children[s].get(ch)
            if nxt is None:
                nxt = children[s][ch] = state()
                nfa.edges[s].append((CharSet._normalized(((ord(ch), ord(ch)),)), nxt))
            s = nxt
        ends.add(s)
    nfa.start, nfa.accept = root, state()
    for s in sorted(ends):
        nfa.eps[s].append(nfa.accept)
    return nfa


def build_nfa(ast) -> NFA:
    nfa = NFA()
    s, a = _build(nfa, ast)
    nfa.start, nfa.accept = s, a
    return nfa


def _build(nfa: NFA, node) -> tuple[int, int]:
    kind = node[0]
    if kind == "set":
        s, a = nfa.new(), nfa.new()
        if node[1]:
            nfa.edges[s].append((node[1], a))
        return s, a
    if kind == "cat":
        s = nfa.new()
        cur = s
        for item in node[1]:
            i_s, i_a = _build(nfa, item)
            nfa.eps[cur].append(i_s)
            cur = i_a
        return s, cur
    if kind == "alt":
        s, a = nfa.new(), nfa.new()
        for item in node[1]:
            i_s, i_a = _build(nfa, item)
            nfa.eps[s].append(i_s)
            nfa.eps[i_a].append(a)
        return s, a
    if kind == "rep":
        _, sub, lo, hi = node
        s = nfa.new()
        cur = s
        for _ in range(lo):
            i_s, i_a = _build(nfa, sub)
            nfa.eps[cur].append(i_s)
            cur = i_a
        if hi is None:
            i_s, i_a = _build(nfa, sub)
            loop = nfa.new()
            nfa.eps[cur].append(loop)
            nfa.eps[loop].append(i_s)
            nfa.eps[i_a].append(loop)
            cur = loop
        else:
            end = nfa.new()
            for _ in range(hi - lo):
                nfa.eps[cur].append(end)
                i_s, i_a = _build(nfa, sub)
                nfa.eps[cur].append(i_s)
                cur = i_a
            nfa.eps[cur].append(end)
            cur = end
        return s, cur
    raise AssertionError(kind)  # anchors were removed by _parse
