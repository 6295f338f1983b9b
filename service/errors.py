"""Service errors and the one place where they become HTTP status codes.

Every error response has the same envelope::

    {"error": {"type": "...", "message": "...", "request_id": "..."}}
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the envelope. Client mistakes are 4xx, never 500."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return envelope(exc.status_code, exc.type, exc.message, request_id_of(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        type_ = "invalid_json" if any(e.get("type") == "json_invalid" for e in errors) else "invalid_request"
        return envelope(
            422 if type_ == "invalid_request" else 400, type_, _validation_message(exc), request_id_of(request)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400:  # FastAPI could not decode the body at all
            message = f"malformed request body (not UTF-8 JSON, or nested too deeply): {message}"
        return envelope(exc.status_code, type_, message, request_id_of(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": request_id_of(request)})
        return envelope(500, "internal_error", "internal error", request_id_of(request))
