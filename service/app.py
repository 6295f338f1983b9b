"""FastAPI application: routes, middleware and lifespan.

``create_app(settings)`` builds everything from the settings object it is
given; nothing is loaded at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relevance_core.labels import LABELS
from service.errors import (
    ClientDisconnected,
    PayloadTooLarge,
    QueueFull,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    envelope,
    install_error_handlers,
)
from service.logs import request_id_var
from service.metrics import Metrics
from service.runtime import EngineFactory, Runtime, default_engine_factory
from service.schemas import ErrorResponse, ScoreRequest, ScoreResponse
from service.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("darl.access")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 429, 503, 504)
}


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, by header and while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        resp = envelope(413, PayloadTooLarge.type, f"request body exceeds {self.max_bytes} bytes", rid)
        await resp(scope, receive, send)


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
    """Optional bearer-token auth (``DARL_API_KEY``), compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str, exempt_paths: list[str]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.exempt = set(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or b""
        if not hmac.compare_digest(given, self.expected):
            rid = scope.get("state", {}).get("request_id", "")
            resp = envelope(
                401, Unauthorized.type, "missing or invalid bearer token", rid, {"WWW-Authenticate": "Bearer"}
            )
            await resp(scope, receive, send)
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


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype or 'none'!r}")


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory = default_engine_factory,
    metrics: Metrics | None = None,
) -> FastAPI:
    settings = settings or Settings()
    metrics = metrics or Metrics()
    runtime = Runtime(settings, metrics, engine_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="DaRL relevance scoring",
        version="0.1.0",
        description="Scores (query, item) pairs into the relevance grades "
        f"{', '.join(LABELS)} with a DaRL fine-tuned LLM classifier.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime
    install_error_handlers(app)

    # Added innermost first: observe (outermost) sees every response, the 401 and 413 included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(
            AuthMiddleware, api_key=settings.api_key.get_secret_value(), exempt_paths=settings.auth_exempt_paths
        )
    app.add_middleware(ObserveMiddleware, metrics=metrics)
    in_flight = 0

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        dependencies=[Depends(require_json)],
        summary="Relevance probabilities for a query and its candidate items",
    )
    async def score(body: ScoreRequest, request: Request) -> JSONResponse:
        nonlocal in_flight
        _check_limits(body, settings)
        if in_flight >= settings.max_concurrent_requests:
            metrics.failures.labels("queue_full").inc()
            raise QueueFull(
                f"{in_flight} requests in flight (limit {settings.max_concurrent_requests}); retry later",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        in_flight += 1
        try:
            scored = await _score_unless_disconnected(runtime, body, request)
        finally:
            in_flight -= 1
        results = [
            {
                "id": item.id,
                "probs": dict(zip(LABELS, map(float, p), strict=True)),
                "label": LABELS[int(p.argmax())],
                "score": float(s),
                "truncated": t,
            }
            for item, p, s, t in zip(body.items, scored.probs, scored.scores, scored.truncated, strict=True)
        ]
        return JSONResponse(
            {
                "request_id": request.state.request_id,
                "model": runtime.model_info(),
                "results": results,
                "usage": {"pairs": len(results), "tokens": scored.tokens},
            }
        )

    @app.get("/healthz", summary="Liveness: the process is up and the engine has not died")
    async def healthz() -> dict[str, str]:
        await runtime.check_alive()
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and a warm-up forward pass succeeded")
    async def readyz() -> dict[str, str]:
        await runtime.check_ready()
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        if runtime.batcher is not None:
            metrics.queue_depth.set(runtime.batcher.queued_pairs)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="The served model: manifest summary and metrics")
    async def models() -> dict[str, Any]:
        m = runtime.manifest
        engine = runtime.engine
        return {
            "data": [
                {
                    "name": m.name if m else None,
                    "version": m.version if m else None,
                    "kind": m.kind if m else None,
                    "base_model": m.base_model.model_dump(exclude_none=True) if m and m.base_model else None,
                    "labels": list(LABELS),
                    "template_version": m.template_version if m else None,
                    "max_length": m.max_length if m else None,
                    "num_layers": m.num_layers if m else None,
                    "created_at": m.created_at if m else None,
                    "metrics": m.metrics if m else {},
                    "engine": engine.name if engine else None,
                    "dtype": engine.dtype if engine else None,
                    "ready": runtime.ready,
                }
            ]
        }

    return app


async def _score_unless_disconnected(runtime: Runtime, body: ScoreRequest, request: Request):
    """Score, but give up (and free the queued pairs) as soon as the client goes away."""
    task = asyncio.ensure_future(runtime.score(body))
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ServiceError):
            await task
        runtime.metrics.failures.labels("client_disconnected").inc()
        raise ClientDisconnected("client disconnected")
    return task.result()


def _check_limits(body: ScoreRequest, settings: Settings) -> None:
    from service.errors import BadRequest

    if len(body.items) > settings.max_items:
        raise BadRequest(f"{len(body.items)} items; at most {settings.max_items} per request")
    if len(body.query) > settings.max_query_chars:
        raise BadRequest(f"query has {len(body.query)} characters; at most {settings.max_query_chars}")
    for item in body.items:
        for name in ("title", "description"):
            value = getattr(item, name)
            if value is not None and len(value) > settings.max_field_chars:
                raise BadRequest(
                    f"item {item.id!r}: {name} has {len(value)} characters; at most {settings.max_field_chars}"
                )
