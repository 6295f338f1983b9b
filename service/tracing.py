"""OpenTelemetry tracing: off unless an OTLP endpoint is configured, as in vLLM and TEI.

Off (the default), nothing here imports OpenTelemetry and no middleware is installed:
the runtime and the batcher pay one context-variable lookup per call. On
(``DARL_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``setup_tracing``
builds an SDK ``TracerProvider`` that batches spans to the OTLP exporter, and
``TracingMiddleware`` gives every HTTP request one server span, a child of the caller's
span when the request carries a W3C ``traceparent``. The provider is passed to the app,
never installed as OpenTelemetry's global one, so tests (and other libraries in the
process) keep their own.

A scoring call (``/v1/score``, ``/rerank``, ``/v1/rerank``, ``/v2/rerank``: all go through
``Runtime.score``) gets these children of its server span:

* ``validate``: from the request's arrival to its prompts being rendered (body read and
  JSON parse, FastAPI's pydantic validation, the route's checks, cutting and tokenising).
  It starts when the request arrives because FastAPI validates the body before the route
  runs; a request refused before its prompts are rendered (4xx) has no ``validate`` span,
  its server span has the status.
* ``queue_wait``: from the call's pairs entering the batcher's queue to the start of the
  engine batch that carries its first pair.
* ``batch_inference``: one per engine batch that carries pairs of the call. A batch can
  serve several calls and a call can spread over several batches, so each call gets its
  own span per batch (same ``darl.batch.id`` in every call that shared it) rather than one
  batch span linked to many traces: every trace stays complete on its own.
* ``serialize``: from the scores being ready to the response headers going out (result
  objects, FastAPI's response-model validation and JSON encoding).

Neither query nor item text is ever recorded, as in the access log.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from service.settings import Settings

INSTRUMENTATION_NAME = "darl.service"
SPAN_VALIDATE = "validate"
SPAN_QUEUE_WAIT = "queue_wait"
SPAN_BATCH = "batch_inference"
SPAN_SERIALIZE = "serialize"
REQUEST_ID_ATTRIBUTE = "request_id"  # the same name as the log field, so logs and traces join on it
OTLP_GRPC_PORT = 4317  # the OTLP/gRPC well-known port (OTLP/HTTP is 4318)
# Probes and scrapes come every few seconds from every pod: spans of them would be noise.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

OtlpProtocol = Literal["grpc", "http/protobuf"]


# -- setup ---------------------------------------------------------------------
def otlp_protocol(endpoint: str, configured: OtlpProtocol | None = None) -> OtlpProtocol:
    """The protocol for ``endpoint``: the configured one, else gRPC for a ``grpc://``/``grpcs://``
    URL or port 4317 (TEI's and vLLM's usual endpoint), else OTLP/HTTP with protobuf bodies."""
    if configured is not None:
        return configured
    url = urlsplit(endpoint)
    return "grpc" if url.scheme in ("grpc", "grpcs") or url.port == OTLP_GRPC_PORT else "http/protobuf"


def make_exporter(endpoint: str, protocol: OtlpProtocol | None = None) -> SpanExporter:
    """The OTLP span exporter for ``endpoint``; nothing connects until the first export.

    OTLP/HTTP posts to the URL as given, or to ``/v1/traces`` on it when it has no path
    (``http://collector:4318`` then works as well as the full URL). gRPC: ``http://`` (or
    ``grpc://``) is plaintext, ``https://`` (or ``grpcs://``) TLS; it needs
    ``opentelemetry-exporter-otlp-proto-grpc``, which the ``serve`` extra does not install.
    """
    url = urlsplit(endpoint)
    if otlp_protocol(endpoint, protocol) == "grpc":
        scheme = {"grpc": "http", "grpcs": "https"}.get(url.scheme, url.scheme)
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError as e:
            raise RuntimeError(
                "OTLP over gRPC needs `pip install opentelemetry-exporter-otlp-proto-grpc`; "
                "or set DARL_OTLP_TRACES_PROTOCOL=http/protobuf with the collector's HTTP port (4318)"
            ) from e
        return GrpcExporter(endpoint=urlunsplit(url._replace(scheme=scheme)))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if url.path in ("", "/"):
        endpoint = urlunsplit(url._replace(path="/v1/traces"))
    return HttpExporter(endpoint=endpoint)


def setup_tracing(settings: Settings) -> TracerProvider | None:
    """A tracer provider exporting to the configured OTLP endpoint, or None: tracing is off.

    The SDK and the exporter are imported only here, so a service without an endpoint never
    loads them. Sampling follows the SDK's defaults (the caller's sampled flag, else every
    request; ``OTEL_TRACES_SAMPLER`` changes it). The caller owns the provider: it is not set
    as OpenTelemetry's global one; ``shutdown_tracing`` flushes it on stop.
    """
    endpoint = settings.otlp_traces_endpoint
    if not endpoint:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.otlp_service_name}))
    provider.add_span_processor(BatchSpanProcessor(make_exporter(endpoint, settings.otlp_traces_protocol)))
    return provider


async def shutdown_tracing(provider: TracerProvider) -> None:
    """Flush and stop ``provider``, in a thread: the last export may wait on a slow collector."""
    shutdown = getattr(provider, "shutdown", None)  # the API's provider type has none; the SDK's has
    if shutdown is not None:
        await asyncio.to_thread(shutdown)


# -- per call --------------------------------------------------------------------
class CallTrace:
    """What the spans of one traced request need downstream: the tracer and the server span's context.

    It travels in a context variable (like the request id), so ``Runtime.score`` and the
    batcher need no tracer of their own, and a call that is not traced costs them one
    ``ContextVar.get``. Timestamps are ``time.time_ns()``, OpenTelemetry's clock.
    """

    __slots__ = ("_serialize", "context", "start_ns", "tracer")

    def __init__(self, tracer: Tracer, context: Context, start_ns: int) -> None:
        self.tracer = tracer
        self.context = context  # carries the server span: the parent of every span below
        self.start_ns = start_ns  # the request's arrival
        self._serialize: Span | None = None

    def span(self, name: str, start_ns: int, attributes: dict[str, Any] | None = None) -> Span:
        """Start a child of the server span (the caller ends it)."""
        return self.tracer.start_span(name, context=self.context, start_time=start_ns, attributes=attributes)

    def validated(self, pairs: int, tokens: int) -> None:
        """The prompts are rendered: record ``validate`` from the request's arrival to now."""
        attributes = {"darl.call.pairs": pairs, "darl.call.tokens": tokens}
        self.span(SPAN_VALIDATE, self.start_ns, attributes).end()

    def queue_wait(self, enqueued_ns: int, batch_start_ns: int, pairs: int) -> None:
        self.span(SPAN_QUEUE_WAIT, enqueued_ns, {"darl.call.pairs": pairs}).end(end_time=batch_start_ns)

    def scored(self) -> None:
        """The scores are ready: ``serialize`` runs until the response starts (``end_serialize``)."""
        self.end_serialize()
        self._serialize = self.span(SPAN_SERIALIZE, time.time_ns())

    def end_serialize(self) -> None:
        if self._serialize is not None:
            self._serialize.end()
            self._serialize = None


_call_trace: contextvars.ContextVar[CallTrace | None] = contextvars.ContextVar("darl_call_trace", default=None)


def current_call_trace() -> CallTrace | None:
    """The running request's trace, or None when it is not traced (tracing off, or not sampled)."""
    return _call_trace.get()


# -- HTTP ------------------------------------------------------------------------
class TracingMiddleware:
    """One server span per HTTP request, continuing the caller's W3C trace context.

    Installed only when tracing is on, inside ``ObserveMiddleware`` (which sets the request
    id first). The span is named ``METHOD /route`` once routing matched (``METHOD`` before),
    with ``http.request.method``, ``url.path``, ``http.route``, ``http.response.status_code``
    and ``request_id`` (the ``X-Request-Id`` of the response); a 5xx or an exception sets its
    status to error, a 4xx does not (OpenTelemetry's rule for server spans). The response
    carries ``traceresponse: 00-<trace id>-<span id>-<flags>`` (W3C Trace Context Level 2),
    so a caller that sent no ``traceparent`` can still find its trace. ``untraced``: paths
    that get no span (the probes and the metrics scrape).
    """

    def __init__(self, app: ASGIApp, tracer: Tracer, untraced: frozenset[str] = UNTRACED_PATHS) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app = app
        self.tracer = tracer
        self.untraced = untraced
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._context = otel_context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.untraced:
            await self.app(scope, receive, send)
            return
        trace = self._trace
        parent = self._propagator.extract(_trace_headers(scope))
        start_ns = time.time_ns()
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        rid = scope.get("state", {}).get("request_id")
        if rid:
            attributes[REQUEST_ID_ATTRIBUTE] = rid
        span = self.tracer.start_span(
            method, context=parent, kind=trace.SpanKind.SERVER, start_time=start_ns, attributes=attributes
        )
        if not span.is_recording():  # not sampled: no spans below either
            await self.app(scope, receive, send)
            return
        ctx = trace.set_span_in_context(span, parent)
        call = CallTrace(self.tracer, ctx, start_ns)
        sc = span.get_span_context()
        header = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}".encode()
        status: int | None = None
        failed = False

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                call.end_serialize()
                message["headers"] = [*message.get("headers", []), (b"traceresponse", header)]
            await send(message)

        otel_token = self._context.attach(ctx)
        call_token = _call_trace.set(call)
        try:
            await self.app(scope, receive, send_traced)
        except Exception as e:
            failed = True
            span.record_exception(e)
            span.set_attribute("error.type", type(e).__qualname__)
            span.set_status(trace.StatusCode.ERROR, f"{type(e).__name__}: {e}")
            status = status or 500  # Starlette's ServerErrorMiddleware (outside) answers it with a 500
            raise
        finally:
            call.end_serialize()  # a response that never started
            route = getattr(scope.get("route"), "path", None)
            if route is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500 and not failed:  # an exception's status says more
                    span.set_attribute("error.type", str(status))
                    span.set_status(trace.StatusCode.ERROR)
            span.end()
            _call_trace.reset(call_token)
            self._context.detach(otel_token)


def _trace_headers(scope: Scope) -> dict[str, str]:
    """``traceparent`` and ``tracestate`` of an ASGI request (repeated ``tracestate`` lines joined)."""
    found: dict[str, list[str]] = {}
    for k, v in scope.get("headers") or []:
        if k in (b"traceparent", b"tracestate"):
            found.setdefault(k.decode(), []).append(v.decode("latin-1"))
    return {k: ",".join(v) for k, v in found.items()}
