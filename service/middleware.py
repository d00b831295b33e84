"""ASGI middleware: refuse request bodies over the size limit with 413 before they are read whole; drain
requests at shutdown (new ones 503, admitted ones finish)."""

from __future__ import annotations

import json
import threading

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body


class _TooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing re-raises it (to the 413 handler)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than this server's limit of {max_bytes} bytes")


class BodyLimitMiddleware:
    """413 for a declared Content-Length over `max_bytes`, or a streamed body that grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
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
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        message = f"request body larger than this server's limit of {self.max_bytes} bytes"
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
