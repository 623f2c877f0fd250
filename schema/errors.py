"""Errors raised while compiling a JSON Schema for constrained decoding.

The compiler *fails closed*: a keyword that would constrain instances but is not implemented raises
:class:`UnsupportedSchemaError` naming the keyword and its location in the schema (a JSON Pointer), instead of
being silently ignored. A schema that is malformed (wrong keyword value types, an unresolvable local ``$ref``,
an invalid regular expression) raises :class:`SchemaError`.
"""

from __future__ import annotations


class SchemaError(ValueError):
    """The schema is malformed or cannot be compiled (too large, unresolvable local reference, ...)."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{message} (at {path or '#'})" if path is not None else message)


class UnsupportedSchemaError(SchemaError):
    """A keyword that constrains instances is not (or not in this form) supported by the compiler.

    ``keyword`` is the schema keyword (``"multipleOf"``, ``"pattern"``, ...), ``path`` the JSON Pointer of the
    schema object that holds it (``"#/properties/a"``) and ``detail`` an optional explanation.
    """

    def __init__(self, keyword: str, path: str, detail: str = "") -> None:
        self.keyword = keyword
        self.detail = detail
        msg = f"unsupported keyword {keyword!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg, path or "#")
