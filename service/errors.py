"""The service's exceptions and the one place that maps them (and framework errors) to HTTP responses.

Every error body is `{"error": code, "message": text}` (plus `detail` on a 422). Status codes:
401 missing/wrong API key; 404 unknown video, segment or route; 413 body too large; 422 invalid input;
501 QA not configured on this server (a deployment choice: retrying will not help); 503 index missing or
empty, model not loaded, metadata database unreachable, or overloaded (with Retry-After); 504 the request
passed the server's deadline.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP status and a message meant for the client."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class InvalidRequestError(ServiceError):
    status_code = 422
    code = "invalid_request"


class UnauthorizedError(ServiceError):
    status_code = 401
    code = "unauthorized"


class NotFoundError(ServiceError):
    status_code = 404
    code = "not_found"


class VideoNotFoundError(NotFoundError):
    code = "video_not_found"


class VideoFileMissingError(NotFoundError):
    code = "video_file_missing"


class VideoOutsideLibraryError(NotFoundError):
    """The video's file resolves outside every library folder the indexer recorded (the path is not told)."""

    code = "video_outside_library"


class VideoFileChangedError(ServiceError):
    """The video's file is not the one indexed (other size or mtime); the next alpro-index run indexes it."""

    status_code = 409
    code = "video_file_changed"


class VideoUndecodableError(ServiceError):
    status_code = 422
    code = "video_undecodable"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    code = "payload_too_large"


class QANotConfiguredError(ServiceError):
    status_code = 501
    code = "qa_not_configured"


class UnavailableError(ServiceError):
    """A pause, not a fault: every 503 says when to try again (Retry-After, 1 s unless given)."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message, headers={"Retry-After": "1", **(headers or {})})


class IndexUnavailableError(UnavailableError):
    code = "index_unavailable"


class OverloadedError(UnavailableError):
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceededError(ServiceError):
    """The request took longer than the server's deadline (ALPRO_REQUEST_TIMEOUT_S); its work was stopped."""

    status_code = 504
    code = "deadline_exceeded"


class StartupError(RuntimeError):
    """The service cannot start as configured (checkpoint/index mismatch, unreadable checkpoint)."""


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    if detail is not None:
        body["detail"] = detail
    return body


def error_response(status: int, code: str, message: str, *, headers: Optional[dict[str, str]] = None,
                   detail: Any = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, detail), status_code=status, headers=headers)


def service_error_response(exc: ServiceError, method: str, path: str) -> JSONResponse:
    """The response for an error the service raised on purpose (also used by the /search fast path)."""
    if exc.status_code >= 500 and exc.status_code != 501:
        logger.info("%s %s -> %d %s", method, path, exc.status_code, exc.message)
    return error_response(exc.status_code, exc.code, exc.message, headers=exc.headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "path", "query", "header", "cookie"):
            loc = loc[1:]  # where it came from is implied; the field name is what helps
        msg = err.get("msg", "invalid value")
        ctx = err.get("ctx") or {}
        if "error" in ctx and msg.startswith("Value error"):
            msg = str(ctx["error"])
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
    return "; ".join(parts) or "invalid request"


def _clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # keep what is JSON-safe and useful: location, message, type (the raw input may be huge or binary)
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors[:20]]


def install_error_handlers(app: FastAPI) -> None:
    """Map ServiceError subclasses, validation errors, HTTP errors and anything unexpected to JSON."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc, request.method, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return error_response(422, "invalid_request", _validation_message(errors), detail=_clean_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): bad input, as 422s are
            return error_response(422, "invalid_request", "body: not a readable JSON document (UTF-8 expected)")
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}"
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")
