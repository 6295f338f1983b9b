"""The model runtime behind the API: artifact, renderer, engine and batcher.

``start`` verifies the artifact synchronously (a bad artifact must stop the
process with a clear message) and then loads the engine in the background so
that ``/healthz`` answers while a slow engine (vLLM compiles for ~1–2 min on
CPU) warms up; ``/readyz`` turns 200 only after a real forward pass succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from relevance_core.labels import LABELS
from relevance_core.manifest import Manifest, verify_artifact
from relevance_core.postprocess import expected_grade
from relevance_core.prompt import PromptRenderer, PromptTooLongError
from service.artifacts import LoadedArtifact, load_artifact
from service.batcher import BatchLimits, MicroBatcher
from service.engine import Engine, create_engine
from service.errors import BadRequest, EngineError, NotReady
from service.metrics import Metrics
from service.schemas import ScoreRequest
from service.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings, LoadedArtifact], Engine]


def default_engine_factory(settings: Settings, artifact: LoadedArtifact) -> Engine:
    return create_engine(settings, artifact.checkpoint_dir, artifact.manifest.max_length)


@dataclass
class Scored:
    probs: np.ndarray
    scores: np.ndarray
    truncated: list[bool]
    tokens: int


class Runtime:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine_factory: EngineFactory = default_engine_factory,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine_factory = engine_factory
        self.manifest: Manifest | None = None
        self.artifact: LoadedArtifact | None = None
        self.engine: Engine | None = None
        self.renderer: PromptRenderer | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.failure: str | None = None
        self.load_seconds: float | None = None
        self._loader: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Verify now; load and warm up in the background."""
        self.manifest = verify_artifact(self.settings.model_dir)
        self._loader = asyncio.create_task(self._load(), name="model-loader")

    async def wait_ready(self) -> None:
        """For tests and scripts: wait until loading finished (or failed)."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    async def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.artifact = await asyncio.to_thread(load_artifact, self.settings.model_dir, self.settings.cache_dir)
            self.renderer = await asyncio.to_thread(self._make_renderer, self.artifact)
            engine = self.engine_factory(self.settings, self.artifact)
            self.engine = engine
            await engine.start()
            await self._warm_up(engine)
            self.batcher = MicroBatcher(engine, self._limits(), self.metrics, self._on_engine_error)
            await self.batcher.start()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
            log.error("model failed to load: %s", self.failure, exc_info=True)
            return
        self.load_seconds = time.perf_counter() - t0
        self.ready = True
        self.metrics.engine_ready.set(1)
        self.metrics.model_info.labels(self.artifact.name, self.artifact.version, engine.name, engine.dtype).set(1)
        self._monitor = asyncio.create_task(self._watch_engine(), name="engine-monitor")
        log.info(
            "ready: %s (%s) on the %s engine (%s) after %.1fs",
            self.artifact.name,
            self.artifact.version,
            engine.name,
            engine.dtype,
            self.load_seconds,
        )

    def _make_renderer(self, artifact: LoadedArtifact) -> PromptRenderer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(artifact.checkpoint_dir)
        return PromptRenderer(tok, artifact.manifest.max_length)

    def _limits(self) -> BatchLimits:
        s = self.settings
        return BatchLimits(
            max_batch_tokens=s.max_batch_tokens,
            max_batch_pairs=s.max_batch_pairs,
            max_wait_ms=s.max_wait_ms,
            max_queue_pairs=s.max_queue_pairs,
            retry_after_s=s.retry_after_s,
            admission_wait_fraction=s.admission_wait_fraction,
        )

    async def _warm_up(self, engine: Engine) -> None:
        """A real forward pass: readiness means the engine computed something sane."""
        assert self.renderer is not None
        pair = self.renderer.render("warm up query", "warm up item")
        probs = await engine.score([pair.token_ids])
        if probs.shape != (1, len(LABELS)) or not np.isfinite(probs).all():
            raise EngineError(f"warm-up forward pass returned {probs!r}")

    async def stop(self) -> None:
        self.ready = False
        self.metrics.engine_ready.set(0)
        for task in (self._loader, self._monitor, self._probe):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.batcher is not None:
            await self.batcher.stop()
        if self.engine is not None:
            await self.engine.stop()

    # -- health ------------------------------------------------------------
    async def check_alive(self) -> None:
        """Liveness: fails once the model failed to load or the engine died."""
        if self.failure is not None:
            raise EngineError(self.failure)
        if self.ready and self.engine is not None:
            try:
                await self.engine.health()
            except EngineError as e:
                self.mark_failed(e.message)
                raise

    async def check_ready(self) -> None:
        await self.check_alive()
        if not self.ready or self.batcher is None or not self.batcher.running:
            raise NotReady("model is loading" if self.failure is None else self.failure)

    def mark_failed(self, reason: str) -> None:
        """The engine is gone: fail queued work now, turn /readyz and /healthz 503."""
        if self.ready:
            log.error("engine failed: %s", reason)
        self.ready = False
        self.failure = reason
        self.metrics.engine_ready.set(0)
        if self.batcher is not None:
            self.batcher.fail_pending(EngineError(f"engine failed: {reason}"))

    async def _watch_engine(self) -> None:
        """Poll engine health so a dead engine flips readiness within seconds, even when idle."""
        assert self.engine is not None
        while self.failure is None:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self.engine.health()
            except EngineError as e:
                self.mark_failed(e.message)
            except Exception as e:
                self.mark_failed(f"{type(e).__name__}: {e}")

    def _on_engine_error(self, error: Exception) -> None:
        """After a failed batch, re-run the warm-up pair: a transient error keeps the pod
        serving, a broken engine (the probe fails too) is marked failed."""
        if self.failure is None and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probe_engine(error), name="engine-probe")

    async def _probe_engine(self, error: Exception) -> None:
        assert self.engine is not None
        try:
            await asyncio.wait_for(self._warm_up(self.engine), timeout=max(5.0, self.settings.request_timeout_s))
        except asyncio.CancelledError:
            raise
        except Exception as probe_error:
            self.mark_failed(f"{error} (probe after the failure: {type(probe_error).__name__}: {probe_error})")
        else:
            log.warning("engine error on one batch, probe passed; still serving: %s", error)

    # -- scoring -----------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": m.name if m else "", "version": m.version if m else ""}

    async def score(self, req: ScoreRequest) -> Scored:
        if not self.ready or self.renderer is None or self.batcher is None:
            raise NotReady(self.failure or "model is loading; retry when /readyz is 200")
        renderer = self.renderer
        try:
            rendered = await asyncio.to_thread(
                renderer.render_many, req.query, [(it.title, it.description) for it in req.items]
            )
        except PromptTooLongError as e:
            raise BadRequest(f"query too long: {e}") from None
        ids = [r.token_ids for r in rendered]
        probs = await self.batcher.score(ids, self.settings.request_timeout_s)
        return Scored(
            probs=probs,
            scores=expected_grade(probs),
            truncated=[r.truncated for r in rendered],
            tokens=sum(len(x) for x in ids),
        )
