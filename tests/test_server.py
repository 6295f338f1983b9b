"""End to end through a real uvicorn server: the README's command, disconnects, SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from darl.process import darl_command, running_server
from service.app import create_app
from service.settings import Settings
from tests import REPO
from tests.apps import InProcessServer
from tests.fakes import FakeEngine

BODY = {"query": "angle bracket", "items": [{"id": "a", "title": "Simpson Strong-Tie 12-Gauge Angle"}]}


def test_darl_serve_scores_and_exits_cleanly_on_sigterm(tiny_artifact: Path, cache_dir: Path) -> None:
    env = {"DARL_MODEL_DIR": str(tiny_artifact), "DARL_CACHE_DIR": str(cache_dir), "DARL_ENGINE": "torch"}
    with running_server(env) as (url, proc):
        r = httpx.post(url + "/v1/score", json=BODY, timeout=30)
        assert r.status_code == 200, r.text
        assert sum(r.json()["results"][0]["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert httpx.get(url + "/healthz").status_code == 200
        assert "darl_engine_ready 1.0" in httpx.get(url + "/metrics").text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_darl_serve_refuses_a_missing_artifact_with_a_hint(tmp_path: Path) -> None:
    env = {"DARL_MODEL_DIR": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([*darl_command(), "serve"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "not a model artifact" in res.stderr and "make artifact" in res.stderr


def raw_post(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_client_disconnect_frees_queued_work(tiny_artifact: Path, cache_dir: Path) -> None:
    engine = FakeEngine()
    settings = Settings(model_dir=tiny_artifact, cache_dir=cache_dir, max_batch_pairs=1, request_timeout_s=10)
    app = create_app(settings, engine_factory=lambda s, a: engine)
    with InProcessServer(app) as url:
        import json

        warm = len(engine.scored_pairs)
        engine.thread_gate = threading.Event()  # the engine holds the next batch until released
        busy = threading.Thread(target=lambda: httpx.post(url + "/v1/score", json=BODY, timeout=10))
        busy.start()
        deadline = time.monotonic() + 10
        while len(engine.scored_pairs) == warm:  # the busy request's pair is in the engine
            assert time.monotonic() < deadline
            time.sleep(0.01)
        many = {"query": "q", "items": [{"id": str(i), "title": f"item {i}"} for i in range(5)]}
        sock = raw_post(int(url.rsplit(":", 1)[1]), json.dumps(many).encode())
        while "darl_queue_depth_pairs 5.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sock.close()  # the client goes away while its 5 pairs wait in the queue
        while 'darl_failures_total{type="client_disconnected"} 1.0' not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        engine.thread_gate.set()
        busy.join()
        time.sleep(0.5)
        assert len(engine.scored_pairs) - warm == 1, "pairs of a disconnected client were computed"
        assert "darl_dropped_pairs_total 5.0" in httpx.get(url + "/metrics").text


def test_sigterm_drains_in_flight_requests(tiny_artifact: Path, cache_dir: Path) -> None:
    """Accepted requests finish after SIGTERM; the server exits 0."""
    env = {
        "DARL_MODEL_DIR": str(tiny_artifact),
        "DARL_CACHE_DIR": str(cache_dir),
        "DARL_ENGINE": "torch",
        "DARL_MAX_BATCH_PAIRS": "1",
        "DARL_REQUEST_TIMEOUT_S": "60",
        "DARL_SHUTDOWN_GRACE_S": "60",  # generous: a loaded CI machine must not turn a drain into a 503
    }
    many = {"query": "q", "items": [{"id": str(i), "title": f"item number {i} " * 20} for i in range(200)]}
    with running_server(env) as (url, proc):

        async def burst() -> tuple[float, list[tuple[int, float]]]:
            async with httpx.AsyncClient(timeout=60) as c:

                async def one() -> tuple[int, float]:
                    r = await c.post(url + "/v1/score", json=many)
                    return r.status_code, time.monotonic()

                tasks = [asyncio.create_task(one()) for _ in range(4)]
                give_up = time.monotonic() + 30
                while time.monotonic() < give_up:  # SIGTERM only once the server holds queued work
                    metrics = (await c.get(url + "/metrics")).text
                    depth = float(re.search(r"^darl_queue_depth_pairs (\S+)", metrics, re.M).group(1))
                    if depth > 0:
                        break
                    await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                return sent, [await t for t in tasks]

        sigterm_at, results = asyncio.run(burst())
        assert [status for status, _ in results] == [200] * 4
        assert all(done > sigterm_at for _, done in results), "requests were not in flight at SIGTERM"
        assert proc.wait(timeout=60) == 0
