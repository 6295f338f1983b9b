"""ASGI middlewares: body-size limit, request id + access log + metrics, bearer-token auth.

Pure ASGI rather than ``@app.middleware``: they keep the raw ``receive`` (so the
score route can notice a client disconnect) and cost less per request.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorFormats, ErrorInfo, PayloadTooLarge, Unauthorized
from service.logs import request_id_var
from service.metrics import Metrics

access_log = logging.getLogger("darl.access")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, by header and while streaming.

    ``errors``: the app's error formats, so the 413 has the body the path's protocol expects."""

    def __init__(self, app: ASGIApp, max_bytes: int, errors: ErrorFormats | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.errors = errors or ErrorFormats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing unchanged (-> 413).
                    raise StarletteHTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = scope.get("state", {}).get("request_id", "")
        info = ErrorInfo(413, PayloadTooLarge.type, f"request body exceeds {self.max_bytes} bytes", rid)
        await self.errors.respond(scope["path"], info)(scope, receive, send)


class ObserveMiddleware:
    """Request id (``X-Request-Id`` in and out) plus request count and latency metrics.

    Pure ASGI rather than ``@app.middleware``: it keeps the raw ``receive`` so the
    score route can notice a client disconnect, and it costs less per request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.request_duration.labels(path).observe(elapsed)
            # Method, route and status only: query and item text never reach the logs.
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status,
                elapsed * 1000,
                extra={"method": scope["method"], "route": path, "status": status, "ms": round(elapsed * 1000, 1)},
            )
            request_id_var.reset(token)


class AuthMiddleware:
    """Optional bearer-token auth (``DARL_API_KEY``), compared in constant time.

    ``errors``: the app's error formats, so the 401 has the body the path's protocol expects."""

    def __init__(self, app: ASGIApp, api_key: str, exempt_paths: list[str], errors: ErrorFormats | None = None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.exempt = set(exempt_paths)
        self.errors = errors or ErrorFormats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or b""
        if not hmac.compare_digest(given, self.expected):
            rid = scope.get("state", {}).get("request_id", "")
            info = ErrorInfo(
                401, Unauthorized.type, "missing or invalid bearer token", rid, {"WWW-Authenticate": "Bearer"}
            )
            await self.errors.respond(scope["path"], info)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    """First value of a (lower-case) header in an ASGI scope."""
    for k, v in scope.get("headers") or []:
        if k == name:
            return v
    return None


def _incoming_request_id(scope: Scope) -> str | None:
    """The client's ``X-Request-Id`` if it is a safe token, else None (a new one is made)."""
    raw = _header(scope, b"x-request-id")
    value = raw.decode("latin-1") if raw is not None else ""
    return value if _REQUEST_ID_OK.match(value) else None
