"""The HTTP gate of ``omnifuse serve``: an ASGI middleware in front of every route.

1. Authentication, when the server has an API key: every request (page, health, metrics, predictions) must carry it
   as ``X-API-Key: KEY``, ``Authorization: Bearer KEY`` or HTTP Basic auth with KEY as the password (what a browser
   sends after its login prompt, so the page works too); anything else is answered 401.
2. ``POST /predict``: the body (JSON, or a multipart form with files) is read up to the size limit, checked by
   ``inputs.check_request`` and replaced by its canonical JSON before LitServe queues it. A bad request is answered
   here, 4xx with the field and the reason, and never joins a batch.
3. Metrics: requests by path and status, and the latency of ``POST /predict``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from typing import Any

import anyio
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnifuse.app.serve import metrics
from omnifuse.app.serve.inputs import RequestError, ServeSettings, check_request, form_fields

PREDICT_PATH = "/predict"
# Requests checked at once (each decodes its media): more would only queue for the same cores, and hold their
# decoded pixels in memory meanwhile.
CHECKS_AT_ONCE = 2


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    """The API key a request carries, in any of the accepted forms, or None."""
    key = _header(scope, b"x-api-key")
    if key:
        return key
    auth = _header(scope, b"authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            _user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or None
    return None


async def _json_response(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError("<body>", f"not valid JSON ({e})") from None
    except RecursionError:
        raise RequestError("<body>", "not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer literal over Python's 4,300-digit conversion limit
        raise RequestError("<body>", f"not valid JSON ({e})") from None


class ServeGate:
    """ASGI middleware: authentication, request checking and rewriting for ``POST /predict``, metrics."""

    def __init__(self, app: ASGIApp, settings: ServeSettings, api_key: str | None = None) -> None:
        self.app = app
        self.settings = settings
        self.api_key = api_key
        self.limiter = anyio.CapacityLimiter(CHECKS_AT_ONCE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status_box = {"status": 499}  # no response started: the client went away first (nginx's "client closed")

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self._handle(scope, receive, send_counted, path)
        finally:
            route = path if path in (PREDICT_PATH, "/", "/health", "/metrics", "/info") else "other"
            metrics.REQUESTS.labels(route, str(status_box["status"])).inc()
            if path == PREDICT_PATH:
                metrics.LATENCY.observe(time.perf_counter() - start)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if self.api_key is not None:
            key = presented_key(scope)
            if key is None or not hmac.compare_digest(key.encode("utf-8"), self.api_key.encode("utf-8")):
                await _json_response(
                    send,
                    401,
                    {"error": {"field": "<auth>", "reason": "missing or wrong API key (X-API-Key header)"}},
                    [(b"www-authenticate", b'Basic realm="omnifuse"')],
                )
                return
        if path != PREDICT_PATH or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        try:
            content_type, raw = await self._body(scope, receive)
            fields = await self._fields(scope, content_type, raw)
            canonical = await anyio.to_thread.run_sync(check_request, fields, self.settings, limiter=self.limiter)
            body = json.dumps(canonical).encode("utf-8")
        except RequestError as error:
            await _json_response(send, error.status, error.body())
            return
        except ConnectionError:
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: the client's disconnect, as the server reports it
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    async def _body(self, scope: Scope, receive: Receive) -> tuple[str, bytes]:
        """(content type, raw body), refusing an unsupported type before reading and a body over the limit."""
        limit = self.settings.limits.max_body_bytes
        content_type = (_header(scope, b"content-type") or "").lower()
        if content_type and not content_type.startswith(("application/json", "multipart/form-data")):
            raise RequestError(
                "<body>", f"unsupported content type {content_type!r}: send JSON or multipart/form-data", 415
            )
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestError("<body>", f"request body is {int(length):,} bytes; the limit is {limit:,}", 413)
        try:
            return content_type, await _read_body(receive, limit)
        except _TooLarge:
            raise RequestError("<body>", f"request body is over the limit of {limit:,} bytes", 413) from None

    async def _fields(self, scope: Scope, content_type: str, raw: bytes) -> dict[str, Any]:
        if content_type.startswith("multipart/form-data"):
            return await self._form(scope, raw)
        fields = await anyio.to_thread.run_sync(_parse_json, raw, limiter=self.limiter)  # up to 32 MB: off the loop
        if not isinstance(fields, dict):
            raise RequestError("<body>", f"must be a JSON object, got {type(fields).__name__}")
        return fields

    async def _form(self, scope: Scope, raw: bytes) -> dict[str, Any]:
        async def once() -> Message:
            return {"type": "http.request", "body": raw, "more_body": False}

        request = Request(scope, once)
        try:
            form = await request.form(max_files=4, max_fields=16)
        except Exception as e:  # noqa: BLE001 -- a malformed multipart body is the client's fault
            raise RequestError("<body>", f"not a valid multipart form ({e})") from None
        values: dict[str, Any] = {}
        try:
            for name, value in form.multi_items():
                if name in values:
                    raise RequestError(name, "given more than once")
                values[name] = await value.read() if isinstance(value, UploadFile) else value
        finally:
            await form.close()
        return form_fields(values)
