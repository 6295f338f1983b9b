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
from relevance_core.prompt import PromptRenderer, PromptTooLongError, TextTooLongError, cut_to_limit
from service.admission import Admission
from service.artifacts import LoadedArtifact, load_artifact
from service.batcher import BatchLimits, MicroBatcher
from service.engine import Engine
from service.engine_factory import engine_for_artifact
from service.errors import EngineError, InputTooLong, NotReady
from service.metrics import Metrics
from service.schemas import ItemScore, Probs, ScoreRequest
from service.settings import Settings
from service.tracing import current_call_trace

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings, LoadedArtifact], Engine]
# Warm-up: one pair (readiness), then a batch this many pairs at the max length, timed to seed the
# admission cost model with a batch of the size real traffic brings.
SEED_BATCH_PAIRS = 32


default_engine_factory: EngineFactory = engine_for_artifact


@dataclass(frozen=True)
class ScoredCall:
    """One call's results in input order, with what the response reports about them."""

    items: list[ItemScore]
    query_truncated: bool
    tokens: int
    deadline_s: float


class Runtime:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine_factory: EngineFactory = default_engine_factory,
        manifest: Manifest | None = None,
    ) -> None:
        """``manifest``: the artifact's, if the caller verified it already (``darl serve`` does, to fail
        before the server starts); otherwise ``start`` verifies. Either way the hashes are checked once."""
        self.settings = settings
        self.metrics = metrics
        self.engine_factory = engine_factory
        self.admission = Admission(settings, metrics)
        self.manifest: Manifest | None = manifest
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
        if self.manifest is None:
            self.manifest = verify_artifact(self.settings.model_dir)
        self._loader = asyncio.create_task(self._load(), name="model-loader")

    async def wait_ready(self) -> None:
        """For tests and scripts: wait until loading finished (or failed)."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    async def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            s = self.settings
            self.artifact = await asyncio.to_thread(load_artifact, s.model_dir, s.cache_dir, self.manifest)
            self.renderer = await asyncio.to_thread(self.artifact.renderer)
            engine = self.engine_factory(s, self.artifact)
            self.engine = engine
            await engine.start()
            await self._warm_up(engine)
            await self._seed_cost_model(engine)
            limits = BatchLimits.from_settings(s)
            self.batcher = MicroBatcher(engine, limits, self.admission, self.metrics, self._on_engine_error)
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

    async def _warm_up(self, engine: Engine) -> None:
        """A real forward pass: readiness means the engine computed something sane."""
        assert self.renderer is not None
        pair = self.renderer.render("warm up query", "warm up item")
        t0 = time.perf_counter()
        probs = await engine.score([pair.token_ids])
        if probs.shape != (1, len(LABELS)) or not np.isfinite(probs).all():
            raise EngineError(f"warm-up forward pass returned {probs!r}")
        self.admission.cost.observe(len(pair), time.perf_counter() - t0)

    async def _seed_cost_model(self, engine: Engine) -> None:
        """Time one batch of full-length pairs, so admission knows the engine before the first call."""
        assert self.renderer is not None
        n = min(SEED_BATCH_PAIRS, self.settings.max_batch_pairs)
        words = " ".join(f"item{i}" for i in range(self.renderer.max_length))
        pairs = [r.token_ids for r in self.renderer.render_many("warm up query", [(words, words)] * n)]
        pairs = pairs[: max(1, self.settings.max_batch_tokens // len(pairs[0]))]
        t0 = time.perf_counter()
        await engine.score(pairs)
        self.admission.cost.observe(sum(map(len, pairs)), time.perf_counter() - t0)

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

    async def score(
        self, req: ScoreRequest, timeout_s: float | None = None, *, truncate: bool | None = None
    ) -> ScoredCall:
        """Render, admit, batch and post-process one call. ``timeout_s``: the client's deadline, if any.

        ``truncate``: None follows ``auto_truncate``; True cuts long text and flags it; False refuses
        (400) any text that would be cut, item text over the model's max length included (a rerank
        client's explicit ``truncate: false``, where silent cutting would break its contract).
        """
        if not self.ready or self.renderer is None or self.batcher is None:
            raise NotReady(self.failure or "model is loading; retry when /readyz is 200")
        s, renderer = self.settings, self.renderer
        cut_query = s.auto_truncate if truncate is None else truncate
        query, query_cut = self._cut("query", req.query, s.max_query_chars, truncate)
        items, items_cut = [], []
        for it in req.items:
            title, t_cut = self._cut(f"item {it.id!r}: title", it.title, s.max_field_chars, truncate)
            # A model whose template does not read descriptions (darl-prompt-v2) never sees one: nothing
            # to cut, flag or refuse.
            description = it.description if renderer.reads_description else None
            desc, d_cut = self._cut(f"item {it.id!r}: description", description, s.max_field_chars, truncate)
            items.append((title, desc))
            items_cut.append(t_cut or d_cut)
        try:
            rendered = await asyncio.to_thread(renderer.render_many, query, items, cut_query)
        except PromptTooLongError as e:
            raise InputTooLong(f"query too long: {e}") from None
        if truncate is False:
            over = [it.id for it, r in zip(req.items, rendered, strict=True) if r.truncated]
            if over:
                raise InputTooLong(
                    f"{len(over)} item(s) longer than the model's max length of {renderer.max_length} tokens "
                    f"with the query (first: item {over[0]!r}); send shorter text or allow truncation"
                )
        ids = [r.token_ids for r in rendered]
        tokens = sum(len(x) for x in ids)
        call = current_call_trace()  # None unless tracing is on and this request is sampled
        if call is not None:
            call.validated(len(ids), tokens)
        deadline = self.admission.deadline_s(len(ids), timeout_s)
        probs = await self.batcher.score(ids, deadline)
        if call is not None:
            call.scored()
        scores = expected_grade(probs)
        results = [
            ItemScore(
                id=it.id,
                probs=Probs(**dict(zip(LABELS, map(float, p), strict=True))),
                label=LABELS[int(p.argmax())],
                score=float(score),
                truncated=r.truncated or cut,
            )
            for it, p, score, r, cut in zip(req.items, probs, scores, rendered, items_cut, strict=True)
        ]
        query_cut = query_cut or any(r.query_truncated for r in rendered)
        return ScoredCall(results, query_cut, tokens, deadline)

    def _cut(self, what: str, text: str | None, limit: int, truncate: bool | None = None) -> tuple[str | None, bool]:
        """``text`` within ``limit`` characters: cut or refused with 400 (``truncate``, else ``auto_truncate``)."""
        refuse = None
        if truncate is False:
            refuse = "the request turned truncation off"
        elif truncate is None and not self.settings.auto_truncate:
            refuse = "DARL_AUTO_TRUNCATE is off"
        try:
            return cut_to_limit(what, text, limit, refuse)
        except TextTooLongError as e:
            raise InputTooLong(str(e)) from None
