"""Offline batch scoring (``darl score``): a file of (query, item) pairs in, the same rows with scores out.

The model path is the service's, so a file scored here and the same pairs sent to ``/v1/score`` get the
same numbers: the artifact loaded by ``service.artifacts``, the prompt and character limits of
``relevance_core.prompt``, the engine ``service.engine_factory`` picks, ``relevance_core.postprocess``.
What the service adds for HTTP traffic (micro-batcher, deadlines, admission) is left out: the engine gets
length-sorted batches straight from the file, several in flight. Formats and bad rows:
``service.batch_input``; parts, resume and merge: ``service.batch_output``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relevance_core.labels import LABELS
from relevance_core.prompt import PromptTooLongError, Rendered
from service.batch_input import (
    SPLIT_COLUMN,
    BadRow,
    BatchError,
    Chunk,
    InputFile,
    Pair,
    StrictError,
    check_record,
    file_format,
    in_split,
    pyarrow,
    read_chunks,
)
from service.batch_output import PartEncoder, Parts, errors_path, prediction_columns
from service.settings import Settings

if TYPE_CHECKING:
    from relevance_core.prompt import PromptRenderer
    from service.artifacts import LoadedArtifact
    from service.engine import Engine, TokenIds

log = logging.getLogger(__name__)

# Records per part file: what an interrupted run can lose, and the unit of the length sort.
DEFAULT_CHUNK_ROWS = 2000
# Engine calls in flight: the torch engine queues them on its worker thread (no idle gap between
# calls), vLLM schedules them together.
IN_FLIGHT_BATCHES = 4
SHOWN_BAD_ROWS = 20  # log lines for bad rows; all of them go to the errors file
PROGRESS_LOG_S = 30.0  # without a terminal (no progress bar), a progress log line this often
# Testing hook: sleep this long after each part is written, so a test can kill a run between parts.
CHUNK_DELAY_ENV = "DARL_SCORE_CHUNK_DELAY_S"

EngineFactory = Callable[[Settings, "LoadedArtifact"], "Engine"]


@dataclass(frozen=True)
class ScoreJob:
    """What to score, where to, and how to treat bad rows and an existing output."""

    input: Path
    output: Path
    split: str | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    prefix: str = ""
    strict: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class ScoreSummary:
    """``pairs_scored``, ``seconds``: this run's (scoring only), so a resumed run reports its own speed;
    ``rows_written``, ``bad_rows``: the whole output's."""

    rows_written: int
    bad_rows: int
    pairs_scored: int
    records_resumed: int
    rows_filtered: int
    seconds: float
    engine: str

    @property
    def pairs_per_s(self) -> float:
        return self.pairs_scored / self.seconds if self.seconds > 0 else 0.0


def render_chunk(chunk: Chunk, renderer: PromptRenderer, cut_query: bool) -> tuple[list[TokenIds], list[bool]]:
    """Token ids of the chunk's pairs and whether each was cut, one tokenizer call per distinct query (as the
    service renders a call). A query too long for the model with truncation off makes its rows bad, as it
    makes a call 400."""
    by_query: dict[str, list[Pair]] = {}
    for p in chunk.pairs:
        by_query.setdefault(p.query, []).append(p)
    rendered: dict[int, Rendered] = {}  # by line
    for query, pairs in by_query.items():
        try:
            out = renderer.render_many(query, [(p.title, p.description) for p in pairs], cut_query)
        except PromptTooLongError as e:
            chunk.bad.extend(BadRow(p.line, "query", f"query too long: {e}") for p in pairs)
        else:
            rendered.update((p.line, r) for p, r in zip(pairs, out, strict=True))
    if len(rendered) < len(chunk.pairs):
        chunk.pairs = [p for p in chunk.pairs if p.line in rendered]
        chunk.bad.sort(key=lambda b: b.line)
    # The service flags item cuts per item and the query cut per call; a row has one query: either.
    cut = [p.cut or rendered[p.line].truncated or rendered[p.line].query_truncated for p in chunk.pairs]
    return [rendered[p.line].token_ids for p in chunk.pairs], cut


def length_batches(ids: Sequence[Sequence[int]], max_pairs: int, max_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut where a batch would pass ``max_pairs`` pairs or ``max_tokens`` tokens
    (the micro-batcher's limits): similar lengths in a batch waste little on padding."""
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in sorted(range(len(ids)), key=lambda i: len(ids[i])):
        if current and (len(current) >= max_pairs or tokens + len(ids[i]) > max_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += len(ids[i])
    if current:
        batches.append(current)
    return batches


async def score_ids(
    engine: Engine, ids: Sequence[TokenIds], settings: Settings, on_batch: Callable[[int], Any]
) -> np.ndarray:
    """Probabilities of ``ids`` in input order, ``IN_FLIGHT_BATCHES`` engine calls at a time."""
    probs = np.empty((len(ids), len(LABELS)), dtype=np.float32)
    gate = asyncio.Semaphore(IN_FLIGHT_BATCHES)

    async def run(batch: list[int]) -> None:
        async with gate:
            probs[batch] = await engine.score([ids[i] for i in batch])
        on_batch(len(batch))

    batches = length_batches(ids, settings.max_batch_pairs, settings.max_batch_tokens)
    await asyncio.gather(*(run(b) for b in batches))
    return probs


class _LogLines:
    """A file for tqdm that logs each refresh: progress in a job's log, where no terminal shows a bar."""

    def write(self, text: str) -> None:
        if text := text.strip():
            log.info("%s", text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def progress(total: int) -> Iterator[Any]:
    """A tqdm bar (pairs, pairs/s, ETA) on a terminal, else a log line every ``PROGRESS_LOG_S``. Bad rows
    count as done: they are work the run got through."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(total=total, unit="pair", dynamic_ncols=True, smoothing=0.05, file=sys.stderr)
        with bar, logging_redirect_tqdm():
            yield bar
        return
    fmt = "{n_fmt}/{total_fmt} pairs, {rate_fmt}, ETA {remaining}{postfix}"
    every = {"mininterval": PROGRESS_LOG_S, "delay": PROGRESS_LOG_S, "miniters": 1}
    with tqdm(total=total, unit="pair", smoothing=0.05, file=_LogLines(), bar_format=fmt, leave=False, **every) as bar:
        yield bar


def _clash_message(where: str, clash: list[str]) -> str:
    return (
        f"{where}: the input already has column(s) {clash}, which the output adds; pass --prefix "
        "(e.g. --prefix new_) to name the added columns apart"
    )


def _strict_message(inp: InputFile, bad: BadRow) -> str:
    return f"{inp.describe(bad)} (--strict: file rejected, nothing written)"


def _scan(inp: InputFile, job: ScoreJob, settings: Settings, reserved: list[str], start: int) -> int:
    """The pass before scoring: how many rows there are to do (the progress total) and, with ``strict``,
    the first bad row, found before the model is loaded."""
    todo = 0
    for rec in inp.records():
        if rec.index < start:
            continue
        if inp.columns is None and rec.row is not None:  # JSONL: each row brings its own keys
            clash = [c for c in reserved if c in rec.row]
            if clash:
                raise BatchError(_clash_message(f"{inp.path}:{rec.line}", clash))
        if not in_split(rec.row, job.split):
            continue
        todo += 1
        if job.strict and isinstance(bad := check_record(rec, settings), BadRow):
            raise StrictError(_strict_message(inp, bad))
    return todo


def _check_job(job: ScoreJob, inp: InputFile, reserved: list[str]) -> None:
    """Mistakes in the job, found before the model is loaded."""
    if job.output.resolve() == inp.path.resolve():
        raise BatchError(f"{job.output}: the output would overwrite the input")
    if inp.columns is not None:
        clash = [c for c in reserved if c in inp.columns]
        if clash:
            raise BatchError(_clash_message(str(inp.path), clash))
        if job.split is not None and SPLIT_COLUMN not in inp.columns:
            raise BatchError(f"--split {job.split}: {inp.path} has no {SPLIT_COLUMN!r} column")


async def score_file(job: ScoreJob, settings: Settings, engine_factory: EngineFactory | None = None) -> ScoreSummary:
    """Score ``job.input`` into ``job.output``, resuming an interrupted run of the same job."""
    from service.artifacts import load_artifact
    from service.engine_factory import engine_for_artifact

    if job.chunk_rows < 1:
        raise BatchError(f"chunk_rows must be at least 1, got {job.chunk_rows}")
    inp = InputFile(job.input)
    out_format, out_gz = file_format(job.output)
    if out_format == "parquet":
        pyarrow()
    reserved = prediction_columns(job.prefix)
    _check_job(job, inp, reserved)
    artifact = await asyncio.to_thread(load_artifact, settings.model_dir, settings.cache_dir)
    engine = (engine_factory or engine_for_artifact)(settings, artifact)
    identity = {
        "input": await asyncio.to_thread(inp.identity),
        "output_format": out_format,
        "model": {"name": artifact.name, "version": artifact.version},
        "engine": engine.name,
        "dtype": engine.dtype,
        "split": job.split,
        "prefix": job.prefix,
        "auto_truncate": settings.auto_truncate,
        "max_query_chars": settings.max_query_chars,
        "max_field_chars": settings.max_field_chars,
    }
    job.output.parent.mkdir(parents=True, exist_ok=True)
    parts = Parts(job.output, out_format)
    try:
        done = parts.open(identity, job.overwrite)
        resume_at = done[-1].end if done else 0
        if resume_at:
            log.info("resuming: %d input records already scored in %d part(s) of %s", resume_at, len(done), parts.dir)
        todo = await asyncio.to_thread(_scan, inp, job, settings, reserved, resume_at)
        t_load = time.perf_counter()
        renderer = await asyncio.to_thread(artifact.renderer)
        await engine.start()
        log.info(
            "%s (%s) on the %s engine (%s), loaded in %.1f s; %d rows to score from %s",
            artifact.name,
            artifact.version,
            engine.name,
            engine.dtype,
            time.perf_counter() - t_load,
            todo,
            inp.path,
        )
        encoder = PartEncoder(out_format, reserved, inp)
        try:
            scored, filtered, seconds = await _score_chunks(
                job, settings, inp, resume_at, todo, engine, renderer, encoder, parts
            )
        finally:
            await engine.stop()
        rows, bad = await asyncio.to_thread(parts.merge, out_gz, encoder)
        parts.remove()
    except StrictError:
        if parts.fresh:
            parts.remove()
        raise
    finally:
        parts.release()
    summary = ScoreSummary(rows, bad, scored, resume_at, filtered, seconds, engine.name)
    log.info(
        "scored %d pairs in %.1f s: %.1f pairs/s (%s engine, %s)",
        scored,
        seconds,
        summary.pairs_per_s,
        engine.name,
        engine.dtype,
    )
    resumed = f"; {resume_at} input records were scored by an earlier run" if resume_at else ""
    log.info("wrote %d rows to %s%s", rows, job.output, resumed)
    if filtered:
        log.info("%d rows outside split %r left out", filtered, job.split)
    if bad:
        log.warning("%d bad row(s) skipped, listed with their line numbers in %s", bad, errors_path(job.output))
    return summary


async def _score_chunks(
    job: ScoreJob,
    settings: Settings,
    inp: InputFile,
    resume_at: int,
    todo: int,
    engine: Engine,
    renderer: PromptRenderer,
    encoder: PartEncoder,
    parts: Parts,
) -> tuple[int, int, float]:
    """Score and commit the chunks from the first unfinished one on: (pairs scored, rows filtered, seconds).
    The next chunk is read and rendered in a thread while the engine scores this one."""
    chunks = read_chunks(inp.records(), resume_at, job.chunk_rows, job.split, settings, renderer.reads_description)
    delay = float(os.environ.get(CHUNK_DELAY_ENV) or 0)

    def prepare() -> tuple[Chunk, list[TokenIds], list[bool]] | None:
        chunk = next(chunks, None)
        return None if chunk is None else (chunk, *render_chunk(chunk, renderer, settings.auto_truncate))

    bad = scored = filtered = 0
    t0 = time.perf_counter()
    pending = asyncio.ensure_future(asyncio.to_thread(prepare))
    try:
        with progress(todo) as bar:
            while (prepared := await pending) is not None:
                pending = asyncio.ensure_future(asyncio.to_thread(prepare))
                chunk, ids, truncated = prepared
                for b in chunk.bad:
                    if job.strict:
                        raise StrictError(_strict_message(inp, b))
                    if bad < SHOWN_BAD_ROWS:
                        log.warning("skipped bad row: %s", inp.describe(b))
                    bad += 1
                if chunk.bad:
                    bar.set_postfix(bad=bad, refresh=False)
                bar.update(len(chunk.bad))
                probs = await score_ids(engine, ids, settings, bar.update)
                rows = [p.row for p in chunk.pairs]
                data = await asyncio.to_thread(encoder.encode, rows, probs, truncated)
                await asyncio.to_thread(parts.commit, chunk, data)
                scored += len(rows)
                filtered += chunk.filtered
                if delay:
                    await asyncio.sleep(delay)
    finally:
        if not pending.done():
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
    if bad > SHOWN_BAD_ROWS:
        log.warning("… %d more bad rows not shown", bad - SHOWN_BAD_ROWS)
    return scored, filtered, time.perf_counter() - t0


def run(job: ScoreJob, settings: Settings, engine_factory: EngineFactory | None = None) -> ScoreSummary:
    """``score_file`` from synchronous code (the CLI, tests)."""
    return asyncio.run(score_file(job, settings, engine_factory))
