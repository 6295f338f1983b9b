"""Closed- and open-loop HTTP load on one server, bounded in request count and time.

``send(body) -> (status, response bytes)`` is the only thing a load loop knows
about a server, so the loops are tested with a fake ``send`` and no network.

Closed loop: ``concurrency`` workers each send a call, wait for its answer and
send the next one. The first round (``concurrency`` completions) is warm-up.
Throughput is measured between completions, from the completion that ends the
warm-up (the anchor) to the last measured completion, which does not round a
window to whole requests (a 200-item call completes about once a second).

Open loop: Poisson arrivals at ``rate`` calls/s from a seeded generator, sent
whether or not earlier calls have finished; latency counts from the scheduled
send time, so a client that falls behind does not hide queueing (no
coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

Send = Callable[[bytes], Awaitable[tuple[int, bytes]]]
WARMUP_FACTOR = 4.0
Hook = Callable[[], None]


@dataclass
class Sample:
    start: float
    end: float
    pairs: int
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class Window:
    """What one measurement produced (one cell, one repetition)."""

    mode: str  # "closed" or "open"
    n: int
    concurrency: int | None = None
    rate: float | None = None  # open loop: offered calls/s
    seconds: float = 0.0
    requests: int = 0
    pairs: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    error_statuses: dict[str, int] = field(default_factory=dict)
    truncated_by_time: bool = False

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies")
        d.update(
            pairs_per_s=self.pairs_per_s,
            requests_per_s=self.requests_per_s,
            p50=percentile(self.latencies, 50),
            p90=percentile(self.latencies, 90),
            p99=percentile(self.latencies, 99),
            latencies=[round(x, 5) for x in self.latencies],
        )
        return d


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _record_error(w: Window, status: int) -> None:
    w.errors += 1
    key = str(status)
    w.error_statuses[key] = w.error_statuses.get(key, 0) + 1


async def _timed_send(send: Send, body: bytes) -> tuple[int, float]:
    try:
        status, _ = await send(body)
    except Exception:  # transport errors count as errors (status 0), never crash the run
        status = 0
    return status, time.perf_counter()


async def closed_loop(
    send: Send,
    bodies: Sequence[bytes],
    n: int,
    concurrency: int,
    measure_requests: int,
    max_seconds: float,
    on_anchor: Hook | None = None,
    on_end: Hook | None = None,
) -> Window:
    """``concurrency`` workers; after a warm-up round, measure ``measure_requests`` completions.

    Stops issuing once the measured completions are reached or ``max_seconds``
    after the anchor (the warm-up round is capped at ``WARMUP_FACTOR × max_seconds``:
    at concurrency 16 it is 16 calls of a slow server); the
    calls still in flight then finish (they are not cancelled, so the next cell
    starts on an idle server) but are not counted.
    """
    if concurrency < 1 or measure_requests < 1:
        raise ValueError("concurrency and measure_requests must be positive")
    w = Window(mode="closed", n=n, concurrency=concurrency)
    done: list[Sample] = []
    next_body = 0
    anchor: float | None = None
    stop = asyncio.Event()
    warmup = concurrency
    t_begin = time.perf_counter()

    def take_body() -> bytes:
        nonlocal next_body
        body = bodies[next_body % len(bodies)]
        next_body += 1
        return body

    async def worker() -> None:
        nonlocal anchor
        while not stop.is_set():
            t0 = time.perf_counter()
            status, t1 = await _timed_send(send, take_body())
            if stop.is_set():
                return
            done.append(Sample(t0, t1, n, status))
            if anchor is None:
                if len(done) >= warmup:
                    anchor = t1
                    if on_anchor:
                        on_anchor()
                elif t1 - t_begin > WARMUP_FACTOR * max_seconds:
                    w.truncated_by_time = True
                    stop.set()
                continue
            measured = len(done) - warmup
            if measured >= measure_requests or t1 - anchor >= max_seconds:
                w.truncated_by_time = measured < measure_requests
                if on_end:
                    on_end()
                stop.set()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    measured = done[warmup:] if anchor is not None else []
    if measured:
        w.seconds = measured[-1].end - anchor
    for s in measured:
        if s.ok:
            w.requests += 1
            w.pairs += s.pairs
            w.latencies.append(s.latency)
        else:
            _record_error(w, s.status)
    return w


def poisson_schedule(rate: float, count: int, seed: int) -> list[float]:
    """Send offsets (s) of ``count`` Poisson arrivals at ``rate``/s; the first at 0."""
    if rate <= 0 or count < 1:
        raise ValueError("rate and count must be positive")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def open_loop(
    send: Send,
    bodies: Sequence[bytes],
    n: int,
    rate: float,
    count: int,
    max_seconds: float,
    seed: int = 0,
    drain_seconds: float = 120.0,
    on_anchor: Hook | None = None,
    on_end: Hook | None = None,
) -> Window:
    """``count`` calls at Poisson arrivals of ``rate``/s (no more arrivals after ``max_seconds``)."""
    w = Window(mode="open", n=n, rate=rate)
    schedule = [t for t in poisson_schedule(rate, count, seed) if t <= max_seconds]
    w.truncated_by_time = len(schedule) < count
    samples: list[Sample] = []
    t_begin = time.perf_counter()
    if on_anchor:
        on_anchor()

    async def one(k: int, offset: float) -> None:
        delay = t_begin + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        status, t1 = await _timed_send(send, bodies[k % len(bodies)])
        samples.append(Sample(t_begin + offset, t1, n, status))

    tasks = [asyncio.create_task(one(k, off)) for k, off in enumerate(schedule)]
    _, pending = await asyncio.wait(tasks, timeout=(schedule[-1] if schedule else 0) + drain_seconds)
    for t in pending:
        t.cancel()
    if on_end:
        on_end()
    if samples:
        w.seconds = max(s.end for s in samples) - t_begin
    for s in samples:
        if s.ok:
            w.requests += 1
            w.pairs += s.pairs
            w.latencies.append(s.latency)
        else:
            _record_error(w, s.status)
    for _ in pending:  # still unanswered after the drain: cancelled, counted as errors
        _record_error(w, -1)
    return w
