"""The outermost layer of every request: request id, body-size limit, metrics, access log, no tracebacks.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: it sees the raw
``receive`` channel, so the body limit holds before anything reads the body:

* a ``Content-Length`` over the limit is answered 413 without passing the request on;
* a body without one (chunked) is counted as it streams, and the read that crosses the limit
  raises ``BodyTooLarge``, answered 413 (at most ``max_body`` bytes were ever held).

The unread rest is uvicorn's to discard; measured with 60 MB uploads, httpx and a plain socket
client that sends everything before reading both get the 413 (no connection reset).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable

from .metrics import Metrics

log = logging.getLogger("leyolo.serve")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff")]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiError(Exception):
    """A request the server refuses: HTTP status and one line for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit / 2**20:g} MiB")


def request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex[:16]


async def send_json(send: Send, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Wraps the app: see the module docstring. ``endpoints`` name the metric label of known paths."""

    def __init__(self, app: Any, *, max_body: int, metrics: Metrics, endpoints: set[str]) -> None:
        self.app, self.max_body, self.metrics, self.endpoints = app, max_body, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        start = time.perf_counter()
        sent = {"status": 500, "started": False}

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent.update(status=message["status"], started=True)
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode()),
                                                  *SECURITY_HEADERS]}
            await send(message)

        received = {"bytes": 0}

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        self.metrics.in_flight.inc()
        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body:
                raise BodyTooLarge(self.max_body)
            await self.app(scope, receive_counted, send_tagged)
        except ApiError as exc:
            if not sent["started"]:
                await send_json(send_tagged, exc.status, {"error": exc.message, "request_id": rid}, exc.headers)
        except Exception:  # the last line of defence: one line to the client, the traceback to the log
            log.exception("[%s] unhandled error on %s %s", rid, scope.get("method"), path)
            if not sent["started"]:
                await send_json(send_tagged, 500, {"error": "internal server error", "request_id": rid})
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            self.metrics.requests.labels(endpoint, str(sent["status"])).inc()
            self.metrics.request_seconds.labels(endpoint).observe(seconds)
            log.info("[%s] %s %s %d %.1f ms", rid, scope.get("method"), path, sent["status"], seconds * 1e3)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
