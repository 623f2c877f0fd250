"""Incremental recogniser: a pushdown machine over the compiled node graph, fed UTF-8 bytes or characters.

State is immutable and hashable: :class:`RecState` = a tuple of *stacks* plus the bytes of an incomplete UTF-8
character. Each :class:`Stack` is a persistent linked list of *frames* (innermost first), so nesting depth -
including recursion through ``$ref`` - is bounded only by the input (no depth cap), and stepping touches only
the innermost frames. Several stacks exist at once when ``anyOf`` branches are still all possible (an NFA-style
set of runs over the same text; duplicates merge).

Frames are tuples whose first item is a tag:

=====  ============================================  ==================================================
tag    fields                                        meaning
=====  ============================================  ==================================================
``V``  alt                                           a value of node ``alt`` is expected (whitespace ok)
``S``  automaton, q, n, esc                          inside a string value (DFA state, length, escape)
``N``  simple, neg, int digits, frac, exp            inside a number
``L``  word, pos                                     inside ``true``/``false``/``null``
``A``  simple, phase, count                          inside an array
``O``  simple, phase, seen names, key, esc           inside an object (``key``: the name being written)
``R``                                                the root value is complete (trailing whitespace ok)
``U``  item node, sub-state, text, alive, taken      an array or object item of a uniqueItems array (below)
=====  ============================================  ==================================================

An array or object item of a ``uniqueItems`` array runs in one ``U`` frame: a state of a machine of its own (over
the item node's array and object alternatives), the item's text so far, and the states of the ``const`` machines of
the earlier array and object items that the text may still equal (see :mod:`.unique`).

When a child value starts, the parent frame below it is *already* in its after-value phase (the array count
or the set of written names updated), so completing a child is just a pop. Each stack caches ``base``: the
cheapest way to finish everything below its top frame, which makes :meth:`Machine.cost` (the shortest
completion, in bytes) O(number of stacks).

Feeding is exact (it decides validity as the reference validator does); :meth:`Machine.allowed` is the set of
next characters for generation: only characters after which a valid completion still exists. For numbers
that set is conservative (plain decimal notation, see :mod:`.numbers`).
"""

from __future__ import annotations

import heapq
from functools import partial

from .charset import EMPTY, WS, CharSet, allowed_bytes, utf8_len, utf8_needed, utf8_prefix_interval
from .compiler import ARR, BOOL, NULL, OBJ, STR, Alt, Compiler, Simple
from .errors import SchemaError
from .keys import KeyMachine
from .lexer import END, lex_allowed, lex_cost, lex_cost_range, lex_step
from .patternkeys import PatternKeyMachine, PatternObjSpec
from .unique import (
    COMPOUND,
    ExcludingStrings,
    compound_key,
    compound_only,
    item_key,
    key_value,
    number_value,
    restricted,
)

T_V, T_S, T_N, T_L, T_A, T_O, T_R, T_U = range(8)
A_START, A_AFTER, A_COMMA = range(3)
O_START, O_KEY, O_COLON, O_AFTER, O_COMMA = range(5)
WS_CODES = frozenset((0x20, 0x09, 0x0A, 0x0D))
DIGITS = "0123456789"
_DIGIT_CPS = {ord(d): d for d in DIGITS}
ROOT_FRAME = (T_R,)
_ASCII_ORDINARY = CharSet([(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7F)])
_LEADS = [(b, utf8_prefix_interval(bytes((b,)))) for b in range(0xC2, 0xF5)]
_RAW = _ASCII_ORDINARY | CharSet([(0x80, 0x10FFFF)])
_ASCII_BITS = (1 << 0x80) - 1
_LEAD_CLASSES = (  # (sequence length, mask of its lead bytes)
    (2, sum(1 << b for b in range(0xC2, 0xE0))),
    (3, sum(1 << b for b in range(0xE0, 0xF0))),
    (4, sum(1 << b for b in range(0xF0, 0xF5))),
)
_MEMO_LIMIT = 200_000
# An item's search for a completion that repeats no earlier item (Machine._fresh_cost) expands at most this many
# states and follows no number longer than this many digits (one that may still equal an earlier item's, 1.0,
# 1.00, ..., is endless); past either the item counts as having none: never a repeat, at worst a missed completion
_FRESH_SEARCH_LIMIT = 5_000
_FRESH_NUMBER_DIGITS = 20
_CONST_MACHINES = 4_096  # const machines of earlier items kept per machine (then dropped and rebuilt when needed)
_ROUNDING_DIGITS = 15  # a plain decimal of fewer digits is exactly one float (15 = DBL_DIG)
_NUMBER_CHARS = CharSet.of(*"0123456789.eE+-")
_NUMBER_ENDS = CharSet.of(*" \t\n\r,]}")
_WORD_VALUES = {"true": True, "false": False, "null": None}


class Stack:
    """Persistent stack node: ``frame`` on top of ``parent``; ``base`` = cheapest finish of everything below."""

    __slots__ = ("frame", "parent", "base", "_h")

    def __init__(self, frame: tuple, parent: Stack | None, base: int) -> None:
        self.frame = frame
        self.parent = parent
        self.base = base
        self._h = hash((frame, base, 0 if parent is None else parent._h))

    def __hash__(self) -> int:
        return self._h

    def __eq__(self, other: object) -> bool:
        a, b = self, other
        while True:
            if a is b:
                return True
            if not isinstance(b, Stack) or a._h != b._h or a.base != b.base or a.frame != b.frame:
                return False
            a, b = a.parent, b.parent
            if a is None or b is None:
                return a is b

    def __repr__(self) -> str:
        frames = []
        s = self
        while s is not None:
            frames.append(_frame_repr(s.frame))
            s = s.parent
        return "Stack[" + " > ".join(frames) + "]"


def _frame_repr(f: tuple) -> str:
    names = "VSNLAORU"  # frame tags T_V .. T_U
    return names[f[0]] + ("" if len(f) == 1 else "(" + ",".join(str(x)[:20] for x in f[2:]) + ")")


class RecState(tuple):
    """``(stacks, pending)``: live stacks and the bytes of an incomplete UTF-8 character (hashable)."""

    __slots__ = ()

    @property
    def stacks(self) -> tuple[Stack, ...]:
        return self[0]

    @property
    def pending(self) -> bytes:
        return self[1]


class Machine:
    """The transition, allowed-set and cost functions over one compiled schema (memoised per frame)."""

    def __init__(self, root: Alt) -> None:
        self.root = root
        self._allowed: dict = {}
        self._compound: dict = {}  # id(item node) -> (its array / object part, the Machine running it)
        self._consts: dict = {}  # compound item key -> the Machine of {"const": that value}
        self._reduced: dict = {}  # (id(item node), values written) -> its part without those enum members
        self._const_steps: dict = {}  # (item key, const-machine stacks, character) -> its next state
        root_stack = Stack(ROOT_FRAME, None, 0)
        stacks = (Stack((T_V, root), root_stack, 0),) if root.min_cost is not None else ()
        self.initial = RecState((stacks, b""))

    # ---------------------------------------------------------------------------------------------------
    # stepping

    def step_byte(self, state: RecState, b: int) -> RecState | None:
        stacks, pending = state
        if pending:
            p2 = pending + bytes((b,))
            if utf8_prefix_interval(p2) is None:
                return None
            if len(p2) == utf8_needed(p2[0]):
                return self.step_char(stacks, ord(p2.decode("utf-8")))
            return RecState((stacks, p2))
        if b < 0x80:
            return self.step_char(stacks, b)
        if utf8_needed(b) == 0 or utf8_prefix_interval(bytes((b,))) is None:
            return None
        return RecState((stacks, bytes((b,))))

    def step_bytes(self, state: RecState, data: bytes) -> RecState | None:
        for b in data:
            state = self.step_byte(state, b)
            if state is None:
                return None
        return state

    def step_char(self, stacks: tuple[Stack, ...], c: int) -> RecState | None:
        if len(stacks) == 1:
            out = self._step(stacks[0], c)
            if not out:
                return None
            if len(out) > 1:
                out = list(dict.fromkeys(out))
            return RecState((tuple(out), b""))
        acc: dict[Stack, None] = {}
        for st in stacks:
            for ns in self._step(st, c):
                acc[ns] = None
        return RecState((tuple(acc), b"")) if acc else None

    def _step(self, st: Stack, c: int) -> list[Stack]:
        f = st.frame
        tag = f[0]
        if tag == T_S:
            r = lex_step(f[1], (f[2], f[3]), f[4], c)
            if r is None:
                return []
            if r is END:
                if isinstance(f[1], ExcludingStrings):  # an item of a uniqueItems array: remember its value
                    return [self._item_done(st.parent, item_key("string", f[3]))]
                return [st.parent]
            (q, n), esc = r
            return [Stack((T_S, f[1], q, n, esc), st.parent, st.base)]
        if tag == T_V:
            if c in WS_CODES:
                return [st]
            out = []
            for s in f[1].simples:
                out.extend(self._start_value(s, c, st.parent, st.base))
            return out
        if tag == T_N:
            return self._step_number(st, c)
        if tag == T_L:
            word, pos = f[1], f[2]
            if c != ord(word[pos]):
                return []
            if pos + 1 == len(word):
                return [self._item_done(st.parent, item_key("literal", _WORD_VALUES[word]))]
            return [Stack((T_L, word, pos + 1), st.parent, st.base)]
        if tag == T_A:
            return self._step_array(st, c)
        if tag == T_O:
            return self._step_object(st, c)
        if tag == T_U:
            frame, key = self._step_item(f, c)
            if key is not None:
                return [self._item_done(st.parent, key)]
            return [Stack(frame, st.parent, st.base)] if frame is not None else []
        # R: only trailing whitespace
        return [st] if c in WS_CODES else []

    def _start_value(self, s: Simple, c: int, parent: Stack, base: int) -> list[Stack]:
        kc = s.kind_cost
        if c == 0x22:
            if STR in kc:
                if isinstance(s.str, ExcludingStrings):
                    return [Stack((T_S, s.str, *s.str.start(), 0), parent, base)]
                return [Stack((T_S, s.str, 0, 0, 0), parent, base)]
        elif c == 0x7B:
            if OBJ in kc:
                return [Stack((T_O, s, O_START, frozenset(), None, 0), parent, base)]
        elif c == 0x5B:
            if ARR in kc:
                return [Stack((T_A, s, A_START, 0, frozenset() if s.arr.unique else None, 0), parent, base)]
        elif c in _DIGIT_CPS:
            if "number" in kc:
                return [Stack((T_N, s, False, _DIGIT_CPS[c], None, None), parent, base)]
        elif c == 0x2D:
            if "number" in kc:
                return [Stack((T_N, s, True, "", None, None), parent, base)]
        elif c == 0x74:
            if BOOL in kc and True in s.bools:
                return [Stack((T_L, "true", 1), parent, base)]
        elif c == 0x66:
            if BOOL in kc and False in s.bools:
                return [Stack((T_L, "false", 1), parent, base)]
        elif c == 0x6E and NULL in kc:
            return [Stack((T_L, "null", 1), parent, base)]
        return []

    def _step_number(self, st: Stack, c: int) -> list[Stack]:
        _, s, neg, ip, fr, ex = st.frame
        nxt = _number_next(neg, ip, fr, ex, c)
        if nxt is not None:
            if nxt is False:
                return []
            return [Stack((T_N, s, *nxt), st.parent, st.base)]
        # c ends the number
        if not _number_complete(ip, fr, ex) or not s.num.accepts_text(_number_text(neg, ip, fr, ex)):
            return []
        return self._step(self._number_done(st), c)

    def _step_array(self, st: Stack, c: int) -> list[Stack]:
        _, s, phase, i, taken, count = st.frame
        arr = s.arr
        if c in WS_CODES:
            return [st]
        if phase == A_AFTER:
            if c == 0x2C:
                ok = self._can_add(s, i, taken, count, fed=True)
                return [Stack((T_A, s, A_COMMA, i, taken, count), st.parent, st.base)] if ok else []
            if c == 0x5D:
                return [st.parent] if arr.closable(i, count) else []
            return []
        if phase == A_START and c == 0x5D:
            return [st.parent] if arr.closable(0, count) else []
        if not self._can_add(s, i, taken, count, fed=True):
            return []
        out = []
        for alt, after_count in arr.branches(i, count):  # contains: a matching and a non-matching run
            after = (T_A, s, A_AFTER, i + 1, taken, after_count)
            rest = self.frame_cost(after)
            if rest is None:
                continue
            pst = Stack(after, st.parent, st.base)
            for child in self._items(alt, taken):
                out.extend(self._start_value(child, c, pst, rest + st.base))
            if taken is not None and (c == 0x7B or c == 0x5B):  # an array or object item: runs in a U frame
                f0 = self._item_frame(alt, taken)
                frame = None if f0 is None else self._step_item(f0, c)[0]
                if frame is not None:
                    out.append(Stack(frame, pst, rest + st.base))
        return out

    # uniqueItems (unique.py): the array frame carries the items written so far -----------------------------
    def _items(self, alt: Alt, taken: frozenset | None) -> tuple[Simple, ...]:
        """The nodes an item may start: ``alt``'s, or (uniqueItems) those nodes without the values ``taken``."""
        if taken is None:
            return alt.simples
        key = ("items", id(alt), taken)
        r = self._allowed.get(key)
        if r is None:
            r = tuple(x for x in (restricted(s, taken, Simple) for s in alt.simples) if x.min_cost is not None)
            self._allowed[key] = r  # (alt lives as long as the compiled graph: its id stays its own)
        return r

    def _can_add(self, s: Simple, i: int, taken: frozenset | None, count: int, fed: bool = False) -> bool:
        """Whether another item may come. For the mask (and costs) an array or object item must be able to end as
        a new item; text being fed only needs such items to exist (a repeat is refused where it ends)."""
        arr = s.arr
        if not arr.can_add(i, count):
            return False
        if taken is None:
            return True
        return any(
            (
                self._items(alt, taken)
                or (
                    self._compound_part(alt)[0] is not None
                    if fed
                    else self._compound_start_cost(alt, taken) is not None
                )
            )
            and arr.rest_cost(i + 1, False, c) is not None
            for alt, c in arr.branches(i, count)
        )

    # uniqueItems, arrays and objects as items (unique.py): U frames ------------------------------------------
    # A U frame is (T_U, item node, sub-state, text, alive, taken): the state of the item's own machine, the item's
    # text so far, ((key, const-machine state), ...) for the earlier array / object items the text may still equal,
    # and the keys of all earlier array / object items.
    def _compound_part(self, alt: Alt) -> tuple:
        """``(alt cut down to arrays and objects, the Machine running such an item)``, or ``(None, None)``."""
        r = self._compound.get(id(alt))
        if r is None:
            part = compound_only(alt, Alt, Simple)
            r = self._compound[id(alt)] = (part, Machine(part) if part is not None else None)
        return r

    def _const_machine(self, key: tuple) -> Machine | None:
        """The recogniser of ``{"const": value of key}`` (None: a value it cannot hold, e.g. 1e400 read as inf; such
        an item is still never repeated, by its key, but the mask does not steer around it: it cannot write it)."""
        try:
            return self._consts[key]
        except KeyError:
            pass
        try:
            m = Machine(Compiler({"const": key_value(key)}, "annotation").compile())
        except (ValueError, OverflowError, RecursionError, SchemaError):
            m = None
        if len(self._consts) >= _CONST_MACHINES:  # states made by a dropped machine still step on a new one
            self._consts.clear()
        self._consts[key] = m
        return m

    def _item_frame(self, alt: Alt, taken: frozenset) -> tuple | None:
        """The U frame of an array or object item of ``alt`` before its first character (None: ``alt`` has no
        such alternative), every array or object in ``taken`` still a possible repeat."""
        part = self._compound_part(alt)[0]
        if part is None:
            return None
        memo = ("item0", id(alt), taken)
        f = self._allowed.get(memo)
        if f is None:
            keys = frozenset(k for k in taken if k[0] == COMPOUND)
            drop = frozenset(s.value_key for s in part.simples if s.value_key in keys)
            node = self._without_values(alt, drop) if drop else alt
            if node is None:
                f = False  # every array or object the item may be is written already
            else:
                part, m = self._compound_part(node)
                if all(s.value_key is not None for s in part.simples):
                    # each node left is one value not written yet: no completion can repeat an item
                    f = (T_U, node, m.initial, "", (), frozenset())
                else:
                    alive = []
                    for k in sorted(keys):
                        cm = self._const_machine(k)
                        if cm is not None:
                            alive.append((k, cm.initial))
                    f = (T_U, node, m.initial, "", tuple(alive), keys)
            self._allowed[memo] = f
        return f or None

    def _without_values(self, alt: Alt, drop: frozenset) -> Alt | None:
        """``alt``'s array / object part without its single-value nodes whose values are in ``drop`` (None: nothing
        left), registered so that :meth:`_compound_part` runs it on a Machine of its own."""
        key = (id(alt), drop)
        if key not in self._reduced:
            if len(self._reduced) >= _CONST_MACHINES:  # a reduced node's id may be in memo keys: forget those too
                for node in self._reduced.values():
                    if node is not None:
                        self._compound.pop(id(node), None)
                self._reduced.clear()
                self._allowed.clear()
            node = self._reduced[key] = compound_only(alt, Alt, Simple, drop)
            if node is not None:
                self._compound[id(node)] = (node, Machine(node))
        return self._reduced[key]

    def _compound_start_cost(self, alt: Alt, taken: frozenset) -> int | None:
        """Cheapest array or object item of ``alt`` that repeats none in ``taken`` (None: there is none, or the mask
        will not start one: see :func:`_untracked`)."""
        f0 = self._item_frame(alt, taken)
        return None if f0 is None or _untracked(f0) else self.frame_cost(f0)

    def _step_item(self, f: tuple, c: int) -> tuple[tuple | None, tuple | None]:
        """U frame ``f`` after character ``c``: ``(next frame, None)`` while the item goes on, ``(None, key)`` when
        ``c`` finished it and it repeats no earlier item, ``(None, None)`` when ``c`` is refused."""
        _, alt, sub, text, alive, taken = f
        m = self._compound_part(alt)[1]
        ns = m.step_char(sub[0], c)
        if ns is None:
            return None, None
        still = []
        steps = self._const_steps
        for k, cs in alive:
            memo = (k, cs[0], c)  # the searches step the same const states by the same characters again and again
            n2 = steps.get(memo, _UNKNOWN)
            if n2 is _UNKNOWN:
                cm = self._const_machine(k)
                n2 = None if cm is None else cm.step_char(cs[0], c)
                if len(steps) >= _MEMO_LIMIT:
                    steps.clear()
                steps[memo] = n2
            if n2 is not None:  # (no cost test: an exponent, which the mask never writes, has none, yet is exact)
                still.append((k, n2))
        text += chr(c)
        if m.accepting(ns):  # the closing bracket of the item (a U frame starts at "[" or "{")
            key = compound_key(text)
            if key in taken or any(self._const_machine(k).accepting(cs) for k, cs in still):
                return None, None  # equal to an earlier item
            return None, key
        return (T_U, alt, ns, text, tuple(still), taken), None

    def _item_cost_after(self, f: tuple, c: int) -> int | None:
        """Bytes to finish U frame ``f``'s item after character ``c`` (the item then repeats no earlier one)."""
        frame, key = self._step_item(f, c)
        if key is not None:
            return 0
        return None if frame is None else self.frame_cost(frame)

    def _risky(self, f: tuple) -> CharSet:
        """Characters after which U frame ``f``'s item may still equal an earlier one; after any other, it differs
        from all of them. A ``const`` machine's mask is exact but for numbers, which the reader compares as floats
        when they end: a plain decimal of at most 15 digits is one float and no other such decimal is (so it
        equals a value exactly when the mask says), but from ``_ROUNDING_DIGITS`` digits on, or with an exponent
        (which only fed text has), ``0.99999999999999999`` is 1: there every character that may go on with or end
        the number is risky."""
        memo = ("risky", f[4])
        out = self._allowed.get(memo)
        if out is None:
            sets = set()
            for k, cs in f[4]:
                sets.add(self._const_machine(k).allowed(cs))
                for st in cs[0]:
                    g = st.frame
                    if g[0] == T_N and (g[5] is not None or len(g[3]) + len(g[4] or "") >= _ROUNDING_DIGITS):
                        sets.add(_NUMBER_CHARS | _NUMBER_ENDS)
                        break
            out = self._allowed[memo] = CharSet([r for cs in sets for r in cs.ranges])  # one union of the sets
        return out

    def _item_allowed(self, f: tuple) -> CharSet:
        m = self._compound_part(f[1])[1]
        out = m.allowed(f[2])
        if not f[4]:
            return out
        for a, b in (out & self._risky(f)).ranges:
            for cp in range(a, b + 1):
                if not self._fresh_after(m, f, cp):
                    out = out - CharSet([(cp, cp)])
        return out

    def _fresh_after(self, m: Machine, f: tuple, c: int) -> bool:
        """Whether U frame ``f``'s item can still end as a new item after character ``c``: at once when ``c`` ends
        it, leaves nothing to repeat, or is followed by a character that does (the cost comes when asked)."""
        frame, key = self._step_item(f, c)
        if key is not None:
            return True
        if frame is None or m.cost(frame[2]) is None:
            return False
        if not frame[4] or self._killer_cost(m, frame[2], m.allowed(frame[2]) & self._risky(frame)) is not None:
            return True
        return self.frame_cost(frame) is not None

    def _abstract(self, stacks: tuple) -> tuple[tuple, int]:
        """``stacks`` of an item machine without the texts of the U frames inside them (the text only names a
        finished item's value: states alike but for it finish alike), and the most digits of a number in them."""
        out = []
        digits = 0
        for st in stacks:
            frames = []
            while st is not None:
                f = st.frame
                if f[0] == T_U:
                    inner, d = self._abstract(f[2][0])
                    digits = max(digits, d)
                    f = (T_U, f[1], inner, None, f[4], f[5])
                elif f[0] == T_N:
                    digits = max(digits, len(f[3]) + len(f[4] or "") + len(f[5] or ""))
                frames.append((f, st.base))
                st = st.parent
            out.append(tuple(frames))
        return tuple(out), digits

    def _fresh_cost(self, f: tuple) -> int | None:
        """Cheapest completion of U frame ``f``'s item that equals no earlier item (None: none found).

        A* over U frames; the heuristic is the item machine's own cost, which ignores repeats (admissible and
        consistent). From each frame it follows every risky character (:meth:`_risky`: a few per state) and costs
        all the others at once (:meth:`_killer_cost`): after those no earlier item can be repeated, so the item
        machine's cost is the rest. Frames that differ only in text are one node (whitespace between tokens and
        escapes lead nowhere new). The costs found are exact over these paths and satisfy ``cost(f) = bytes(c) +
        cost(f after c)`` along them, so the mask, the budget and the shortest completion can follow them. A path
        through a number of more than ``_FRESH_NUMBER_DIGITS`` digits is not followed (``1.000...`` may still
        equal 1, endlessly), and the search stops after ``_FRESH_SEARCH_LIMIT`` frames: either way a fresh
        completion may be missed (the mask then refuses it), never a repeat allowed."""
        m = self._compound_part(f[1])[1]
        h0 = m.cost(f[2])
        if h0 is None or not f[4]:
            return h0
        # most often the item machine's own cheapest completion is already a new item: its cost is then exact
        rest = m.shortest_completion(f[2])
        if rest is not None and compound_key(f[3] + rest.decode("utf-8")) not in f[5]:
            return h0
        key0 = (self._abstract(f[2][0])[0], f[4])
        memo = _fresh_memo_key(id(f[1]), key0, taken=f[5])
        try:
            return self._allowed[memo]
        except KeyError:
            pass
        r = self._fresh_search(m, f, h0, key0)
        if len(self._allowed) > _MEMO_LIMIT:
            self._allowed.clear()
        self._allowed[memo] = r
        return r

    def _fresh_search(self, m: Machine, f: tuple, h0: int, key0: tuple) -> int | None:
        """A* from U frame ``f`` (see :meth:`_fresh_cost`). The costs it proves are kept: every frame on the path
        found is memoised with its exact rest (a suffix of a cheapest path is a cheapest path), and a frame already
        memoised is not searched again but ends as a goal at its known cost. The next character's search, which
        mostly starts on that path, then ends at once."""
        memo_of = partial(_fresh_memo_key, id(f[1]), taken=f[5])
        heap: list = [(h0, 0, 0, f, key0)]  # (f = g + h, tie-break, g, frame or None for a goal, frame's key)
        best_g = {key0: 0}
        parent: dict = {key0: None}  # frame key -> the key of the frame it was reached from
        tick = 0
        expanded = 0

        def found(total: int, last: tuple) -> int:
            k = last
            while k is not None:
                self._allowed[memo_of(k)] = total - best_g[k]
                k = parent[k]
            return total

        while heap:
            total, _, g, fr, k = heapq.heappop(heap)
            if fr is None:
                return found(total, k)  # a finished, fresh item or a frame that can no longer repeat (after k)
            if best_g.get(k, -1) < g:
                continue
            expanded += 1
            if expanded > _FRESH_SEARCH_LIMIT:
                return None
            risky = m.allowed(fr[2]) & self._risky(fr)
            c = self._killer_cost(m, fr[2], risky)
            if c is not None:
                if g + c == total:  # as cheap as the heuristic allows here: nothing left in the heap is cheaper
                    return found(total, k)
                tick += 1
                heapq.heappush(heap, (g + c, tick, g + c, None, k))
            for a, b in risky.ranges:
                for cp in range(a, b + 1):
                    nf, key = self._step_item(fr, cp)
                    g2 = g + utf8_len(cp)
                    tick += 1
                    if key is not None:
                        heapq.heappush(heap, (g2, tick, g2, None, k))
                        continue
                    if nf is None:
                        continue
                    h = m.cost(nf[2])
                    if h is None:
                        continue
                    if not nf[4]:
                        heapq.heappush(heap, (g2 + h, tick, g2 + h, None, k))
                        continue
                    abstract, digits = self._abstract(nf[2][0])
                    k2 = (abstract, nf[4])
                    if digits > _FRESH_NUMBER_DIGITS or best_g.get(k2, g2 + 1) <= g2:
                        continue
                    best_g[k2] = g2
                    parent[k2] = k
                    known = self._allowed.get(memo_of(k2), _UNKNOWN)
                    if known is None:
                        continue  # no fresh completion from there (as far as an earlier search could tell)
                    if known is not _UNKNOWN:
                        heapq.heappush(heap, (g2 + known, tick, g2 + known, None, k2))
                        continue
                    heapq.heappush(heap, (g2 + h, tick, g2, nf, k2))
        return None

    def _killer_cost(self, m: Machine, sub: RecState, risky: CharSet) -> int | None:
        """Cheapest finish of an item machine state after a character outside ``risky`` (that character's bytes
        included): from the machine's own cost table, exactly."""
        risky_bits = allowed_bytes(risky, b"") & _ASCII_BITS
        best = None
        for st in sub[0]:
            for d, mask in m._delta_table(st):
                total = 1 + d + st.base
                if best is not None and total >= best:
                    continue
                if mask & _ASCII_BITS & ~risky_bits:
                    best = total
                    continue
                for lead, iv in _LEADS:  # a multi-byte character: exact unless a risky one shares its lead byte
                    if not (mask >> lead) & 1:
                        continue
                    if not risky.intersects(*iv):
                        best = total
                        break
                    for a, b in (CharSet([iv]) - risky).ranges:
                        c = m._stacks_cost_range((st,), a, b)
                        if c is not None and (best is None or utf8_needed(lead) + c < best):
                            best = utf8_needed(lead) + c
        return best

    @staticmethod
    def _item_done(parent: Stack, key: tuple) -> Stack:
        """``parent`` once an item finished: a uniqueItems array frame records the item's value."""
        f = parent.frame
        if f[0] == T_A and f[4] is not None:
            return Stack((T_A, f[1], f[2], f[3], f[4] | {key}, f[5]), parent.parent, parent.base)
        return parent

    def _number_done(self, st: Stack) -> Stack:
        f, parent = st.frame, st.parent
        if parent.frame[0] == T_A and parent.frame[4] is not None:
            return self._item_done(parent, item_key("number", number_value(*f[2:])))
        return parent

    def _step_object(self, st: Stack, c: int) -> list[Stack]:
        _, s, phase, seen, key, esc = st.frame
        obj = s.obj
        if phase == O_KEY:
            r = lex_step(keymachine(obj, seen), key, esc, c)
            if r is None:
                return []
            if r is END:
                return [Stack((T_O, s, O_COLON, seen, key, 0), st.parent, st.base)]
            return [Stack((T_O, s, O_KEY, seen, r[0], r[1]), st.parent, st.base)]
        if c in WS_CODES:
            return [st]
        if phase == O_COLON:
            if c != 0x3A:
                return []
            if obj.hit is not None and obj.is_fresh(key, seen):
                # a name that may fail additionalProperties' schema (ExistsObjSpec): a run where its value does (the
                # object goes on as the plain node) and one where it does not (still waiting); exactly one survives
                out = []
                for alt, node in ((obj.yes, obj.hit), (obj.no, s)):
                    after = (T_O, node, O_AFTER, seen | {key}, None, 0)
                    rest = self.frame_cost(after)
                    if alt.min_cost is not None and rest is not None:
                        out.append(Stack((T_V, alt), Stack(after, st.parent, st.base), rest + st.base))
                return out
            after = (T_O, s, O_AFTER, seen | {key}, None, 0)
            pst = Stack(after, st.parent, st.base)
            return [Stack((T_V, obj.value_alt(key)), pst, self.frame_cost(after) + st.base)]
        if c == 0x22:
            if phase == O_COMMA or (phase != O_AFTER and _may_feed_key(keymachine(obj, seen))):
                return [Stack((T_O, s, O_KEY, seen, "", 0), st.parent, st.base)]
            return []
        if phase == O_COMMA:
            return []
        if c == 0x7D:
            return [st.parent] if _closable(obj, seen) else []
        if c == 0x2C and phase == O_AFTER:
            return (
                [Stack((T_O, s, O_COMMA, seen, None, 0), st.parent, st.base)]
                if _may_feed_key(keymachine(obj, seen))
                else []
            )
        return []

    # ---------------------------------------------------------------------------------------------------
    # queries

    def accepting(self, state: RecState) -> bool:
        if state[1]:
            return False
        for st in state[0]:
            f = st.frame
            if f[0] == T_R:
                return True
            if f[0] == T_N and st.parent.frame[0] == T_R:
                _, s, neg, ip, fr, ex = f
                if _number_complete(ip, fr, ex) and s.num.accepts_text(_number_text(neg, ip, fr, ex)):
                    return True
        return False

    def in_string(self, state: RecState) -> bool:
        for st in state[0]:
            f = st.frame
            if f[0] == T_U:
                return self._compound_part(f[1])[1].in_string(f[2])
            return f[0] == T_S or (f[0] == T_O and f[2] == O_KEY)
        return False

    def allowed(self, state: RecState) -> CharSet:
        """Next *characters* that keep a valid completion reachable (for the pending UTF-8 bytes, too)."""
        stacks = state[0]
        if len(stacks) == 1:
            return self._allowed_stack(stacks[0])
        acc = EMPTY
        for st in stacks:
            acc = acc | self._allowed_stack(st)
        return acc

    def _allowed_stack(self, st: Stack) -> CharSet:
        f = st.frame
        key = (f, st.parent.frame) if f[0] == T_N else f
        r = self._allowed.get(key)
        if r is None:
            if len(self._allowed) > _MEMO_LIMIT:
                self._allowed.clear()
            r = self._allowed[key] = self._compute_allowed(st)
        return r

    def _compute_allowed(self, st: Stack) -> CharSet:
        f = st.frame
        tag = f[0]
        if tag == T_V:
            return WS | f[1].first
        if tag == T_S:
            return lex_allowed(f[1], (f[2], f[3]), f[4])
        if tag == T_N:
            return self._number_allowed(st)
        if tag == T_L:
            return CharSet.of(f[1][f[2]])
        if tag == T_A:
            _, s, phase, i, taken, count = f
            arr = s.arr
            chars = []
            if phase == A_AFTER:
                if self._can_add(s, i, taken, count):
                    chars.append(",")
                if arr.closable(i, count):
                    chars.append("]")
                return WS | CharSet.of(*chars)
            out = WS
            if phase == A_START and arr.closable(0, count):
                out = out | CharSet.of("]")
            if self._can_add(s, i, taken, count):
                for alt, c in arr.branches(i, count):
                    if arr.rest_cost(i + 1, False, c) is None:
                        continue
                    if taken is None:
                        out = out | alt.first
                    else:
                        for x in self._items(alt, taken):
                            out = out | x.first
                        f0 = self._item_frame(alt, taken)
                        if f0 is not None and not _untracked(f0):  # "[" / "{": only if it can end as a new item
                            for ch in (0x5B, 0x7B):
                                if self._item_cost_after(f0, ch) is not None:
                                    out = out | CharSet([(ch, ch)])
            return out
        if tag == T_O:
            _, s, phase, seen, key, esc = f
            obj = s.obj
            if phase == O_KEY:
                return lex_allowed(keymachine(obj, seen), key, esc)
            if phase == O_COLON:
                return WS | CharSet.of(":")
            if phase == O_COMMA:
                return WS | CharSet.of('"')
            chars = []
            if keymachine(obj, seen).possible():
                chars.append("," if phase == O_AFTER else '"')
            if _closable(obj, seen):
                chars.append("}")
            return WS | CharSet.of(*chars)
        if tag == T_U:
            return self._item_allowed(f)
        return WS

    def _number_allowed(self, st: Stack) -> CharSet:
        _, s, neg, ip, fr, ex = st.frame
        num = s.num
        chars = []
        if ex is not None:  # only reachable by feeding text the mask would not produce
            chars.extend(DIGITS)
            if ex in ("e", "E"):
                chars.extend("+-")
            out = CharSet.of(*chars)
            if _number_complete(ip, fr, ex) and num.accepts_text(_number_text(neg, ip, fr, ex)):
                out = out | self._allowed_stack(self._number_done(st))
            return out
        if ip == "":
            chars.extend(d for d in DIGITS if num.cost(neg, d, None) is not None)
        elif fr is None:
            if ip != "0":
                chars.extend(d for d in DIGITS if num.cost(neg, ip + d, None) is not None)
            if num.cost(neg, ip, "") is not None:
                chars.append(".")
        else:
            chars.extend(d for d in DIGITS if num.cost(neg, ip, fr + d) is not None)
        out = CharSet.of(*chars)
        if ip != "" and fr != "" and num.cost(neg, ip, fr) == 0:
            out = out | self._allowed_stack(self._number_done(st))
        return out

    # costs ---------------------------------------------------------------------------------------------
    def frame_cost(self, f: tuple) -> int | None:
        """Cheapest way (bytes) to finish the value of frame ``f`` *and* close it (memoised per frame)."""
        key = ("cost", f)
        try:
            return self._allowed[key]
        except KeyError:
            pass
        r = self._frame_cost(f)
        if len(self._allowed) > _MEMO_LIMIT:
            self._allowed.clear()
        self._allowed[key] = r
        return r

    def _frame_cost(self, f: tuple) -> int | None:
        tag = f[0]
        if tag == T_V:
            return f[1].min_cost
        if tag == T_S:
            return lex_cost(f[1], (f[2], f[3]), f[4])
        if tag == T_N:
            _, s, neg, ip, fr, ex = f
            if ex is not None:
                ok = _number_complete(ip, fr, ex) and s.num.accepts_text(_number_text(neg, ip, fr, ex))
                return 0 if ok else None
            return s.num.cost(neg, ip, fr)
        if tag == T_L:
            return len(f[1]) - f[2]
        if tag == T_A:
            _, s, phase, i, taken, count = f
            arr = s.arr
            if phase == A_COMMA:
                best = None
                for alt, after_count in arr.branches(i, count):
                    if taken is None:
                        c = alt.min_cost
                    else:
                        costs = [x.min_cost for x in self._items(alt, taken)]
                        compound = self._compound_start_cost(alt, taken)
                        if compound is not None:
                            costs.append(compound)
                        c = min(costs, default=None)
                    r = arr.rest_cost(i + 1, False, after_count)
                    if c is not None and r is not None and (best is None or c + r < best):
                        best = c + r
                return best
            return arr.rest_cost(i, phase == A_START, count)
        if tag == T_O:
            _, s, phase, seen, key, esc = f
            obj = s.obj
            if phase == O_KEY:
                return lex_cost(keymachine(obj, seen), key, esc)
            if phase == O_COLON:
                t = obj.value_tail(seen, key)
                return None if t is None else 1 + t
            if phase == O_COMMA:
                c = keymachine(obj, seen).m_cost("")
                return None if c is None else 1 + c
            return obj.rest_cost(seen, phase == O_START)
        if tag == T_U:
            return self._fresh_cost(f)
        return 0

    def cost(self, state: RecState) -> int | None:
        """Fewest bytes that complete ``state`` to an accepted text (0 if it is accepted already)."""
        stacks, pending = state
        best = None
        if pending:
            lo, hi = utf8_prefix_interval(pending)
            c = self._stacks_cost_range(stacks, lo, hi)
            return None if c is None else utf8_needed(pending[0]) - len(pending) + c
        for st in stacks:
            c = self.frame_cost(st.frame)
            if c is not None and (best is None or c + st.base < best):
                best = c + st.base
        return best

    def _stacks_cost_range(self, stacks: tuple, lo: int, hi: int) -> int | None:
        """Cheapest completion after some character in ``lo..hi`` (a multi-byte character begun), not counting
        that character: only strings and names may hold one."""
        best = None
        for st in stacks:
            f = st.frame
            if f[0] == T_S:
                c = lex_cost_range(f[1], (f[2], f[3]), f[4], lo, hi)
            elif f[0] == T_O and f[2] == O_KEY:
                c = lex_cost_range(keymachine(f[1].obj, f[3]), f[4], f[5], lo, hi)
            elif f[0] == T_U:
                c = self._item_cost_range(f, lo, hi)
            else:
                c = None
            if c is not None and (best is None or c + st.base < best):
                best = c + st.base
        return best

    def _item_cost_range(self, f: tuple, lo: int, hi: int) -> int | None:
        """:meth:`_stacks_cost_range` of a U frame: each risky character in ``lo..hi`` exactly, the others by the
        item machine's own cost (after them no earlier item can be repeated)."""
        m = self._compound_part(f[1])[1]
        span = CharSet([(lo, hi)])
        risky = m.allowed(f[2]) & self._risky(f) & span if f[4] else EMPTY
        best = None
        for a, b in risky.ranges:
            for cp in range(a, b + 1):
                c = self._item_cost_after(f, cp)
                if c is not None and (best is None or c < best):
                    best = c
        for a, b in (span - risky).ranges:
            c = m._stacks_cost_range(f[2][0], a, b)
            if c is not None and (best is None or c < best):
                best = c
        return best

    # budget ------------------------------------------------------------------------------------------
    def bytes_within(self, state: RecState, bits: int, budget: int) -> int:
        """The bytes of ``bits`` after which the shortest completion is at most ``budget`` bytes."""
        stacks, pending = state
        out = 0
        for st in stacks:
            lim = budget - st.base
            table = self._delta_table(st) if not pending else self._pending_delta_table(st, pending)
            for d, mask in table:
                if d <= lim:
                    out |= mask
        return out & bits

    def _pending_delta_table(self, st: Stack, pending: bytes) -> list[tuple[int, int]]:
        """Like :meth:`_delta_table`, in the middle of a multi-byte character (cached per frame and bytes)."""
        f = st.frame
        key = ("pdelta", f, pending)
        r = self._allowed.get(key)
        if r is not None:
            return r
        by_delta: dict[int, int] = {}
        state = RecState(((st,), pending))
        bits = allowed_bytes(self._allowed_stack(st), pending)
        if f[0] == T_S and f[4] == 0 and f[1].dfa is None and not isinstance(f[1], ExcludingStrings) and bits:
            bits = bits & -bits  # free string content: every allowed continuation leads to the same cost
            single = True
        else:
            single = False
        all_bits = allowed_bytes(self._allowed_stack(st), pending)
        while bits:
            low = bits & -bits
            bits ^= low
            ns = self.step_byte(state, low.bit_length() - 1)
            if ns is not None:
                c = self.cost(ns)
                if c is not None:
                    by_delta[c - st.base] = by_delta.get(c - st.base, 0) | (all_bits if single else low)
        r = sorted(by_delta.items())
        if len(self._allowed) > _MEMO_LIMIT:
            self._allowed.clear()
        self._allowed[key] = r
        return r

    def _delta_table(self, st: Stack) -> list[tuple[int, int]]:
        """``[(delta, byte mask)]``: shortest completion after each allowed byte, minus ``st.base``.

        It depends only on the top frame (and the parent frame for numbers), so it is cached per frame.
        """
        f = st.frame
        key = ("delta", f, st.parent.frame) if f[0] == T_N else ("delta", f)
        r = self._allowed.get(key)
        if r is not None:
            return r
        by_delta: dict[int, int] = {}

        def put(d, mask):
            if d is not None and mask:
                by_delta[d] = by_delta.get(d, 0) | mask

        tag = f[0]
        if tag == T_S and f[4] == 0 and not isinstance(f[1], ExcludingStrings):
            self._string_deltas(f[1], (f[2], f[3]), None, put)
        elif tag == T_O and f[2] == O_KEY and f[5] == 0 and not isinstance(f[1].obj, PatternObjSpec):
            # (names under patternProperties / propertyNames take the byte-by-byte path below: exact, and rare)
            self._string_deltas(keymachine(f[1].obj, f[3]), f[4], f, put)
        else:
            bits = allowed_bytes(self._allowed_stack(st), b"")
            single = RecState(((st,), b""))
            while bits:
                low = bits & -bits
                bits ^= low
                b = low.bit_length() - 1
                ns = self.step_byte(single, b)
                if ns is not None:
                    c = self.cost(ns)
                    put(None if c is None else c - st.base, low)
        r = sorted(by_delta.items())
        if len(self._allowed) > _MEMO_LIMIT:
            self._allowed.clear()
        self._allowed[key] = r
        return r

    def _string_deltas(self, m, ms, key_frame, put) -> None:
        """Delta table of ordinary string/key content, grouping bytes that provably lead to equal costs."""
        D = m.m_allowed(ms)
        if m.m_can_end(ms):
            if key_frame is None:
                put(0, 1 << 0x22)
            else:
                _, s, _, seen, _, _ = key_frame
                put(self.frame_cost((T_O, s, O_COLON, seen, ms, 0)), 1 << 0x22)
        if D:
            put(lex_cost(m, ms, 1), 1 << 0x5C)
        ordinary = D & _ASCII_ORDINARY
        raw_bits = allowed_bytes(D & _RAW, b"")  # ordinary ASCII + allowed lead bytes
        if isinstance(m, KeyMachine):
            special = m.special_next(ms)
            generic = m.generic_cost(ms)
            special_bits = 0
            for c in special:
                if c < 0x80 and c in ordinary:
                    ms2 = m.m_step(ms, c)
                    put(None if ms2 is None else m.m_cost(ms2), 1 << c)
                    special_bits |= 1 << c
                elif c >= 0x80:
                    special_bits |= 1 << chr(c).encode("utf-8")[0]
            put(generic, raw_bits & _ASCII_BITS & ~special_bits)
            if generic is not None:
                for n_bytes, lead_mask in _LEAD_CLASSES:
                    put(n_bytes - 1 + generic, raw_bits & lead_mask & ~special_bits)
            for lead, iv in _LEADS:  # lead bytes of special non-ASCII characters: exactly
                if (special_bits >> lead) & 1 and D.intersects(*iv):
                    c = m.m_cost_range(ms, *iv)
                    put(None if c is None else utf8_needed(lead) - 1 + c, 1 << lead)
            return
        if m.dfa is None:
            ms2 = m.m_step(ms, ordinary.min()) if ordinary else None
            cost = None if ms2 is None else m.m_cost(ms2)
            put(cost, raw_bits & _ASCII_BITS)
            after = m.m_cost_range(ms, 0x80, 0x10FFFF)
            if after is not None:
                for n_bytes, lead_mask in _LEAD_CLASSES:
                    put(n_bytes - 1 + after, raw_bits & lead_mask)
            return
        q, n = ms
        n1 = m.norm(n + 1)
        for a, b, t in m.dfa.trans[q]:
            if a > 0x7F:
                break
            put(m.cost(t, n1), allowed_bytes(ordinary & CharSet([(a, min(b, 0x7F))]), b""))
        if D.ranges and D.ranges[-1][1] >= 0x80:
            for lead, iv in _LEADS:
                if D.intersects(*iv):
                    c = m.m_cost_range(ms, *iv)
                    put(None if c is None else utf8_needed(lead) - 1 + c, 1 << lead)

    def shortest_completion(self, state: RecState) -> bytes | None:
        """A cheapest byte string that completes ``state`` (None if there is none)."""
        out = bytearray()
        guard = 0
        while True:
            c0 = self.cost(state)
            if c0 is None:
                return None
            if c0 == 0 and self.accepting(state):
                return bytes(out)
            guard += 1
            if guard > 1_000_000:
                return None
            chosen = None
            allowed = self.allowed(state)
            if state[1]:
                lo, hi = utf8_prefix_interval(state[1])
                allowed = allowed & CharSet([(lo, hi)])
            for cp in _candidates(allowed, state):
                data = chr(cp).encode("utf-8")[len(state[1]) :]
                ns = self.step_bytes(state, data)
                if ns is None:
                    continue
                c = self.cost(ns)
                if c is not None and len(data) + c <= c0:
                    chosen = (data, ns)
                    break
            if chosen is None:
                return None
            out += chosen[0]
            state = chosen[1]


def _candidates(cs: CharSet, state: RecState):
    """Characters worth trying when building a shortest completion: all ASCII members, then samples."""
    for a, b in cs.ranges:
        yield from range(a, min(b, 0x7F) + 1)
    starts: set[int] = set()
    _string_starts(state[0], starts)
    for a, b in cs.ranges:
        if b < 0x80:
            continue
        a = max(a, 0x80)
        for edge in (0x80, 0x800, 0x10000):
            if a < edge <= b:
                yield edge
        yield a
        for lo in sorted(starts):
            if a <= lo <= b:
                yield lo


_UNKNOWN = object()


def _fresh_memo_key(node: int, key: tuple, taken: frozenset) -> tuple:
    """The memo key of the cheapest fresh completion from a U frame: its item node, its frame key (the item
    machine's stacks without nested items' texts, and the ``const`` machines still alive), the earlier items."""
    return ("fresh", node, key, taken)


def _untracked(f: tuple) -> bool:
    """Whether U frame ``f`` (before its item starts) has an earlier item with no ``const`` machine (a number of 309+
    digits reads as infinity; nesting 300+ deep): the mask could not steer around it, so it starts no array or
    object item after one (feeding still judges such items exactly, by their keys)."""
    return len(f[4]) < len(f[5])


def _string_starts(stacks: tuple, out: set[int]) -> None:
    """Characters a shortest completion may need beyond the samples of a range: the first character of each
    transition of the string automata on top of ``stacks``, the next characters of the declared names being
    written (``"prénom"``), and the same inside U frames."""
    for st in stacks:
        f = st.frame
        if f[0] == T_S and f[1].dfa is not None:
            for lo, _, _ in f[1].dfa.trans[f[2]]:
                out.add(lo)
        elif f[0] == T_O and f[2] == O_KEY and f[5] == 0:
            km = keymachine(f[1].obj, f[3])
            if isinstance(km, KeyMachine):
                out.update(km.special_next(f[4]))
        elif f[0] == T_U:
            _string_starts(f[2][0], out)


def keymachine(obj, seen: frozenset) -> KeyMachine | PatternKeyMachine:
    km = obj._keym.get(seen)
    if km is None:
        if len(obj._keym) > 50_000:
            obj._keym.clear()
        cls = PatternKeyMachine if isinstance(obj, PatternObjSpec) else KeyMachine
        km = obj._keym[seen] = cls(obj, seen)
    return km


def _may_feed_key(km) -> bool:
    """Whether a fed key may start: some generable name, or (patternkeys.py) a name outside the generation
    alphabet, which is judged only when it ends."""
    return km.possible() or getattr(km, "outside_names", False)


def _closable(obj, seen: frozenset) -> bool:
    return obj.closable(seen)


def _number_text(neg, ip, fr, ex) -> str:
    return ("-" if neg else "") + ip + ("" if fr is None else "." + fr) + (ex or "")


def _number_complete(ip, fr, ex) -> bool:
    return ip != "" and fr != "" and (ex is None or ex[-1] in DIGITS)


def _number_next(neg, ip, fr, ex, c: int):
    """Syntactic continuation of a number: new (neg, ip, fr, ex), False (invalid), None (c ends the number)."""
    d = _DIGIT_CPS.get(c)
    if ex is None:
        if ip == "":
            return (neg, d, None, None) if d is not None else False
        if fr is None:
            if d is not None:
                return None if ip == "0" else (neg, ip + d, None, None)
            if c == 0x2E:
                return (neg, ip, "", None)
        elif d is not None:
            return (neg, ip, fr + d, None)
        elif fr == "":
            return False
        if c in (0x65, 0x45):
            return (neg, ip, fr, chr(c))
        return None
    if d is not None:
        return (neg, ip, fr, ex + d)
    if ex in ("e", "E"):
        return (neg, ip, fr, ex + chr(c)) if c in (0x2B, 0x2D) else False
    if ex[-1] in "+-":
        return False
    return None


__all__ = ["Machine", "RecState", "Stack", "utf8_len"]
