"""Helpers for tests of the HTTP layer (no test in here): the app in-process or behind uvicorn.

``serve`` drives an app through its lifespan with an ASGI client; ``InProcessServer``
runs it under a real uvicorn in a thread (a test keeps hold of its fake engine).
The real ``darl serve`` as a child process is ``darl.process.running_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn

from darl.process import free_port
from service.settings import Settings

ITEMS = [
    {"id": "a1", "title": "Simpson Strong-Tie 12-Gauge Angle"},
    {"id": "b2", "title": "BEHR Premium 1-gal. Deep Base Paint", "description": "interior, satin"},
    {"id": "c3", "title": "angle bracket " * 100},  # long: truncated
]


@contextlib.asynccontextmanager
async def serve(app) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` once its engine is ready (startup and shutdown run around the block)."""
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_ready()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def settings_for(artifact: Path, cache_dir: Path, **kw) -> Settings:
    return Settings(model_dir=artifact, cache_dir=cache_dir, engine="torch", dtype="float32", **kw)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """Poll instead of sleeping a fixed time: CI machines are slow and noisy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def assert_envelope(resp: httpx.Response, status: int, type_: str) -> dict:
    """``resp`` is the error envelope of ``status`` and ``type_``, with its request id; returns the error."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert err["type"] == type_ and err["message"] and err["request_id"]
    assert resp.headers["x-request-id"] == err["request_id"]
    return err


class InProcessServer:
    """uvicorn in a thread, so a test can hold the app's fake engine."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("in-process server not ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
