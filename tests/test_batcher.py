"""Micro-batcher behaviour, each property against a fake engine."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batcher import MicroBatcher
from service.errors import DeadlineExceeded, EngineError, NotReady, QueueFull
from tests.fakes import FakeEngine, make_batcher


def pairs(n: int, length: int = 4, start: int = 0) -> list[tuple[int, ...]]:
    return [tuple([start + i] * length) for i in range(n)]


async def make(engine: FakeEngine, **settings) -> MicroBatcher:
    b = make_batcher(engine, **{"max_batch_tokens": 8192, "max_batch_pairs": 256, **settings})
    await b.start()
    return b


async def test_results_come_back_in_input_order() -> None:
    engine = FakeEngine()
    b = await make(engine)
    ps = pairs(7, start=10)
    probs = await b.score(ps, deadline_s=2)
    expected = await FakeEngine().score(ps)
    np.testing.assert_array_equal(probs, expected)
    await b.stop()


async def test_concurrent_requests_share_a_batch() -> None:
    engine = FakeEngine()
    b = await make(engine, max_wait_ms=50)
    await asyncio.gather(*(b.score(pairs(3, start=10 * k), deadline_s=2) for k in range(4)))
    assert [len(x) for x in engine.batches] == [12]
    await b.stop()


async def test_batch_closes_at_pair_limit() -> None:
    engine = FakeEngine()
    b = await make(engine, max_batch_pairs=4, max_wait_ms=50)
    await b.score(pairs(10), deadline_s=2)
    assert [len(x) for x in engine.batches] == [4, 4, 2]
    await b.stop()


async def test_batch_closes_at_token_budget() -> None:
    engine = FakeEngine()
    b = await make(engine, max_batch_tokens=10, max_wait_ms=50)
    await b.score(pairs(5, length=4), deadline_s=2)  # 4+4 fit in 10; a third would not
    assert [len(x) for x in engine.batches] == [2, 2, 1]
    await b.stop()


async def test_oversized_pair_runs_alone() -> None:
    engine = FakeEngine()
    b = await make(engine, max_batch_tokens=10)
    await b.score([tuple(range(50))], deadline_s=2)
    assert [len(x) for x in engine.batches] == [1]
    await b.stop()


async def test_batch_closes_after_max_wait() -> None:
    engine = FakeEngine()
    b = await make(engine, max_wait_ms=30)
    first = asyncio.create_task(b.score(pairs(1), deadline_s=2))
    await asyncio.sleep(0.2)  # well past the wait: the first batch has run alone
    await b.score(pairs(1, start=5), deadline_s=2)
    await first
    assert [len(x) for x in engine.batches] == [1, 1]
    await b.stop()


async def test_cancelled_request_is_dropped_before_compute() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    b = await make(engine, max_batch_pairs=2)
    blocker = asyncio.create_task(b.score(pairs(2, start=100), deadline_s=5))
    await asyncio.sleep(0.05)  # the engine now holds the first batch
    victim = asyncio.create_task(b.score(pairs(3, start=200), deadline_s=5))
    await asyncio.sleep(0.01)
    victim.cancel()  # what the API does when the client disconnects
    engine.gate.set()
    await blocker
    await asyncio.sleep(0.05)
    assert not any(p[0] >= 200 for p in engine.scored_pairs)
    assert b.queued_pairs == 0
    assert b.metrics.dropped_pairs._value.get() == 3
    await b.stop()


async def test_deadline_gives_504_and_pairs_are_not_computed_later() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    b = await make(engine, max_batch_pairs=1)
    blocker = asyncio.create_task(b.score(pairs(1, start=100), deadline_s=5))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        await b.score(pairs(2, start=300), deadline_s=0.1)
    engine.gate.set()
    await blocker
    await asyncio.sleep(0.05)
    assert not any(p[0] >= 300 for p in engine.scored_pairs)
    await b.stop()


async def test_engine_error_reaches_every_waiter_and_loop_survives() -> None:
    engine = FakeEngine()
    engine.fail_next = RuntimeError("boom")
    b = await make(engine, max_wait_ms=50)
    results = await asyncio.gather(
        *(b.score(pairs(2, start=10 * k), deadline_s=2) for k in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, EngineError) and "boom" in r.message for r in results)
    assert len(engine.batches) == 1
    assert b.metrics.failures.labels("engine_error")._value.get() == 3
    ok = await b.score(pairs(2), deadline_s=2)  # the loop is still running
    assert ok.shape == (2, 3)
    await b.stop()


async def test_full_queue_is_refused_with_retry_after() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    b = await make(engine, max_queue_pairs=5, max_batch_pairs=1)
    running = asyncio.create_task(b.score(pairs(1), deadline_s=5))  # taken by the engine
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(b.score(pairs(4, start=10), deadline_s=5))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as exc:
        await b.score(pairs(2, start=20), deadline_s=5)
    assert "5" in exc.value.message and int(exc.value.headers["Retry-After"]) >= 1
    assert b.queued_pairs == 4
    engine.gate.set()
    await asyncio.gather(running, queued)
    await b.stop()


async def test_stopped_batcher_refuses_and_fails_leftovers() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    b = await make(engine, max_batch_pairs=1)
    running = asyncio.create_task(b.score(pairs(1), deadline_s=5))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(b.score(pairs(1, start=9), deadline_s=5))
    await asyncio.sleep(0.01)
    await b.stop()
    running.cancel()
    with pytest.raises(NotReady):
        await queued
    with pytest.raises(NotReady):
        await b.score(pairs(1), deadline_s=1)
