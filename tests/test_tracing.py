"""OpenTelemetry tracing (service/tracing.py): spans of the real app with the fake engine.

Each test gets its own SDK ``TracerProvider`` with an in-memory exporter, passed to
``create_app``; nothing sets OpenTelemetry's global provider, so tests cannot leak spans
into each other.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.app import create_app
from service.errors import EngineError
from service.settings import Settings
from service.tracing import (
    SPAN_BATCH,
    SPAN_QUEUE_WAIT,
    SPAN_SERIALIZE,
    SPAN_VALIDATE,
    TracingMiddleware,
    make_exporter,
    otlp_protocol,
    setup_tracing,
)
from tests.apps import ITEMS, serve, settings_for, wait_until
from tests.fakes import FakeEngine

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
OTEL_ENV = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "DARL_OTLP_TRACES_ENDPOINT",
    "DARL_OTLP_TRACES_PROTOCOL",
    "DARL_OTLP_SERVICE_NAME",
)


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own OTEL_* variables must not turn tracing on in these tests."""
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter):
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    yield p
    p.shutdown()


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_app(tiny_artifact: Path, cache_dir: Path, engine: FakeEngine, provider: TracerProvider):
    def _make(traced: bool = True, **kw):
        return create_app(
            settings_for(tiny_artifact, cache_dir, **kw),
            engine_factory=lambda s, a: engine,
            tracer_provider=provider if traced else None,
        )

    return _make


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan, name: str | None = None) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id and (name is None or s.name == name)
    ]


async def test_score_request_continues_the_callers_trace(make_app, exporter: InMemorySpanExporter) -> None:
    async with serve(make_app()) as c:
        r = await c.post(
            "/v1/score",
            json={"query": "angle bracket", "items": ITEMS},
            headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
        )
    assert r.status_code == 200, r.text
    [server] = server_spans(exporter)
    assert server.name == "POST /v1/score"
    assert server.context.trace_id == int(TRACE_ID, 16)
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == int(PARENT_ID, 16)
    assert server.context.trace_state.get("vendor") == "1"
    attrs = server.attributes
    assert attrs["request_id"] == r.headers["x-request-id"] == r.json()["request_id"]
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/score"
    assert attrs["http.response.status_code"] == 200
    assert server.status.status_code == StatusCode.UNSET
    assert r.headers["traceresponse"] == f"00-{TRACE_ID}-{server.context.span_id:016x}-01"

    kids = children(exporter, server)
    assert sorted(s.name for s in kids) == sorted([SPAN_VALIDATE, SPAN_QUEUE_WAIT, SPAN_BATCH, SPAN_SERIALIZE])
    assert all(s.context.trace_id == int(TRACE_ID, 16) for s in kids)
    by_name = {s.name: s for s in kids}
    validate, wait, batch, ser = (by_name[n] for n in (SPAN_VALIDATE, SPAN_QUEUE_WAIT, SPAN_BATCH, SPAN_SERIALIZE))
    tokens = r.json()["usage"]["tokens"]
    assert validate.attributes == {"darl.call.pairs": 3, "darl.call.tokens": tokens}
    assert batch.attributes["darl.batch.pairs"] == 3
    assert batch.attributes["darl.batch.tokens"] == tokens
    assert batch.attributes["darl.batch.call_pairs"] == 3
    # They tile the request in order, inside the server span.
    assert server.start_time == validate.start_time <= validate.end_time <= wait.start_time
    assert wait.end_time == batch.start_time <= batch.end_time <= ser.start_time <= ser.end_time <= server.end_time


async def test_a_call_over_several_batches_and_calls_sharing_one(
    make_app, engine: FakeEngine, exporter: InMemorySpanExporter
) -> None:
    """One queue_wait per call (until its first batch); one batch_inference per batch it is in,
    also when the batch serves other calls (same darl.batch.id)."""
    app = make_app(max_batch_pairs=2, max_wait_ms=0)
    async with serve(app) as c:
        body = {"query": "angle bracket", "items": ITEMS}
        assert (await c.post("/v1/score", json=body)).status_code == 200  # 3 pairs: batches of 2 and 1
        engine.gate = asyncio.Event()  # hold the engine so that two calls queue behind a third
        blocker = asyncio.ensure_future(c.post("/v1/score", json={"query": "q", "items": ITEMS[:1]}))
        await wait_until(lambda: len(engine.batches) == 5)  # warm-up, seed, 2 batches, the blocker's
        small = {"query": "angle bracket", "items": ITEMS[:1]}
        calls = [asyncio.ensure_future(c.post("/v1/score", json=small)) for _ in range(2)]
        await wait_until(lambda: app.state.runtime.batcher.queued_pairs == 2)
        engine.gate.set()
        responses = await asyncio.gather(blocker, *calls)
    assert [r.status_code for r in responses] == [200, 200, 200]
    first, *rest = sorted(server_spans(exporter), key=lambda s: s.start_time)
    batches = sorted(children(exporter, first, SPAN_BATCH), key=lambda s: s.start_time)
    assert [s.attributes["darl.batch.pairs"] for s in batches] == [2, 1]
    assert len(children(exporter, first, SPAN_QUEUE_WAIT)) == 1
    shared = {}
    for server in rest[1:]:  # the two calls that waited behind the blocker
        [b] = children(exporter, server, SPAN_BATCH)
        assert len(children(exporter, server, SPAN_QUEUE_WAIT)) == 1
        assert b.attributes["darl.batch.pairs"] == 2 and b.attributes["darl.batch.call_pairs"] == 1
        shared[server.context.trace_id] = b.attributes["darl.batch.id"]
    assert len(shared) == 2 and len(set(shared.values())) == 1  # two traces, one batch


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rerank", {"query": "angle bracket", "texts": ["Simpson Angle", "Paint"]}),
        ("/v1/rerank", {"query": "angle bracket", "documents": ["Simpson Angle", "Paint"]}),
        ("/v2/rerank", {"query": "angle bracket", "documents": ["Simpson Angle", {"text": "Paint"}]}),
    ],
)
async def test_rerank_routes_get_the_same_spans(make_app, exporter: InMemorySpanExporter, path, body) -> None:
    async with serve(make_app()) as c:
        r = await c.post(path, json=body, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    [server] = server_spans(exporter)
    assert server.name == f"POST {path}" and server.context.trace_id == int(TRACE_ID, 16)
    assert server.attributes["request_id"] == r.headers["x-request-id"]
    names = sorted(s.name for s in children(exporter, server))
    assert names == sorted([SPAN_VALIDATE, SPAN_QUEUE_WAIT, SPAN_BATCH, SPAN_SERIALIZE])


async def test_4xx_has_a_server_span_with_its_status(make_app, exporter: InMemorySpanExporter) -> None:
    async with serve(make_app()) as c:
        r = await c.post("/v1/score", json={"query": "q", "items": []}, headers={"traceparent": TRACEPARENT})
        assert r.status_code == 422
        r2 = await c.post("/v1/nope", json={})
        assert r2.status_code == 404
        assert (await c.get("/healthz")).status_code == 200  # probes: no span
        assert (await c.get("/metrics")).status_code == 200
    refused, unmatched = sorted(server_spans(exporter), key=lambda s: s.start_time)
    assert refused.name == "POST /v1/score" and refused.context.trace_id == int(TRACE_ID, 16)
    assert refused.attributes["http.response.status_code"] == 422
    assert refused.attributes["request_id"] == r.headers["x-request-id"]
    assert refused.status.status_code == StatusCode.UNSET  # a client error is not the server's
    assert children(exporter, refused) == []  # refused before the route: no validate span, the status says it
    assert unmatched.name == "POST" and unmatched.attributes["http.response.status_code"] == 404
    assert unmatched.attributes["url.path"] == "/v1/nope" and "http.route" not in unmatched.attributes


async def test_engine_failure_marks_the_server_and_batch_spans(
    make_app, engine: FakeEngine, exporter: InMemorySpanExporter
) -> None:
    async with serve(make_app()) as c:
        engine.fail_next = EngineError("boom")
        r = await c.post("/v1/score", json={"query": "q", "items": ITEMS[:1]})
    assert r.status_code == 503
    [server] = server_spans(exporter)
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["http.response.status_code"] == 503
    [batch] = children(exporter, server, SPAN_BATCH)
    assert batch.status.status_code == StatusCode.ERROR and "boom" in (batch.status.description or "")
    assert children(exporter, server, SPAN_SERIALIZE) == []


async def test_tracing_is_off_by_default(make_app, exporter: InMemorySpanExporter) -> None:
    assert Settings(_env_file=None).otlp_traces_endpoint is None
    assert setup_tracing(Settings(_env_file=None)) is None
    app = make_app(traced=False)
    assert app.state.tracer_provider is None
    assert all(m.cls is not TracingMiddleware for m in app.user_middleware)
    async with serve(app) as c:
        r = await c.post("/v1/score", json={"query": "q", "items": ITEMS[:1]}, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200 and "traceresponse" not in r.headers
    assert exporter.get_finished_spans() == ()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # the global one is never set


async def test_unsampled_caller_gets_no_spans(make_app, exporter: InMemorySpanExporter) -> None:
    async with serve(make_app()) as c:
        r = await c.post(
            "/v1/score", json={"query": "q", "items": ITEMS[:1]}, headers={"traceparent": TRACEPARENT[:-2] + "00"}
        )
    assert r.status_code == 200
    assert exporter.get_finished_spans() == ()


def test_settings_read_the_opentelemetry_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://otel:4318/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ranker")
    s = Settings(_env_file=None)
    assert (s.otlp_traces_endpoint, s.otlp_service_name, s.otlp_traces_protocol) == (
        "http://otel:4318/v1/traces",
        "ranker",
        None,
    )
    monkeypatch.setenv("DARL_OTLP_TRACES_ENDPOINT", "http://mine:4317")  # the DARL_ one wins
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    s = Settings(_env_file=None)
    assert (s.otlp_traces_endpoint, s.otlp_traces_protocol) == ("http://mine:4317", "grpc")
    assert Settings(_env_file=None, otlp_traces_endpoint="http://kw:4318").otlp_traces_endpoint == "http://kw:4318"


@pytest.mark.parametrize(
    ("endpoint", "configured", "protocol"),
    [
        ("http://collector:4318", None, "http/protobuf"),
        ("https://otlp.example.com/v1/traces", None, "http/protobuf"),
        ("http://collector:4317", None, "grpc"),
        ("grpc://collector:9000", None, "grpc"),
        ("http://collector:4317", "http/protobuf", "http/protobuf"),
        ("http://collector:4318", "grpc", "grpc"),
    ],
)
def test_protocol_follows_the_setting_then_the_endpoint(endpoint: str, configured, protocol: str) -> None:
    assert otlp_protocol(endpoint, configured) == protocol


def test_exporters_are_built_without_a_collector() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    http = make_exporter("http://127.0.0.1:4318")
    assert isinstance(http, HttpExporter) and http._endpoint == "http://127.0.0.1:4318/v1/traces"
    assert make_exporter("http://127.0.0.1:4318/custom/path")._endpoint == "http://127.0.0.1:4318/custom/path"
    grpc = make_exporter("grpc://127.0.0.1:4317")
    assert isinstance(grpc, GrpcExporter) and grpc._endpoint == "127.0.0.1:4317" and grpc._insecure
    for exporter in (http, grpc):
        exporter.shutdown()


async def test_configured_endpoint_installs_a_provider_the_app_shuts_down(tiny_artifact: Path, cache_dir: Path) -> None:
    """With an endpoint (no collector listening), the app builds its own provider and OTLP exporter
    and shuts the provider down when it stops. No request is made: nothing waits on the network."""
    settings = settings_for(
        tiny_artifact, cache_dir, otlp_traces_endpoint="http://127.0.0.1:9", otlp_service_name="svc"
    )
    app = create_app(settings, engine_factory=lambda s, a: FakeEngine())
    provider = app.state.tracer_provider
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "svc"
    assert any(m.cls is TracingMiddleware for m in app.user_middleware)
    [processor] = provider._active_span_processor._span_processors
    assert isinstance(processor, BatchSpanProcessor)
    exporter = processor.span_exporter
    assert isinstance(exporter, HttpExporter) and exporter._endpoint == "http://127.0.0.1:9/v1/traces"
    shut = []
    real_shutdown = provider.shutdown
    provider.shutdown = lambda: shut.append(1) or real_shutdown()  # type: ignore[method-assign]
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_ready()
    assert shut == [1]
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
