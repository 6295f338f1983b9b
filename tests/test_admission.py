"""Admission and deadlines: the cost model, the one decision, and the app under fixed-speed fake engines.

The fake engines take a fixed time per pair (``FakeEngine(seconds_per_pair=...)``): 20 pairs/s
for the test that uses the default settings unchanged, faster where only the shape of the
behaviour matters.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from service.admission import Admission, Backlog, CostModel
from service.app import create_app
from service.errors import DeadlineTooShort, QueueFull
from service.metrics import Metrics
from service.settings import Settings
from tests.apps import assert_envelope, serve, settings_for
from tests.fakes import FakeEngine


def body(n: int) -> dict:
    """``n`` items whose prompts all fill the model's max length, like the warm-up batch that seeds the
    cost model, so a fake engine's fixed time per pair is also a fixed time per token."""
    title = "galvanized steel angle bracket " * 20
    return {"query": "angle bracket", "items": [{"id": str(i), "title": f"{i} {title}"} for i in range(n)]}


# -- cost model -----------------------------------------------------------------


def test_cost_model_separates_overhead_from_per_token_cost() -> None:
    cost = CostModel()
    for tokens in (100, 1000, 4000, 100, 2000):
        cost.observe(tokens, 0.05 + 0.001 * tokens)
    overhead, per_token = cost.coefficients()
    assert overhead == pytest.approx(0.05, rel=1e-6) and per_token == pytest.approx(0.001, rel=1e-6)
    assert cost.seconds(10_000, batch_tokens=4096) == pytest.approx(3 * 0.05 + 10.0)  # three batches


def test_cost_model_with_one_batch_size_uses_the_mean_cost_per_token() -> None:
    cost = CostModel()
    assert not cost.known and cost.seconds(500, 4096) == 0.0
    cost.observe(400, 2.0)
    cost.observe(400, 2.0)
    assert cost.coefficients() == (0.0, pytest.approx(0.005))


def test_cost_model_follows_the_engine_after_a_slow_period() -> None:
    cost = CostModel(decay=0.9)
    for _ in range(10):
        cost.observe(1000, 10.0)  # slow: 10 ms per token
    for _ in range(60):
        cost.observe(1000, 1.0)  # back to 1 ms per token: the slow batches' weight is down to 0.9**60
    assert cost.seconds(1000, 4096) == pytest.approx(1.0, rel=0.02)


# -- the decision -----------------------------------------------------------------


def admission(**kw) -> Admission:
    cost = CostModel()
    cost.observe(1000, 1.0)  # 1 ms per token
    return Admission(Settings(_env_file=None, **kw), Metrics(), cost)


def test_deadline_follows_the_call() -> None:
    a = admission(request_timeout_s=5, request_timeout_per_pair_s=0.1, max_request_timeout_s=60)
    assert a.deadline_s(1) == pytest.approx(5.1) and a.deadline_s(512) == pytest.approx(56.2)
    assert a.deadline_s(512, requested_s=2.5) == 2.5  # the client's own
    assert a.deadline_s(10, requested_s=600) == 60  # bounded by the server maximum


def test_an_idle_server_tries_any_call_that_can_finish() -> None:
    a = admission(admission_wait_fraction=0.5)
    a.decide(pairs=512, tokens=9000, deadline_s=10, backlog=Backlog(0, 0, 0))  # 9 s of 10: tried


def test_a_call_that_cannot_finish_even_alone_is_a_422_that_says_what_fits() -> None:
    a = admission()
    with pytest.raises(DeadlineTooShort) as exc:
        a.decide(pairs=400, tokens=400 * 40, deadline_s=4.0, backlog=Backlog(0, 0, 0))  # 16 s of work
    assert "about 100 items fit" in exc.value.message  # 100 × 40 tokens × 1 ms = 4 s
    assert exc.value.status_code == 422


def test_429_counts_only_the_work_ahead_and_says_when_it_drains() -> None:
    a = admission(admission_wait_fraction=0.5)
    ahead = Backlog(tokens=3500, pairs=100, requests=3)  # 3.5 s queued ahead
    a.decide(pairs=10, tokens=400, deadline_s=10, backlog=ahead)  # 3.9 s ≤ 5 s: admitted
    with pytest.raises(QueueFull) as exc:
        a.decide(pairs=50, tokens=2000, deadline_s=10, backlog=ahead)  # 5.5 s > 5 s
    assert exc.value.headers["Retry-After"] == str(math.ceil(3.5))
    with pytest.raises(QueueFull, match="calls in flight"):
        admission(max_concurrent_requests=3).decide(1, 10, 10, ahead)
    with pytest.raises(QueueFull, match="pairs queued"):
        admission(max_queue_pairs=105).decide(10, 400, 10, ahead)


# -- the app under fixed-speed engines -------------------------------------------------


async def test_a_lone_max_items_call_succeeds_with_the_defaults(tiny_artifact: Path, cache_dir: Path) -> None:
    """20 pairs/s (the slowest engine measured on a 2-core AVX2 CPU) and default settings: a
    DARL_MAX_ITEMS call takes ~26 s and gets 200, within its default deadline."""
    engine = FakeEngine(seconds_per_pair=1 / 20)
    settings = settings_for(tiny_artifact, cache_dir)
    app = create_app(settings, engine_factory=lambda s, a: engine)
    async with serve(app) as c:
        r = await c.post("/v1/score", json=body(settings.max_items), timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 512 and r.json()["usage"]["deadline_s"] == pytest.approx(5 + 0.1 * 512)


async def test_small_calls_do_not_lock_a_large_one_out(tiny_artifact: Path, cache_dir: Path) -> None:
    """The old lockout: after small calls, a 512-item call was refused on an idle server for good."""
    engine = FakeEngine(seconds_per_pair=1 / 200)
    app = create_app(settings_for(tiny_artifact, cache_dir), engine_factory=lambda s, a: engine)
    async with serve(app) as c:
        for _ in range(10):
            assert (await c.post("/v1/score", json=body(10))).status_code == 200
        r = await c.post("/v1/score", json=body(512), timeout=60)
        assert r.status_code == 200, r.text


async def test_the_client_sets_the_deadline(tiny_artifact: Path, cache_dir: Path) -> None:
    engine = FakeEngine(seconds_per_pair=1 / 100)
    settings = settings_for(tiny_artifact, cache_dir, max_request_timeout_s=30)
    app = create_app(settings, engine_factory=lambda s, a: engine)
    async with serve(app) as c:
        r = await c.post("/v1/score", json=body(300), headers={"X-Request-Timeout": "0.5"})
        err = assert_envelope(r, 422, "deadline_too_short")  # ~3 s of work: no use retrying
        assert "items fit" in err["message"] and "retry-after" not in r.headers
        ok = await c.post("/v1/score", json=body(20), headers={"X-Request-Timeout": "5"})
        assert ok.status_code == 200 and ok.json()["usage"]["deadline_s"] == 5
        capped = await c.post("/v1/score", json={**body(2), "timeout_s": 600})
        assert capped.json()["usage"]["deadline_s"] == 30
        bad = await c.post("/v1/score", json=body(2), headers={"X-Request-Timeout": "soon"})
        assert "X-Request-Timeout" in assert_envelope(bad, 400, "bad_request")["message"]


async def test_three_times_overload_meets_every_accepted_deadline(tiny_artifact: Path, cache_dir: Path) -> None:
    """Open loop at 3× the engine's capacity: accepted calls finish within their deadlines, the
    rest get 429 with Retry-After, nothing else (no 504, no 5xx)."""
    # Slow enough that the app's own per-call overhead on a busy CI host stays small next to the deadline.
    engine = FakeEngine(seconds_per_pair=1 / 200)  # 200 pairs/s
    settings = settings_for(tiny_artifact, cache_dir, request_timeout_s=1.0, request_timeout_per_pair_s=0.02)
    app = create_app(settings, engine_factory=lambda s, a: engine)
    n, calls, interval = 20, 150, 20 / 600  # 20-item calls arriving for 600 pairs/s
    async with serve(app) as c:

        async def one(delay: float):
            await asyncio.sleep(delay)
            t0 = asyncio.get_running_loop().time()
            r = await c.post("/v1/score", json=body(n))
            return r, asyncio.get_running_loop().time() - t0

        done = await asyncio.gather(*(one(i * interval) for i in range(calls)))
    statuses = [r.status_code for r, _ in done]
    assert set(statuses) <= {200, 429}, statuses
    assert 0.2 * calls < statuses.count(200) < 0.6 * calls  # about a third fits
    assert all(r.headers.get("retry-after") for r, _ in done if r.status_code == 429)
    deadline = 1.0 + 0.02 * n
    assert max(t for r, t in done if r.status_code == 200) < deadline


async def test_the_estimate_recovers_after_a_slow_period(tiny_artifact: Path, cache_dir: Path) -> None:
    engine = FakeEngine(seconds_per_pair=1 / 500)
    app = create_app(settings_for(tiny_artifact, cache_dir), engine_factory=lambda s, a: engine)
    tight = {"X-Request-Timeout": "0.6"}  # 100 items take 0.2 s at full speed, 2 s when slow
    async with serve(app) as c:
        assert (await c.post("/v1/score", json=body(100), headers=tight)).status_code == 200
        engine.seconds_per_pair = 1 / 50  # a slow period (a noisy neighbour, a thermal throttle)
        for _ in range(3):
            assert (await c.post("/v1/score", json=body(20))).status_code == 200
        assert (await c.post("/v1/score", json=body(100), headers=tight)).status_code == 422
        engine.seconds_per_pair = 1 / 500  # back to full speed: small calls bring the estimate back
        for _ in range(20):
            assert (await c.post("/v1/score", json=body(20))).status_code == 200
        assert (await c.post("/v1/score", json=body(100), headers=tight)).status_code == 200
