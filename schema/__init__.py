"""JSON-Schema-constrained decoding: schema compiler, incremental recogniser, token masks.

Every output generated under a schema parses with ``json.loads`` and validates against it - also for an
untrained model - because the compiler *fails closed*: a keyword it cannot enforce raises
:class:`UnsupportedSchemaError` instead of being ignored.

* :func:`compile_schema` -> :class:`CompiledSchema` (:mod:`.compiler`, :mod:`.compiled`)
* :class:`Recogniser` - incremental, byte- or character-level, immutable state (:mod:`.recogniser`)
* :class:`JsonSchemaLogitsProcessor` - per-step token masks for batched / beam decoding (:mod:`.logits`)

The supported subsets of ``pattern`` and ``format`` are documented in :mod:`.regex` and :mod:`.formats`.
"""

from .compiled import CompiledSchema, Recogniser, compile_schema
from .errors import SchemaError, UnsupportedSchemaError

__all__ = [
    "CompiledSchema",
    "JsonSchemaLogitsProcessor",
    "Recogniser",
    "SchemaError",
    "UnsupportedSchemaError",
    "compile_schema",
]


def __getattr__(name: str):
    if name == "JsonSchemaLogitsProcessor":  # imports torch lazily
        from .logits import JsonSchemaLogitsProcessor

        return JsonSchemaLogitsProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
