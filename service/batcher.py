"""Micro-batcher: many requests' pairs onto one engine, one batch at a time.

One consumer task drains a bounded FIFO of pairs. A batch closes when the next
pair would exceed the token budget, at the pair limit, or when no more work
arrives within ``max_wait_ms`` of the batch's first pair. Pairs of requests that
are already finished (deadline passed, client gone, failed) are dropped before
they cost compute. An engine error fails every request in that batch and the
loop goes on. Whether a call enters the queue at all is ``service.admission``'s
one decision, made from the work queued ahead of it; every batch's engine time
feeds that decision's cost model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from relevance_core.labels import LABELS
from service.admission import Admission, Backlog
from service.engine import Engine, TokenIds
from service.errors import DeadlineExceeded, EngineError, NotReady, ServiceError
from service.metrics import Metrics
from service.settings import Settings
from service.tracing import SPAN_BATCH, CallTrace, current_call_trace

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLimits:
    """When a batch closes; built from the settings only (``from_settings``)."""

    max_batch_tokens: int
    max_batch_pairs: int
    max_wait_ms: float
    max_queue_pairs: int

    @classmethod
    def from_settings(cls, s: Settings) -> BatchLimits:
        return cls(s.max_batch_tokens, s.max_batch_pairs, s.max_wait_ms, s.max_queue_pairs)


@dataclass(eq=False)
class _Request:
    pairs: Sequence[TokenIds]
    deadline: float
    future: asyncio.Future
    enqueued_at: float
    trace: CallTrace | None = None  # the call's spans, when it is traced
    enqueued_ns: int = 0  # OpenTelemetry's clock; set for a traced call only
    results: np.ndarray = field(init=False)
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.results = np.empty((len(self.pairs), len(LABELS)), dtype=np.float32)
        self.remaining = len(self.pairs)

    def alive(self, now: float) -> bool:
        return not self.future.done() and now < self.deadline


class MicroBatcher:
    def __init__(
        self,
        engine: Engine,
        limits: BatchLimits,
        admission: Admission,
        metrics: Metrics | None = None,
        on_engine_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.admission = admission
        self.metrics = metrics or Metrics()
        self.on_engine_error = on_engine_error
        self._queue: deque[tuple[_Request, int]] = deque()
        self._queued = 0
        self._queued_tokens = 0
        self._inflight_tokens = 0  # tokens in the batch the engine is computing now
        self._requests = 0  # admitted calls not finished yet
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._accepting = False
        self.batches_run = 0
        self.metrics.queue_capacity.set(limits.max_queue_pairs)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._accepting = True
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the loop; whatever is still queued fails with 503."""
        self._accepting = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.fail_pending(NotReady("service is shutting down"))

    def fail_pending(self, error: Exception) -> None:
        """Fail every queued request now (the engine died or the service stops)."""
        while self._queue:
            req, _ = self._queue.popleft()
            if not req.future.done():
                req.future.set_exception(error)
        self._set_queued(0, 0)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued_pairs(self) -> int:
        return self._queued

    def backlog(self) -> Backlog:
        return Backlog(self._queued_tokens + self._inflight_tokens, self._queued, self._requests)

    # -- producer side -----------------------------------------------------
    async def score(self, pairs: Sequence[TokenIds], deadline_s: float) -> np.ndarray:
        """Probabilities for ``pairs`` in order; raises a ``ServiceError`` on failure or refusal."""
        if not self._accepting or not self.running:
            raise NotReady("service is not accepting requests")
        n = len(pairs)
        if n == 0:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        tokens = sum(len(p) for p in pairs)
        self.admission.decide(n, tokens, deadline_s, self.backlog())
        loop = asyncio.get_running_loop()
        call = current_call_trace()
        req = _Request(
            pairs,
            loop.time() + deadline_s,
            loop.create_future(),
            time.perf_counter(),
            call,
            time.time_ns() if call is not None else 0,
        )
        self._queue.extend((req, i) for i in range(n))
        self._set_queued(self._queued + n, self._queued_tokens + tokens)
        self._requests += 1
        self._wake.set()
        try:
            return await asyncio.wait_for(req.future, timeout=deadline_s)
        except TimeoutError:
            self.metrics.failures.labels("deadline_exceeded").inc()
            raise DeadlineExceeded(f"request not scored within its {deadline_s:g}s deadline") from None
        finally:
            self._requests -= 1

    # -- consumer side -----------------------------------------------------
    def _set_queued(self, pairs: int, tokens: int) -> None:
        self._queued = pairs
        self._queued_tokens = tokens
        self.metrics.queue_depth.set(pairs)

    def _pop_alive(self, now: float) -> tuple[_Request, int] | None:
        """Head of the queue, dropping pairs whose request is already finished."""
        dropped = dropped_tokens = 0
        while self._queue:
            req, i = self._queue[0]
            if req.alive(now):
                break
            self._queue.popleft()
            dropped += 1
            dropped_tokens += len(req.pairs[i])
        if dropped:
            self._set_queued(self._queued - dropped, self._queued_tokens - dropped_tokens)
            self.metrics.dropped_pairs.inc(dropped)
        return self._queue[0] if self._queue else None

    async def _collect(self) -> list[tuple[_Request, int]]:
        loop = asyncio.get_running_loop()
        batch: list[tuple[_Request, int]] = []
        tokens = 0
        close_at: float | None = None
        lim = self.limits
        while True:
            head = self._pop_alive(loop.time())
            if head is not None:
                size = len(head[0].pairs[head[1]])
                if batch and tokens + size > lim.max_batch_tokens:
                    return batch  # token budget reached
                self._queue.popleft()
                self._set_queued(self._queued - 1, self._queued_tokens - size)
                batch.append(head)
                tokens += size
                if close_at is None:
                    close_at = loop.time() + lim.max_wait_ms / 1000
                if len(batch) >= lim.max_batch_pairs or tokens >= lim.max_batch_tokens:
                    return batch
                continue
            # Queue empty: wait for more work, until the batch's wait is over.
            self._wake.clear()
            if close_at is None:
                await self._wake.wait()
                continue
            remaining = close_at - loop.time()
            if remaining <= 0:
                return batch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=remaining)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._execute(batch)

    async def _execute(self, batch: list[tuple[_Request, int]]) -> None:
        m = self.metrics
        ids = [req.pairs[i] for req, i in batch]
        tokens = sum(len(x) for x in ids)
        self._inflight_tokens = tokens
        start = time.perf_counter()
        for req, _ in batch:
            m.queue_wait.observe(start - req.enqueued_at)
        m.batch_pairs.observe(len(ids))
        m.batch_tokens.observe(tokens)
        spans = self._start_spans(batch, tokens)
        error: Exception | None = None
        try:
            probs = await self.engine.score(ids)
            if probs.shape != (len(ids), len(LABELS)):
                raise EngineError(f"engine returned shape {probs.shape} for {len(ids)} pairs")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = error = e if isinstance(e, ServiceError) else EngineError(f"{type(e).__name__}: {e}")
            log.error("batch of %d pairs failed: %s", len(ids), err)
            failed = {req for req, _ in batch if not req.future.done()}
            m.failures.labels("engine_error").inc(len(failed))
            for req in failed:
                req.future.set_exception(err)
            if self.on_engine_error is not None:
                self.on_engine_error(err)
            return
        finally:
            self._inflight_tokens = 0
            m.inference_duration.observe(time.perf_counter() - start)
            self.batches_run += 1
            if spans:
                _end_spans(spans, error)
        self.admission.cost.observe(tokens, time.perf_counter() - start)
        m.pairs.inc(len(ids))
        for (req, i), p in zip(batch, probs, strict=True):
            if req.future.done():
                continue
            req.results[i] = p
            req.remaining -= 1
            if req.remaining == 0:
                req.future.set_result(req.results)

    def _start_spans(self, batch: list[tuple[_Request, int]], tokens: int) -> list[Span]:
        """For each traced call in ``batch``: its ``queue_wait`` if this is its first batch, and a
        ``batch_inference`` span of its own (see service/tracing.py for why not one shared span)."""
        per_call: dict[_Request, int] = {}
        for req, _ in batch:
            if req.trace is not None:
                per_call[req] = per_call.get(req, 0) + 1
        if not per_call:
            return []
        now = time.time_ns()
        spans = []
        for req, pairs in per_call.items():
            assert req.trace is not None
            if req.enqueued_ns:  # first batch with a pair of this call: its queue wait ends here
                req.trace.queue_wait(req.enqueued_ns, now, len(req.pairs))
                req.enqueued_ns = 0
            attributes = {
                "darl.batch.id": self.batches_run,
                "darl.batch.pairs": len(batch),
                "darl.batch.tokens": tokens,
                "darl.batch.call_pairs": pairs,
            }
            spans.append(req.trace.span(SPAN_BATCH, now, attributes))
        return spans


def _end_spans(spans: list[Span], error: Exception | None) -> None:
    """End a batch's spans; a failed batch marks each of them as an error."""
    if error is not None:
        from opentelemetry.trace import StatusCode  # loaded already: spans exist only when tracing is on

        for span in spans:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, str(error))
    for span in spans:
        span.end()
