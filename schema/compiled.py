"""Public entry points: :func:`compile_schema`, :class:`CompiledSchema` and the stateful :class:`Recogniser`.

>>> compiled = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
>>> rec = compiled.recogniser()
>>> rec.feed('{"a": 1')
True
>>> rec.accepting, rec.min_chars_to_complete, rec.shortest_completion()
(False, 1, b'}')
>>> rec.feed("}"), rec.accepting
(True, True)
"""

from __future__ import annotations

import copy as _copy
import gc
from collections import OrderedDict
from collections.abc import Mapping
from threading import Lock

from .charset import CharSet, allowed_bytes
from .compiler import Compiler, dumps_key
from .drafts import DRAFT4, DRAFT6, DRAFT7, detect_draft, original_location, upgrade
from .errors import SchemaError, UnsupportedSchemaError
from .recogniser import Machine, RecState

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 128
_LOCK = Lock()


class CompiledSchema:
    """A compiled JSON Schema. Cheap to share: all per-state caches live inside it."""

    def __init__(self, schema, formats: str = "assert", resources: Mapping | None = None) -> None:
        self.schema = schema
        self.formats = formats
        self.resources = dict(resources or {})
        # Compiling builds hundreds of thousands of small objects that live as long as the result: the cyclic
        # collector would walk them again and again for nothing (~20 % of Azure Pipelines' compile time). It is off
        # while this thread compiles and back on after; cycles left behind are collected then.
        collecting = gc.isenabled()
        gc.disable()
        try:
            upgraded, renamed = upgrade(schema)  # an older draft's schema: its 2020-12 equivalent
            compiler = Compiler(upgraded, formats, self.resources, _prepare_resource, detect_draft(schema))
            try:
                self.root = compiler.compile()
            except UnsupportedSchemaError as e:
                if not renamed:
                    raise
                keyword, path = original_location(e.keyword, e.path, renamed)  # name what the user wrote
                raise UnsupportedSchemaError(keyword, path, e.detail) from e
        finally:
            if collecting:
                gc.enable()
        self.num_nodes = len(compiler.simples)
        self.machine = Machine(self.root)
        self._slack: int | None = None

    @property
    def satisfiable(self) -> bool:
        """Whether any instance exists at all (an unsatisfiable schema cannot drive generation)."""
        return self.root.min_cost is not None

    @property
    def min_chars(self) -> int | None:
        """Bytes of the shortest valid instance."""
        return self.root.min_cost

    def check_generation(self, max_new_tokens: int | None) -> None:
        """Raise :class:`~.errors.SchemaError` unless an instance can be generated within ``max_new_tokens`` bytes.

        Use it to reject a record up front (e.g. when collecting per-record errors); the logits processor runs
        the same check for every row when it is constructed.
        """
        if not self.satisfiable:
            raise SchemaError("the schema admits no instance", "#")
        if max_new_tokens is not None and self.min_chars > max_new_tokens:
            raise SchemaError(
                f"max_new_tokens={max_new_tokens} is shorter than the shortest valid instance ({self.min_chars} bytes)",
                "#",
            )

    @property
    def initial_state(self) -> RecState:
        return self.machine.initial

    def recogniser(self) -> Recogniser:
        return Recogniser(self)

    def accepts(self, text: str | bytes) -> bool:
        """Whether the complete text is a valid instance (parses as JSON and validates)."""
        rec = self.recogniser()
        return rec.feed(text) and rec.accepting

    def budget_slack(self) -> int:
        """An upper bound on how much one more byte can raise the shortest completion (for budget checks).

        A byte raises it at most by the cost of what it opens: a value of some kind, an object entry (key and
        value), a branch of a string automaton or a number's first digit. Below that margin the processor
        checks every candidate byte exactly.
        """
        if self._slack is None:
            m = 0
            seen = set()
            stack = [self.root]
            while stack:
                alt = stack.pop()
                if id(alt) in seen:
                    continue
                seen.add(id(alt))
                m = max(m, alt.min_cost or 0)
                for s in alt.simples:
                    m = max([m, *s.kind_cost.values()])
                    if s.num is not None:
                        firsts = [s.num.cost(True, "", None)] + [s.num.cost(False, d, None) for d in "0123456789"]
                        m = max([m] + [c + 1 for c in firsts if c is not None])
                    if s.str is not None and s.str.dfa is not None:
                        s.str.cost(0, 0)
                        table = s.str._cost or {}
                        m = max([m] + [v + 1 for v in table.values() if v is not None])
                    if s.arr is not None:
                        stack.extend(s.arr.prefix)
                        stack.append(s.arr.items)
                    if s.obj is not None:
                        values = [*s.obj.props.values(), s.obj.additional]
                        if s.obj.hit is not None:  # a fresh name's value as it fails / passes (ExistsObjSpec)
                            values += [s.obj.yes, s.obj.no]
                        fresh = getattr(s.obj, "keys", None)  # names classified by patterns (patternkeys.py)
                        if fresh is not None:
                            values.extend(a for a in fresh.final if a is not None)
                            # the dearest cheapest completion of any name prefix (value included)
                            m = max([m] + [d + 8 for d in fresh.distances() if d is not None])
                        stack.extend(values)
                        keys = [len(n.encode("utf-8")) * 6 + 2 for n in s.obj.special]
                        entry = max(keys, default=4) + 1 + max(a.min_cost or 0 for a in values)
                        m = max(m, entry + 2)
            self._slack = m + 16
        return self._slack


def _prepare_resource(document, referring: str) -> tuple[object, str]:
    """A resource document as 2020-12, and its draft: the one it declares, else the referring document's (as
    ``jsonschema`` reads it). Drafts 4-7 ignore the siblings of a ``$ref``, but ``jsonschema`` applies them when the
    ``$ref`` is a referenced document's root: such a document is refused rather than judged differently."""
    draft = detect_draft(document) if isinstance(document, dict) and "$schema" in document else referring
    if isinstance(document, dict) and "$ref" in document and draft in (DRAFT4, DRAFT6, DRAFT7):
        ignored = set(document) - {"$ref", "definitions", "$schema", "$id", "id", "$comment", "title", "description"}
        if ignored:
            raise UnsupportedSchemaError(
                "$ref", "#", f"a {draft} document whose root has $ref beside {sorted(ignored)}"
            )
    return upgrade(document, draft)[0], draft


def compile_schema(schema, formats: str = "assert", resources: Mapping | None = None) -> CompiledSchema:
    """Compile a JSON Schema (``dict`` or ``bool``) for recognition and constrained decoding: draft 2020-12, or the
    draft 4, 6, 7 or 2019-09 its root ``$schema`` declares (rewritten to 2020-12 first, :mod:`.drafts`).

    Raises :class:`~.errors.UnsupportedSchemaError` naming the keyword and its JSON Pointer when the schema uses
    something the compiler does not implement, and :class:`~.errors.SchemaError` for malformed schemas.
    ``formats="assert"`` (default) enforces the supported ``format`` subset and refuses other formats;
    ``"annotation"`` ignores ``format`` as the specification's default vocabulary does. ``resources``: other schema
    documents by absolute URI (``{"https://example.com/defs.json": {...}}``) that a ``$ref`` may point into; each is
    read in the draft its own ``$schema`` declares, else the schema's. Nothing is fetched: a ``$ref`` to a URI that
    is neither in the schema nor in ``resources`` is refused. Results are cached.
    """
    if not isinstance(schema, (dict, bool)):
        raise SchemaError(f"a schema must be an object or a boolean, got {type(schema).__name__}", "#")
    for uri, document in (resources or {}).items():
        if not isinstance(uri, str) or not isinstance(document, (dict, bool)):
            raise SchemaError(f"resources map URIs to schemas, got {uri!r}: {type(document).__name__}", "#")
    key = (dumps_key(schema), formats, dumps_key(resources) if resources else None)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    compiled = CompiledSchema(_copy.deepcopy(schema), formats, _copy.deepcopy(dict(resources or {})))
    with _LOCK:
        _CACHE[key] = compiled
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return compiled


class Recogniser:
    """Incremental recogniser over UTF-8 bytes (or text). The underlying state is immutable; ``copy`` is O(1).

    ``feed`` returns False and leaves the state unchanged when the input cannot be part of a valid instance.
    """

    __slots__ = ("compiled", "machine", "state")

    def __init__(self, compiled: CompiledSchema, state: RecState | None = None) -> None:
        self.compiled = compiled
        self.machine = compiled.machine
        self.state = compiled.initial_state if state is None else state

    def feed(self, data: str | bytes | int) -> bool:
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, int):
            data = bytes((data,))
        st = self.machine.step_bytes(self.state, data)
        if st is None:
            return False
        self.state = st
        return True

    def copy(self) -> Recogniser:
        return Recogniser(self.compiled, self.state)

    @property
    def dead(self) -> bool:
        return not self.state[0]

    @property
    def accepting(self) -> bool:
        """Whether the text fed so far is a complete, valid instance."""
        return self.machine.accepting(self.state)

    @property
    def in_string(self) -> bool:
        return self.machine.in_string(self.state)

    def allowed_next(self) -> CharSet:
        """Characters that keep a valid completion reachable (generation grammar; see :mod:`.numbers`)."""
        return self.machine.allowed(self.state)

    def allowed_bytes(self) -> int:
        """The same as a 256-bit mask over the next byte."""
        return allowed_bytes(self.machine.allowed(self.state), self.state[1])

    @property
    def min_chars_to_complete(self) -> int | None:
        """Fewest bytes that complete the text (0 when accepting; None when no completion exists)."""
        return self.machine.cost(self.state)

    def shortest_completion(self) -> bytes | None:
        """One cheapest completion as UTF-8 bytes (bytes, since the text may end inside a character)."""
        return self.machine.shortest_completion(self.state)
