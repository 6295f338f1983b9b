"""A fake engine for batcher and HTTP-layer tests (engines have their own tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np

from relevance_core.postprocess import probs_from_logits
from service.admission import Admission
from service.batcher import BatchLimits, MicroBatcher
from service.engine import Engine
from service.errors import EngineError
from service.metrics import Metrics
from service.settings import Settings


class FakeEngine(Engine):
    """Deterministic probabilities from the token ids; records every batch it ran.

    ``delay`` makes each batch take time, ``seconds_per_pair`` makes it take time per pair (an
    engine of fixed speed); ``gate`` (an Event), when set, holds batches until it is set;
    ``fail_next`` makes the next batch raise.
    """

    name = "fake"

    def __init__(self, delay: float = 0.0, seconds_per_pair: float = 0.0) -> None:
        self.delay = delay
        self.seconds_per_pair = seconds_per_pair
        self.batches: list[list[tuple[int, ...]]] = []
        self.gate: asyncio.Event | None = None
        self.thread_gate: threading.Event | None = None  # for servers running in another thread
        self.fail_next: Exception | None = None
        self.started = False
        self.dead = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def health(self) -> None:
        if self.dead:
            raise EngineError("fake engine died")

    async def score(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        self.batches.append([tuple(x) for x in batch])
        if self.gate is not None:
            await self.gate.wait()
        if self.thread_gate is not None:
            await asyncio.to_thread(self.thread_gate.wait, 30)
        if self.delay or self.seconds_per_pair:
            await asyncio.sleep(self.delay + self.seconds_per_pair * len(batch))
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        logits = np.array([[len(x) % 3, sum(x) % 5, 1.0] for x in batch], dtype=np.float32)
        return probs_from_logits(logits)

    @property
    def scored_pairs(self) -> list[tuple[int, ...]]:
        return [p for b in self.batches for p in b]


def make_batcher(engine: Engine, metrics: Metrics | None = None, **settings) -> MicroBatcher:
    """A batcher (not started) with its admission, both built from ``Settings`` with these overrides."""
    s = Settings(_env_file=None, **settings)
    metrics = metrics or Metrics()
    return MicroBatcher(engine, BatchLimits.from_settings(s), Admission(s, metrics), metrics)
