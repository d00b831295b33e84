"""ASGI middleware: refuse request bodies over the size limit with 413 before they are read whole; drain
requests at shutdown (new ones 503, admitted ones finish); put the error responses that framework parts make
in plain text (a Range outside the file, a refused CORS pre-flight) into the service's error format."""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from typing import Optional

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body, error_response, status_code_name


class _TooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing re-raises it (to the 413 handler)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than this server's limit of {max_bytes} bytes")


class BodyLimitMiddleware:
    """413 for a declared Content-Length over the limit, or a streamed body that grows past it: `max_bytes`, or
    the limit `path_limits` gives the request's path (POST /search takes images)."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: Optional[dict[str, int]] = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_bytes)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._reject(send, limit)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        message = f"request body larger than this server's limit of {limit} bytes"
        body = json.dumps(error_body("payload_too_large", message)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Drain:
    """Shutdown in two steps: first new requests get 503 (`shutting_down`, Retry-After) while the ones already
    admitted finish; then the server stops (service.cli)."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def admit(self) -> bool:
        with self._lock:
            if self.draining:
                return False
            self._in_flight += 1
            self._idle.clear()
            return True

    def done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def begin(self) -> None:
        with self._lock:
            self.draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Whether every admitted request finished within `timeout_s`."""
        return self._idle.wait(timeout_s)


class DrainMiddleware:
    """Counts the requests in flight, and once draining answers new ones 503 with Retry-After."""

    def __init__(self, app: ASGIApp, drain: Drain, retry_after_s: int) -> None:
        self.app = app
        self.drain = drain
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.drain.admit():
            body = json.dumps(error_body("shutting_down", "the server is shutting down; retry shortly")).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", self.retry_after), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.done()


# headers of a rewritten error response that still describe it (the rest describe the body it replaces)
_KEPT_HEADERS = frozenset({b"allow", b"content-range", b"accept-ranges", b"retry-after", b"vary", b"connection",
                           b"www-authenticate"})
_MESSAGES = {416: "the requested Range lies outside the file"}  # framework parts that send no text


class ErrorBodyMiddleware:
    """Every error response in the service's format: one a framework part made in another format (Starlette's
    FileResponse answers a bad Range in plain text) is rewritten to `{"error", "message"}` with its status
    and meaningful headers kept, and every 503 gets a Retry-After if it came without one (/readyz)."""

    def __init__(self, app: ASGIApp, retry_after_s: int) -> None:
        self.app = app
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced: Optional[Message] = None  # the start of a response whose body is being replaced
        text = bytearray()

        async def send_in_format(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] >= 400:
                if not _is_json(message.get("headers", ())):
                    replaced = message
                    return
                headers = list(message.get("headers", ()))
                if message["status"] == 503 and not any(n == b"retry-after" for n, _ in headers):
                    message = {**message, "headers": [*headers, (b"retry-after", self.retry_after)]}
            elif message["type"] == "http.response.body" and replaced is not None:
                text.extend(message.get("body", b"")[:1024 - len(text)])
                if not message.get("more_body", False):
                    await self._send_json(replaced, bytes(text), scope["method"] == "HEAD", send)
                return
            await send(message)

        await self.app(scope, receive, send_in_format)

    async def _send_json(self, start: Message, text: bytes, head: bool, send: Send) -> None:
        status = start["status"]
        original = text.decode("utf-8", "replace").strip()
        message = _MESSAGES.get(status) or original or _phrase(status)
        body = json.dumps(error_body(status_code_name(status), message)).encode()
        headers = [(n, v) for n, v in start.get("headers", ()) if n in _KEPT_HEADERS]
        if status == 503 and not any(n == b"retry-after" for n, _ in headers):
            headers.append((b"retry-after", self.retry_after))
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status http.HTTPStatus does not name
        return f"HTTP {status}"


def _is_json(headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, but a refused pre-flight says why in the service's error format (Starlette
    answers it in plain text, before any route or exception handler could)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")  # e.g. "origin, method"
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return error_response(response.status_code, "cors_rejected",
                              f"CORS pre-flight refused: this server does not allow the request's {refused} "
                              f"(ALPRO_CORS_ORIGINS)", headers=headers)
