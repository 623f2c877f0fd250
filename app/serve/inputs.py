"""One request to ``POST /predict``: its fields -> a checked, canonical record, or ``RequestError``.

A request is a JSON object (or the same fields as a multipart form, files for the media)::

    {"id": "q1", "task": "vqa", "text": "what shape is in the image?", "image": "<base64 PNG/JPEG ...>"}

``task`` is required; ``image`` and ``audio`` are base64 strings (a ``data:...;base64,`` URL prefix is accepted) or, in a
form, uploaded files; ``schema`` (task ``json``) is an inline JSON Schema object; ``id`` is optional. At least one of
``image`` / ``audio`` / ``text``. No field is ever read as a path: the server opens no file a request names.

Everything is checked here, in the HTTP process, before the request joins a batch: a bad request is answered on its
own (4xx naming the field and the reason) and never reaches, let alone fails, the batch of good ones it arrived with.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import soundfile as sf

from omnifuse.data.loaders import DEFAULT_MAX_PIXELS, LoadError, TooLargeError, decode_image, load_audio
from omnifuse.data.records import MAX_ID_CHARS, MAX_TEXT_BYTES
from omnifuse.data.tokenizer import TASKS

FIELDS = ("id", "task", "text", "image", "audio", "schema")
MEDIA = ("image", "audio")


@dataclass(frozen=True)
class ServeLimits:
    """What one request may carry. Larger bodies and media are refused with 413 before any decoding."""

    max_body_bytes: int = 32 * 2**20  # the whole request (base64 inflates media by 4/3)
    max_image_bytes: int = 16 * 2**20  # one encoded image file
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # checked on the header, before decoding
    max_audio_bytes: int = 16 * 2**20  # one encoded audio file
    max_audio_seconds: float = 30.0  # longer clips are refused, not cut (a batch job cuts them at the model's cap)
    max_text_bytes: int = MAX_TEXT_BYTES
    max_schema_bytes: int = 1_000_000


@dataclass(frozen=True)
class ServeSettings:
    """The model's input settings (as ``omnifuse predict`` uses them) and the request limits."""

    image_size: int | None = 64
    sample_rate: int = 16000
    max_new_tokens: int = 32  # a schema whose shortest instance needs more cannot be enforced
    limits: ServeLimits = ServeLimits()
    # the model's generation.schema_resources ({URI: local file}): documents a request's schema may $ref
    schema_resources: tuple[tuple[str, str], ...] = ()


class RequestError(Exception):
    """A request that cannot be served: ``status`` (4xx), the ``field`` at fault and the ``reason``."""

    def __init__(self, field: str, reason: str, status: int = 400) -> None:
        self.field = field
        self.reason = reason
        self.status = status
        super().__init__(f"field {field!r}: {reason}")

    def body(self) -> dict:
        return {"error": {"field": self.field, "reason": self.reason}}


def _base64_bytes(value: Any, field: str, max_bytes: int) -> bytes:
    if isinstance(value, (bytes, bytearray)):  # an uploaded file
        data = bytes(value)
    elif isinstance(value, str):
        text = "".join(value.split())  # base64 wrapped at 76 columns (GNU base64, MIME) is still base64
        if text.startswith("data:"):  # a data URL, as a browser's FileReader writes it
            header, sep, text = text.partition(",")
            if not sep or not header.endswith(";base64"):
                raise RequestError(field, "a data URL must be base64 encoded (data:<type>;base64,<data>)")
        if math.ceil(len(text) * 3 / 4) > max_bytes + 3:
            raise RequestError(field, f"too large (over {max_bytes:,} bytes; the limit is configurable)", 413)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(
                field, "must be the file's content in base64 (a request never names a file on the server)"
            ) from None
    else:
        raise RequestError(field, f"must be a base64 string or an uploaded file, got {type(value).__name__}")
    if not data:
        raise RequestError(field, "is empty (leave the field out when a request has no " + field + ")")
    if len(data) > max_bytes:
        raise RequestError(field, f"too large ({len(data):,} bytes; the limit is {max_bytes:,})", 413)
    return data


def audio_seconds(data: bytes) -> float:
    """Duration of an encoded clip from its header (nothing decoded), or ``LoadError``."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 -- libsndfile on crafted bytes: the upload's fault
        raise LoadError(f"file is not a readable audio file ({type(e).__name__})") from None
    if info.samplerate <= 0:
        raise LoadError(f"audio declares a sample rate of {info.samplerate} Hz")
    return info.frames / info.samplerate


def _utf8(value: str, field: str) -> bytes:
    # JSON lets a string hold a lone surrogate (\ud800), which no UTF-8 byte sequence spells: the tokenizer could not
    # encode it, and the failure would land inside a batch.
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(field, "is not valid Unicode (it holds a lone surrogate code point)") from None


def _text(value: Any, field: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_bytes:  # each character is at least one byte
        raise RequestError(field, f"too large ({len(value):,}+ bytes; the limit is {max_bytes:,})", 413)
    size = len(_utf8(value, field))
    if size > max_bytes:
        raise RequestError(field, f"too large ({size:,} bytes; the limit is {max_bytes:,})", 413)
    return value


def check_request(fields: Mapping[str, Any], settings: ServeSettings) -> dict:
    """Check one request's fields and return its canonical JSON form (media as base64 strings) for the model worker.

    Raises ``RequestError`` on the first problem: an unknown field, a missing or unknown task, media that are not
    base64 or do not decode (the same decoders as a batch job, so what passes here loads there), media or text over
    the limits (413), or a JSON Schema that cannot be enforced within the model's token budget (422)."""
    limits = settings.limits
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"unknown field; a request has {', '.join(FIELDS)}")
    out: dict[str, Any] = {}

    rid = fields.get("id")
    if rid is not None:
        if not isinstance(rid, str) or not rid.strip():
            raise RequestError("id", "must be a non-empty string when given")
        if len(rid) > MAX_ID_CHARS:
            raise RequestError("id", f"too long ({len(rid)} characters; the limit is {MAX_ID_CHARS})")
        _utf8(rid, "id")
        out["id"] = rid

    task = fields.get("task")
    if task not in TASKS:
        raise RequestError("task", f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    out["task"] = task

    if fields.get("text") is not None:
        text = _text(fields["text"], "text", limits.max_text_bytes)
        if not text.strip():
            raise RequestError("text", "is empty (leave the field out when a request has no text)")
        out["text"] = text

    if fields.get("image") is not None:
        data = _base64_bytes(fields["image"], "image", limits.max_image_bytes)
        try:
            decode_image(data, settings.image_size, limits.max_image_pixels)
        except LoadError as e:
            raise RequestError("image", str(e), 413 if isinstance(e, TooLargeError) else 400) from None
        out["image"] = base64.b64encode(data).decode("ascii")

    if fields.get("audio") is not None:
        data = _base64_bytes(fields["audio"], "audio", limits.max_audio_bytes)
        try:
            seconds = audio_seconds(data)
            if seconds > limits.max_audio_seconds:
                raise RequestError("audio", f"{seconds:.1f} s long; the limit is {limits.max_audio_seconds:g} s", 413)
            load_audio(data, settings.sample_rate, max_seconds=None)  # decodes: catches truncation, NaN, odd rates
        except LoadError as e:
            raise RequestError("audio", str(e)) from None
        out["audio"] = base64.b64encode(data).decode("ascii")

    if fields.get("schema") is not None:
        schema = fields["schema"]
        if task != "json":
            raise RequestError("schema", f"a schema is only used by task 'json', not {task!r}")
        if not isinstance(schema, dict):
            raise RequestError("schema", f"must be a JSON Schema object, got {type(schema).__name__}")
        try:
            encoded = _utf8(json.dumps(schema, ensure_ascii=False), "schema")
        except (ValueError, RecursionError):  # circular or too deep to serialise: not a JSON document
            raise RequestError("schema", "is not a serialisable JSON document") from None
        if len(encoded) > limits.max_schema_bytes:
            raise RequestError("schema", f"too large (the limit is {limits.max_schema_bytes:,} bytes)", 413)
        from omnifuse.schema import SchemaError, compile_schema
        from omnifuse.tasks.inference import read_schema_resources

        try:  # compiled schemas are cached, so a burst of requests with one schema compiles it once
            resources = read_schema_resources(dict(settings.schema_resources))  # read (and checked) at start
            compile_schema(schema, resources=resources).check_generation(settings.max_new_tokens)
        except SchemaError as e:
            raise RequestError("schema", f"cannot be enforced: {e}", 422) from None
        except RecursionError:
            raise RequestError("schema", "cannot be enforced: nested too deeply", 422) from None
        out["schema"] = schema

    if not any(m in out for m in ("image", "audio", "text")):
        raise RequestError("<request>", "request has no input: give at least one of 'image', 'audio', 'text'")
    return out


def form_fields(form: Mapping[str, Any]) -> dict:
    """Multipart form values -> request fields: strings as they are (``schema`` parsed as JSON), files as bytes.

    ``form`` maps names to ``str`` or to already-read file contents (``bytes``)."""
    fields: dict[str, Any] = {}
    for name, value in form.items():
        if isinstance(value, bytes) and name not in MEDIA:  # a text field sent as a file part (e.g. -F schema=@s.json)
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(name, "is not valid UTF-8") from None
        if name == "schema" and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise RequestError("schema", f"is not valid JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:
                raise RequestError("schema", f"is not valid JSON ({e})") from None
        fields[name] = value
    return fields
