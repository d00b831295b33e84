"""POST /search without the framework's per-request machinery, for the plain case only.

FastAPI's route, dependency and middleware layers cost about 0.25 ms of Python per request on a warm CPU and
two to three times that right after a model call has flushed the caches, which is most of the service's
overhead budget. This ASGI middleware answers a /search whose JSON body is within the size limit, validates
as a `SearchRequest`, carries the right API key (or none is configured) and needs no CORS handling, by
calling the engine directly; the key is checked by `deps.api_key_accepted`, the route dependency's own
function, so both paths accept and refuse the same requests. Everything else (a body that does not validate,
a missing or wrong key, an Origin header with CORS on, a too large body, a Content-Type other than
application/json, malformed JSON) goes on to the FastAPI route, which stays the one the OpenAPI schema
documents and produces every error response (so the 415 and the 422 `invalid_json` that names the position
are the route's, whichever path a request took); errors the engine raises are rendered by the same function
the app's exception handler uses.
"""

from __future__ import annotations

from typing import Optional

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import api_key_accepted, expected_api_key
from .errors import ServiceError, service_error_response
from .metrics import ROUTE_TEMPLATE_KEY
from .schemas import SearchRequest
from .settings import Settings

SEARCH_PATH = "/search"


class SearchFastPath:
    def __init__(self, app: ASGIApp, owner: FastAPI, settings: Settings) -> None:
        self.app = app
        self.owner = owner
        self.max_bytes = settings.search_body_bytes
        self.api_key = expected_api_key(settings)
        self.cors = bool(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != SEARCH_PATH or scope["method"] != "POST"
                or getattr(self.owner.state, "engine", None) is None or not self._plain(scope["headers"])):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the framework see it
                await self.app(scope, _replay(chunks, receive, message), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes:
                await self.app(scope, _replay(chunks, receive, None, message.get("more_body", False)), send)
                return
            if not message.get("more_body", False):
                break
        try:
            request = SearchRequest.model_validate_json(b"".join(chunks))
        except ValidationError:  # the route answers with the documented 422
            await self.app(scope, _replay(chunks, receive, None), send)
            return
        scope[ROUTE_TEMPLATE_KEY] = SEARCH_PATH  # request metrics by route template, as for routed requests
        try:
            result = await self.owner.state.engine.search(request)
        except ServiceError as e:
            await service_error_response(e, "POST", SEARCH_PATH)(scope, receive, send)
            return
        body = result.__pydantic_serializer__.to_json(result)  # bytes, as model_dump_json without the decode
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    def _plain(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """A JSON body, the right API key when one is configured, no Origin when CORS is on."""
        json_body = False
        for name, value in headers:
            if name == b"content-type":
                json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
            elif name == b"origin" and self.cors:
                return False
        return json_body and (self.api_key is None or api_key_accepted(headers, self.api_key))


def _replay(chunks: list[bytes], receive: Receive, last: Optional[Message], more_body: bool = False) -> Receive:
    """`receive` that first hands out the body read so far (then `last`, then the live channel)."""
    pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": more_body}]
    if last is not None:
        pending[0]["more_body"] = True
        pending.append(last)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
