"""Service errors and the one place where they become HTTP responses.

Every error response of the service's own routes has the same envelope::

    {"error": {"type": "...", "message": "...", "request_id": "..."}}

Routes that speak another protocol (the rerank APIs) claim their paths in an
``ErrorFormats``, with a formatter that maps the same errors to that protocol's
status codes and body. Handlers and middlewares both answer through it, so a
path gets one error shape whatever failed (auth, body limit, validation, engine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base class: ``type`` names the error in the envelope and in metrics."""

    status_code = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code = 400
    type = "bad_request"


class EmptyInput(BadRequest):
    """A blank query or no (or a blank) document: protocols with an "empty" error report it as such."""


class TooManyItems(BadRequest):
    """More items than ``max_items`` in one call."""


class InputTooLong(BadRequest):
    """Text over a length limit while truncation is off."""


class Unauthorized(ServiceError):
    status_code = 401
    type = "unauthorized"


class PayloadTooLarge(ServiceError):
    status_code = 413
    type = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    type = "unsupported_media_type"


class DeadlineTooShort(ServiceError):
    """The call could not finish within its deadline even on an idle server: retrying will not help."""

    status_code = 422
    type = "deadline_too_short"


class QueueFull(ServiceError):
    status_code = 429
    type = "queue_full"


class ClientDisconnected(ServiceError):
    status_code = 499
    type = "client_disconnected"


class EngineError(ServiceError):
    status_code = 503
    type = "engine_error"


class NotReady(ServiceError):
    status_code = 503
    type = "not_ready"


class DeadlineExceeded(ServiceError):
    status_code = 504
    type = "deadline_exceeded"


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def envelope(status: int, type_: str, message: str, request_id: str, headers=None) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass(frozen=True)
class ErrorInfo:
    """One failed request, before it is given a body: what the service would answer and why.

    ``error`` is the ServiceError raised, or None for validation, HTTP and middleware errors
    (then ``type`` says which: invalid_request, invalid_json, unauthorized, payload_too_large, ...).
    """

    status: int
    type: str
    message: str
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    error: ServiceError | None = None


ErrorFormatter = Callable[[ErrorInfo], Response]


def service_envelope(info: ErrorInfo) -> Response:
    """The service's own error body and status."""
    return envelope(info.status, info.type, info.message, info.request_id, info.headers or None)


class ErrorFormats:
    """Which error formatter answers for a path: the service envelope unless a protocol claimed it."""

    def __init__(self) -> None:
        self._by_path: dict[str, ErrorFormatter] = {}

    def claim(self, paths: Iterable[str], formatter: ErrorFormatter) -> None:
        for path in paths:
            self._by_path[path] = formatter

    def respond(self, path: str, info: ErrorInfo) -> Response:
        return self._by_path.get(path, service_envelope)(info)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            where = err.get("loc", ("body", "?"))[-1]
            parts.append(f"malformed JSON at position {where}: {err.get('ctx', {}).get('error', 'decode error')}")
            continue
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


_HTTP_TYPES = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def install_error_handlers(app: FastAPI, formats: ErrorFormats | None = None) -> ErrorFormats:
    """Map every exception to an ``ErrorInfo`` and answer it in the format of the request's path
    (``formats``). Client mistakes are 4xx, never 500. Returns the formats, for middlewares to share."""
    formats = formats or ErrorFormats()

    def respond(request: Request, info: ErrorInfo) -> Response:
        return formats.respond(request.url.path, info)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        info = ErrorInfo(exc.status_code, exc.type, exc.message, request_id_of(request), exc.headers, exc)
        return respond(request, info)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        type_ = "invalid_json" if any(e.get("type") == "json_invalid" for e in errors) else "invalid_request"
        status = 422 if type_ == "invalid_request" else 400
        return respond(request, ErrorInfo(status, type_, _validation_message(exc), request_id_of(request)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400:  # FastAPI could not decode the body at all
            message = f"malformed request body (not UTF-8 JSON, or nested too deeply): {message}"
        return respond(request, ErrorInfo(exc.status_code, type_, message, request_id_of(request)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": request_id_of(request)})
        return respond(request, ErrorInfo(500, "internal_error", "internal error", request_id_of(request)))

    return formats
