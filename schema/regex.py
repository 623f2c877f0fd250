"""A small regular-expression compiler for JSON Schema ``pattern`` (and the regex-backed ``format`` values).

JSON Schema patterns are ECMA-262 regexes matched with *search* semantics (not anchored). The reference validator
(``jsonschema``) runs them with Python's :mod:`re`. This module accepts the subset on which both dialects agree,
and where they differ it picks the *intersection* of the two languages, so whatever the recogniser accepts also
matches under either engine. Everything else raises :class:`~.errors.UnsupportedSchemaError` (fail closed).

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

from .categories import category_set
from .charset import EMPTY, UNIVERSE, CharSet
from .errors import SchemaError, UnsupportedSchemaError

MAX_REPEAT = 1000
MAX_NFA_STATES = 50_000

DIGIT = CharSet.span("0", "9")
WORD = CharSet([(ord("a"), ord("z")), (ord("A"), ord("Z")), (ord("0"), ord("9")), (ord("_"), ord("_"))])
SPACE = CharSet.of("\t", "\n", "\x0b", "\x0c", "\r", " ")
ASCII = CharSet.span(0, 0x7F)
DOT = UNIVERSE - CharSet.of("\n", "\r", 0x2028, 0x2029)

_SHORTHAND = {
    "d": DIGIT,
    "w": WORD,
    "s": SPACE,
    "D": ASCII - DIGIT,
    "W": ASCII - WORD,
    "S": ASCII - SPACE,
}
_CONTROL = {"t": "\t", "n": "\n", "r": "\r", "f": "\x0c", "v": "\x0b", "0": "\x00"}

# AST: ("set", CharSet) | ("cat", [ast]) | ("alt", [ast]) | ("rep", ast, lo, hi|None) | ("bol",) | ("eol",)


class _Parser:
    def __init__(self, pattern: str, path: str, keyword: str) -> None:
        self.p = pattern
        self.i = 0
        self.path = path
        self.keyword = keyword

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
            return ("set", self.char_class())
        if c == ".":
            self.i += 1
            return ("set", DOT)
        if c == "^":
            self.i += 1
            return ("bol",)
        if c == "$":
            self.i += 1
            return ("eol",)
        if c == "\\":
            return ("set", self.escape(in_class=False))
        if c in "*+?":
            raise self.error("nothing to repeat")
        if c == "{" and self.braces(probe=True) is not None:
            raise self.error("nothing to repeat")
        self.i += 1
        return ("set", CharSet.of(c))

    def escape(self, in_class: bool) -> CharSet:
        self.i += 1
        if self.i >= len(self.p):
            raise self.error("trailing backslash")
        c = self.p[self.i]
        self.i += 1
        if c in _SHORTHAND:
            return _SHORTHAND[c]
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
        if c in "pP":
            return self.property(negate=c == "P")
        if c.isdigit():
            raise self.unsupported("backreference or octal escape")
        if c.isascii() and c.isalnum():
            raise self.unsupported(f"escape \\{c}")
        return CharSet.of(c)

    def property(self, negate: bool) -> CharSet:
        """``\\p{Name}`` / ``\\P{Name}`` (the cursor after the letter): a Unicode general category, read as an
        ECMA-262 engine with the ``u`` flag reads it (Python's ``re`` has none). The complement is kept to ASCII, as
        for ``\\D``: categories outside ASCII move between Unicode versions (:mod:`.categories`)."""
        end = self.p.find("}", self.i)
        if self.peek() != "{" or end < 0:
            raise self.error("\\p and \\P need a {name}")
        name = self.p[self.i + 1 : end]
        chars = category_set(name)
        if chars is None:
            raise self.unsupported(f"Unicode property {name!r} (general categories only)")
        self.i = end + 1
        return (ASCII - chars) if negate else chars

    def hex(self, n: int) -> int:
        h = self.p[self.i : self.i + n]
        if len(h) != n or any(ch not in "0123456789abcdefABCDEF" for ch in h):
            raise self.error("bad hex escape")
        self.i += n
        cp = int(h, 16)
        if 0xD800 <= cp <= 0xDFFF:
            raise self.unsupported("surrogate escape")
        return cp

    def char_class(self) -> CharSet:
        self.i += 1
        negate = False
        if self.peek() == "^":
            negate = True
            self.i += 1
        if self.peek() == "]":
            raise self.unsupported("class starting with ']'")
        if self.peek() == "[" and self.p.startswith("[:", self.i):
            raise self.unsupported("POSIX class")
        acc = EMPTY
        shorthand = False  # \d \w \s are Unicode-aware in Python, \p{..} moves: complements are then kept to ASCII
        while True:
            c = self.peek()
            if c is None:
                raise self.error("missing ']'")
            if c == "]":
                self.i += 1
                break
            shorthand |= self.p.startswith(("\\d", "\\D", "\\w", "\\W", "\\s", "\\S", "\\p", "\\P"), self.i)
            lo = self.class_atom()
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                hi = self.class_atom()
                if lo.size() != 1 or hi.size() != 1:
                    raise self.unsupported("class range with a shorthand end")
                a, b = lo.min(), hi.min()
                if a > b:
                    raise self.error("bad class range")
                acc = acc | (CharSet.span(a, b) & UNIVERSE)
            else:
                acc = acc | lo
        if negate:
            return acc.complement() & ASCII if shorthand else acc.complement()
        return acc

    def class_atom(self) -> CharSet:
        c = self.p[self.i]
        if c == "\\":
            return self.escape(in_class=True)
        if c == "[" and self.p.startswith(("[:", "[=", "[."), self.i):
            raise self.unsupported("POSIX class")
        self.i += 1
        return CharSet.of(c)


def parse_pattern(pattern: str, path: str = "#", keyword: str = "pattern"):
    """Parse ``pattern`` to an AST wrapped for *search* semantics (implicit ``.*`` where not anchored)."""
    ast = _Parser(pattern, path, keyword).parse()
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
        seq = ([] if anchored_start else [any_star]) + items + ([] if anchored_end else [any_star])
        out.append(("cat", seq))
    return out[0] if len(out) == 1 else ("alt", out)


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
    raise AssertionError(kind)  # anchors were removed by parse_pattern
