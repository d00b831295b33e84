"""FastAPI dependencies: the engine of the running app and the optional API key."""

from __future__ import annotations

import secrets
from typing import Annotated, Optional

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, APIKeyHeader

from . import schemas
from .engine import Engine
from .errors import UnauthorizedError, UnavailableError
from .settings import Settings

API_KEY_HEADER = "X-API-Key"
API_KEY_COOKIE = "alpro_api_key"  # for <img> and <video> requests of the web page, which cannot set headers

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


async def require_api_key(request: Request,
                          header: Annotated[Optional[str], Security(_header_scheme)] = None,
                          cookie: Annotated[Optional[str], Security(_cookie_scheme)] = None) -> None:
    """401 unless the configured key came in the X-API-Key header (or the page's cookie); no key, no check."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    given = header or cookie
    expected = settings.api_key.get_secret_value()
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise UnauthorizedError(f"missing or wrong API key: send it in the {API_KEY_HEADER} header")


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the error statuses a route documents."""
    return {status: {"model": schemas.ErrorResponse} for status in statuses}
