"""FastAPI application: routes, middleware and lifespan.

``create_app(settings)`` builds everything from the settings object it is
given; nothing is loaded at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relevance_core.labels import LABELS
from relevance_core.manifest import Manifest
from service.errors import (
    BadRequest,
    ClientDisconnected,
    ServiceError,
    UnsupportedMediaType,
    install_error_handlers,
)
from service.metrics import Metrics
from service.middleware import AuthMiddleware, BodyLimitMiddleware, ObserveMiddleware
from service.runtime import EngineFactory, Runtime, ScoredCall, default_engine_factory
from service.schemas import ErrorResponse, ModelRef, ScoreRequest, ScoreResponse, Usage
from service.settings import Settings

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 429, 503, 504)
}
TIMEOUT_HEADER = "x-request-timeout"


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
    manifest: Manifest | None = None,
) -> FastAPI:
    """``manifest``: the artifact's, already verified by the caller (else the runtime verifies it)."""
    settings = settings or Settings()
    metrics = metrics or Metrics()
    runtime = Runtime(settings, metrics, engine_factory, manifest)

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

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        dependencies=[Depends(require_json)],
        summary="Relevance probabilities for a query and its candidate items",
    )
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        if len(body.items) > settings.max_items:
            raise BadRequest(f"{len(body.items)} items; at most {settings.max_items} per request")
        timeout = _requested_timeout(request.headers.get(TIMEOUT_HEADER), body.timeout_s)
        scored = await _score_unless_disconnected(runtime, body, timeout, request)
        return ScoreResponse(
            request_id=request.state.request_id,
            model=ModelRef(**runtime.model_info()),
            query_truncated=scored.query_truncated,
            results=scored.items,
            usage=Usage(pairs=len(scored.items), tokens=scored.tokens, deadline_s=scored.deadline_s),
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


def _requested_timeout(header: str | None, body_value: float | None) -> float | None:
    """The client's deadline in seconds: the ``X-Request-Timeout`` header, else the body's ``timeout_s``."""
    if header is None:
        return body_value
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"X-Request-Timeout must be a positive number of seconds, got {header[:40]!r}")
    return value


async def _score_unless_disconnected(
    runtime: Runtime, body: ScoreRequest, timeout_s: float | None, request: Request
) -> ScoredCall:
    """Score, but give up (and free the queued pairs) as soon as the client goes away."""
    task = asyncio.ensure_future(runtime.score(body, timeout_s))
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
