"""The supported subset of ``format``, each as an anchored regular expression for :mod:`.regex`.

Draft 2020-12 treats ``format`` as an annotation by default; omnifuse *asserts* it (``formats="assert"``, the
default of :func:`~.compiler.compile_schema`) because a user who asks for a date expects a date. Unknown formats
raise :class:`~.errors.UnsupportedSchemaError`; ``formats="annotation"`` follows the spec default and ignores
``format`` entirely. Each expression accepts a subset of what the RFC allows, never more:

=============  =======================================================================================
format         accepted language
=============  =======================================================================================
date           RFC 3339 full-date ``YYYY-MM-DD``, year 0001-9999, real day-of-month incl. leap years
time           RFC 3339 full-time ``hh:mm:ss[.frac](Z|z|+hh:mm|-hh:mm)``, seconds 00-59 (no leap second)
date-time      ``date`` + ``T``/``t`` + ``time``
uuid           RFC 4122 textual form, 8-4-4-4-12 hex digits (any case)
ipv4           dotted quad, each 0-255 without leading zeros
hostname       1-4 dot-separated labels of letters, digits, inner hyphens; first <= 63, others <= 62 chars
email          dot-atom local part ``[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]`` @ a ``hostname``
=============  =======================================================================================
"""

from __future__ import annotations

_D = "[0-9]"
_YEAR = f"(?:[1-9]{_D}{{3}}|0[1-9]{_D}{{2}}|00[1-9]{_D}|000[1-9])"
_LEAP = f"(?:{_D}{{2}}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
DATE = (
    f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]{_D}|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]{_D}|30)"
    f"|02-(?:0[1-9]|1{_D}|2[0-8]))|{_LEAP}-02-29)"
)
_HH = "(?:[01][0-9]|2[0-3])"
_MM = "[0-5][0-9]"
TIME = f"{_HH}:{_MM}:{_MM}(?:\\.{_D}+)?(?:[Zz]|[+-]{_HH}:{_MM})"
DATE_TIME = f"{DATE}[Tt]{TIME}"
_H = "[0-9a-fA-F]"
UUID = f"{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"
_LABEL63 = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LABEL62 = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,60}[A-Za-z0-9])?"
HOSTNAME = f"{_LABEL63}(?:\\.{_LABEL62}){{0,3}}"
_ATOM = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL = f"{_ATOM}(?:\\.{_ATOM})*@{HOSTNAME}"

FORMATS: dict[str, str] = {
    "date": DATE,
    "time": TIME,
    "date-time": DATE_TIME,
    "uuid": UUID,
    "ipv4": IPV4,
    "hostname": HOSTNAME,
    "email": EMAIL,
}


def format_pattern(name: str) -> str | None:
    """Anchored pattern for a supported format, or None."""
    p = FORMATS.get(name)
    return None if p is None else f"^(?:{p})$"
