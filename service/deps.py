"""FastAPI dependencies: the engine of the running app and the optional API key."""

from __future__ import annotations

import hmac
from typing import Annotated, Iterable, Optional
from urllib.parse import unquote_to_bytes

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, APIKeyHeader

from . import schemas
from .engine import Engine
from .errors import UnauthorizedError, UnavailableError
from .settings import Settings

API_KEY_HEADER = "X-API-Key"
API_KEY_COOKIE = "alpro_api_key"  # for <img> and <video> requests of the web page, which cannot set headers
_HEADER_NAME = API_KEY_HEADER.lower().encode()  # ASGI header names are lower-case bytes
_COOKIE_NAME = API_KEY_COOKIE.encode()

# declarative scheme objects (they only describe the key in the OpenAPI schema; no state)
_header_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKeyHeader")
_cookie_scheme = APIKeyCookie(name=API_KEY_COOKIE, auto_error=False, scheme_name="ApiKeyCookie")


# async, all of them: FastAPI runs plain `def` dependencies on its thread pool, a thread hop per request each
async def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise UnavailableError("the service is starting up or shutting down")
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def expected_api_key(settings: Settings) -> Optional[bytes]:
    """The configured key as the bytes requests must carry (UTF-8); None when no key is configured."""
    return settings.api_key.get_secret_value().encode() if settings.api_key is not None else None


def given_api_key(headers: Iterable[tuple[bytes, bytes]]) -> Optional[bytes]:
    """The key a request carries: its first X-API-Key header as sent, else its first key cookie, decoded.

    The header holds the key's UTF-8 bytes as they are (a browser's fetch() can send only Latin-1, so the page
    sends it only for ASCII keys). The cookie holds `encodeURIComponent(key)` (static/api.js), i.e. UTF-8
    percent-encoded with everything but A-Z a-z 0-9 - _ . ! ~ * ' ( ) escaped, so it is percent-decoded once to
    bytes here (`unquote_to_bytes`: no "+" as space, no UTF-8 decoding that could map two keys to one).
    Starlette would take the last of duplicate cookies and the first of duplicate headers; first, for both.
    """
    cookie: Optional[bytes] = None
    for name, value in headers:
        if name == _HEADER_NAME:
            return value  # present, it decides, even when a cookie would carry the right key
        if name == b"cookie" and cookie is None:
            cookie = _cookie_value(value)
    return cookie


def api_key_accepted(headers: Iterable[tuple[bytes, bytes]], expected: bytes) -> bool:
    """Whether a request's raw ASGI headers carry the key; the one check of the route and the fast path."""
    given = given_api_key(headers)
    return given is not None and hmac.compare_digest(given, expected)  # constant time in the key's content


def _cookie_value(header: bytes) -> Optional[bytes]:
    for pair in header.split(b";"):
        name, sep, value = pair.partition(b"=")
        if sep and name.strip() == _COOKIE_NAME:
            return unquote_to_bytes(value.strip())
    return None


async def require_api_key(request: Request,
                          _header: Annotated[Optional[str], Security(_header_scheme)] = None,
                          _cookie: Annotated[Optional[str], Security(_cookie_scheme)] = None) -> None:
    """401 unless the configured key came in the X-API-Key header (or the page's cookie); no key, no check.

    The two Security parameters only document the key in the OpenAPI schema; `api_key_accepted` reads the raw
    headers, as the /search fast path does.
    """
    expected = expected_api_key(request.app.state.settings)
    if expected is not None and not api_key_accepted(request.scope["headers"], expected):
        raise UnauthorizedError(f"missing or wrong API key: send it in the {API_KEY_HEADER} header")


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the error statuses a route documents."""
    return {status: {"model": schemas.ErrorResponse} for status in statuses}
