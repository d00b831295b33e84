"""The service's exceptions and the one place that maps them (and framework errors) to HTTP responses.

Every error body is `{"error": code, "message": text}`, plus `detail` (a list of {loc, msg, type}) on a 422
and only there. Status codes: 400 a malformed request the framework refused (e.g. a bad Range header, a CORS
pre-flight from another origin); 401 missing/wrong API key; 404 unknown video, segment or route; 405 wrong
method; 409 video file changed since indexing; 413 body too large (`payload_too_large`) or an image query
over the byte or pixel limit (`image_too_large`); 415 a request body that is not JSON; 416 a Range outside the
file; 422 invalid input (`invalid_request`), malformed JSON (`invalid_json`), an image query that is no PNG
or JPEG (`invalid_image`), a video that cannot be decoded (`video_undecodable`); 501 QA not configured on
this server (a deployment choice: retrying will not help); 503 index missing or empty, model not loaded,
metadata database unreachable, overloaded or shutting down, always with Retry-After; 504 the request passed
the server's deadline. Responses that framework parts make in another format are rewritten to this one by
`middleware.ErrorBodyMiddleware`.
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


class ImageTooLargeError(PayloadTooLargeError):
    """An image query over the server's byte or pixel limit."""

    code = "image_too_large"


class InvalidImageError(InvalidRequestError):
    """An image query that is not base64 of a readable PNG or JPEG."""

    code = "invalid_image"


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


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


DEFAULT_RETRY_AFTER_S = 1  # a 503 that names no pause of its own
# the code of an HTTP error the framework (not the service) raised, by status
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
                415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "invalid_request",
                500: "internal_error", 503: "unavailable"}
JSON_MEDIA_TYPES = "application/json or another application/*+json type"


def status_code_name(status: int) -> str:
    return STATUS_CODES.get(status, "client_error" if status < 500 else "server_error")


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    if detail is not None:
        body["detail"] = detail
    return body


def error_response(status: int, code: str, message: str, *, headers: Optional[dict[str, str]] = None,
                   detail: Any = None) -> JSONResponse:
    if status == 422 and detail is None:  # every 422 lists its problems, so clients read one field for them
        detail = [{"loc": [], "msg": message, "type": code}]
    elif status != 422:
        detail = None
    if status == 503 and not any(name.lower() == "retry-after" for name in headers or {}):
        headers = {**(headers or {}), "Retry-After": str(DEFAULT_RETRY_AFTER_S)}
    return JSONResponse(error_body(code, message, detail), status_code=status, headers=headers)


def service_error_response(exc: ServiceError, method: str, path: str) -> JSONResponse:
    """The response for an error the service raised on purpose (also used by the /search fast path)."""
    if exc.status_code >= 500 and exc.status_code != 501:
        logger.info("%s %s -> %d %s", method, path, exc.status_code, exc.message)
    return error_response(exc.status_code, exc.code, exc.message, headers=exc.headers)


def not_json_message(content_type: Optional[str]) -> str:
    given = f"it is {content_type.split(';', 1)[0].strip()!r}" if content_type else "none was given"
    return f"body: the Content-Type must be {JSON_MEDIA_TYPES}; {given}"


def json_position(document: Any, pos: int) -> str:
    """`line L, column C (character P)` of a character offset, as the json module counts them (from 1)."""
    text = document if isinstance(document, str) else ""
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"line {line}, column {column} (character {pos})"


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


_BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 detail


def install_error_handlers(app: FastAPI) -> None:
    """Map ServiceError subclasses, validation errors, HTTP errors and anything unexpected to JSON."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc, request.method, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if isinstance(exc.body, (bytes, bytearray)):
            # FastAPI hands a JSON route the raw bytes only when the Content-Type is not JSON (or is missing:
            # strict content types, so a cross-site form cannot post JSON): a media type problem, not a field's
            return error_response(415, UnsupportedMediaTypeError.code,
                                  not_json_message(request.headers.get("content-type")))
        invalid = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if invalid is not None:
            # FastAPI puts the character offset in `loc`, where it reads as a field name: say where instead
            loc = invalid.get("loc", ())
            pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
            reason = (invalid.get("ctx") or {}).get("error", "malformed")
            msg = f"invalid JSON at {json_position(exc.body, pos)}: {reason}"
            return error_response(422, "invalid_json", f"body: {msg}",
                                  detail=[{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
        return error_response(422, "invalid_request", _validation_message(errors), detail=_clean_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
            # a JSON route's body that json.loads cannot even decode (not UTF-8 text): malformed JSON
            msg = "invalid JSON: the body is not UTF-8 text"
            return error_response(422, "invalid_json", f"body: {msg}",
                                  detail=[{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
        code = status_code_name(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and message == "Not Found":  # Starlette's phrase: say what was not found
            message = f"nothing at {request.url.path} (no such route or file)"
        elif exc.status_code == 405:
            allowed = (headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")
