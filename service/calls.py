"""Per-call plumbing that every scoring route shares (``/v1/score`` and the rerank protocols).

One copy, so that a rerank call gets exactly the content-type check, deadline and
disconnect handling of a score call: same runtime, same batcher, same limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from fastapi import Request

from service.errors import BadRequest, ClientDisconnected, ServiceError, UnsupportedMediaType
from service.runtime import Runtime, ScoredCall
from service.schemas import ScoreRequest

TIMEOUT_HEADER = "x-request-timeout"


async def require_json(request: Request) -> None:
    """Route dependency: 415 unless the body is declared as JSON."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype or 'none'!r}")


def requested_timeout(header: str | None, body_value: float | None = None) -> float | None:
    """The client's deadline in seconds: the ``X-Request-Timeout`` header, else the body's ``timeout_s``."""
    if header is None:
        return body_value
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"X-Request-Timeout must be a positive number of seconds, got {header[:40]!r}")
    return value


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def score_unless_disconnected(
    runtime: Runtime,
    body: ScoreRequest,
    timeout_s: float | None,
    request: Request,
    *,
    truncate: bool | None = None,
) -> ScoredCall:
    """Score, but give up (and free the queued pairs) as soon as the client goes away.

    ``truncate``: this call's truncation policy (see ``Runtime.score``); None keeps the service's.
    """
    task = asyncio.ensure_future(runtime.score(body, timeout_s, truncate=truncate))
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ServiceError):
            await task
        runtime.metrics.failures.labels("client_disconnected").inc()
        raise ClientDisconnected("client disconnected")
    return task.result()
