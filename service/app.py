"""FastAPI application: routes, middleware and lifespan.

``create_app(settings)`` builds everything from the settings object it is
given; nothing is loaded at import time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relevance_core.labels import LABELS
from relevance_core.manifest import Manifest
from service import rerank_cohere, rerank_tei
from service.calls import TIMEOUT_HEADER, requested_timeout, require_json, score_unless_disconnected
from service.errors import TooManyItems, install_error_handlers
from service.metrics import Metrics
from service.middleware import AuthMiddleware, BodyLimitMiddleware, ObserveMiddleware
from service.runtime import EngineFactory, Runtime, default_engine_factory
from service.schemas import ErrorResponse, ModelRef, ScoreRequest, ScoreResponse, Usage
from service.settings import Settings
from service.tracing import INSTRUMENTATION_NAME, TracingMiddleware, setup_tracing, shutdown_tracing

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 429, 503, 504)
}
# Rerank protocols: their own routes and error bodies, over the same runtime (service/rerank_*.py).
_PROTOCOLS = (rerank_tei, rerank_cohere)


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory = default_engine_factory,
    metrics: Metrics | None = None,
    manifest: Manifest | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """``manifest``: the artifact's, already verified by the caller (else the runtime verifies it).

    ``tracer_provider``: where spans go (tests pass one with an in-memory exporter; the caller
    keeps and shuts it down). Default: ``setup_tracing``, None (no tracing) unless an OTLP
    endpoint is configured; the app then flushes and shuts it down when it stops.
    """
    settings = settings or Settings()
    metrics = metrics or Metrics()
    runtime = Runtime(settings, metrics, engine_factory, manifest)
    owns_provider = tracer_provider is None
    if tracer_provider is None:
        tracer_provider = setup_tracing(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            if owns_provider and tracer_provider is not None:
                await shutdown_tracing(tracer_provider)

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
    app.state.tracer_provider = tracer_provider
    errors = install_error_handlers(app)

    # Added innermost first: observe (outermost) sees every response, the 401 and 413 included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, errors=errors)
    if settings.api_key is not None:
        app.add_middleware(
            AuthMiddleware,
            api_key=settings.api_key.get_secret_value(),
            exempt_paths=settings.auth_exempt_paths,
            errors=errors,
        )
    if tracer_provider is not None:  # inside observe: the request id is set, the 401 and 413 are seen
        app.add_middleware(TracingMiddleware, tracer=tracer_provider.get_tracer(INSTRUMENTATION_NAME))
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
            raise TooManyItems(f"{len(body.items)} items; at most {settings.max_items} per request")
        timeout = requested_timeout(request.headers.get(TIMEOUT_HEADER), body.timeout_s)
        scored = await score_unless_disconnected(runtime, body, timeout, request)
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

    for protocol in _PROTOCOLS:
        app.include_router(protocol.router)
        errors.claim((route.path for route in protocol.router.routes), protocol.error_response)

    return app
