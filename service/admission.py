"""Admission: whether a scoring call is tried now, and by when it must be done.

One decision per call, made from the work queued *ahead* of it and a cost model
of the engine, never from the call alone:

* a call that could not finish within its deadline even on an idle server is
  refused at once with 422 ``deadline_too_short`` (it says how many items would fit);
* a call with nothing ahead of it is always tried;
* otherwise 429 ``queue_full`` when the work ahead plus the call's own would take
  longer than ``admission_wait_fraction`` of its deadline, when the queue holds
  ``max_queue_pairs`` or ``max_concurrent_requests`` calls are in flight.
  ``Retry-After`` is the time the work ahead needs to drain.

The deadline follows the call: the client's ``X-Request-Timeout`` (or body
``timeout_s``) up to ``max_request_timeout_s``, else ``request_timeout_s`` plus
``request_timeout_per_pair_s`` per pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.errors import DeadlineTooShort, QueueFull
from service.metrics import Metrics
from service.settings import Settings


class CostModel:
    """Engine seconds for a batch: ``overhead + per_token · tokens``, fitted by least squares
    over recent batches of every size, each batch's weight decaying by ``decay`` per new batch
    (so the fit follows the engine when it speeds up or slows down).

    Seeded by the warm-up batches at start. With batches of one size only, the fit falls back
    to the mean cost per token (overhead included, so it errs on the slow side).
    """

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.batches = 0

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return
        d = self.decay
        self._w, self._x, self._y = d * self._w + 1, d * self._x + tokens, d * self._y + seconds
        self._xx, self._xy = d * self._xx + tokens * tokens, d * self._xy + tokens * seconds
        self.batches += 1

    @property
    def known(self) -> bool:
        return self.batches > 0

    def coefficients(self) -> tuple[float, float]:
        """``(overhead_s, per_token_s)``; both ≥ 0."""
        if not self.known:
            return 0.0, 0.0
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        if var > (0.05 * mx) ** 2:  # batch sizes spread enough to separate overhead from per-token cost
            slope = (self._xy / self._w - mx * my) / var
            if slope > 0:
                return max(0.0, my - slope * mx), slope
        return 0.0, my / mx

    def seconds(self, tokens: int, batch_tokens: int) -> float:
        """Estimated engine time for ``tokens`` run in batches of at most ``batch_tokens``."""
        if tokens <= 0:
            return 0.0
        overhead, per_token = self.coefficients()
        return math.ceil(tokens / batch_tokens) * overhead + tokens * per_token


@dataclass(frozen=True)
class Backlog:
    """The work ahead of a new call, as the batcher sees it."""

    tokens: int  # queued plus in the running batch
    pairs: int  # queued only
    requests: int  # calls admitted and not finished


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics, cost: CostModel | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cost = cost or CostModel()

    def deadline_s(self, pairs: int, requested_s: float | None = None) -> float:
        """The call's deadline: the client's, bounded by the server maximum, else base + per pair."""
        s = self.settings
        if requested_s is None:
            requested_s = s.request_timeout_s + s.request_timeout_per_pair_s * pairs
        return min(requested_s, s.max_request_timeout_s)

    def decide(self, pairs: int, tokens: int, deadline_s: float, backlog: Backlog) -> None:
        """Return if the call is tried now; raise ``DeadlineTooShort`` or ``QueueFull`` if not."""
        s = self.settings
        batch_tokens = s.max_batch_tokens
        own = self.cost.seconds(tokens, batch_tokens)
        if own > deadline_s:
            fit = self._pairs_within(deadline_s, tokens / pairs)
            self.metrics.failures.labels("deadline_too_short").inc()
            raise DeadlineTooShort(
                f"{pairs} items need ~{own:.1f}s of engine time, over this call's {deadline_s:g}s deadline "
                f"even on an idle server; about {fit} items fit, or allow a longer deadline "
                f"(X-Request-Timeout, at most {s.max_request_timeout_s:g}s)"
            )
        ahead = self.cost.seconds(backlog.tokens, batch_tokens)
        reason = None
        if backlog.requests >= s.max_concurrent_requests:
            reason = f"{backlog.requests} calls in flight (limit {s.max_concurrent_requests})"
        elif backlog.pairs + pairs > s.max_queue_pairs:
            reason = f"{backlog.pairs} pairs queued (limit {s.max_queue_pairs})"
        elif backlog.tokens and s.admission_wait_fraction and ahead + own > s.admission_wait_fraction * deadline_s:
            reason = f"~{ahead:.1f}s of queued work ahead; this call would not finish well within {deadline_s:g}s"
        if reason is not None:
            retry = max(1, math.ceil(ahead))
            self.metrics.failures.labels("queue_full").inc()
            raise QueueFull(f"{reason}; retry in {retry}s", headers={"Retry-After": str(retry)})

    def _pairs_within(self, deadline_s: float, tokens_per_pair: float) -> int:
        """How many pairs of this call's mean length fit in ``deadline_s`` on an idle server."""
        lo, hi = 0, self.settings.max_items
        while lo < hi:  # largest n with seconds(n) <= deadline (seconds grows with n)
            mid = (lo + hi + 1) // 2
            if self.cost.seconds(math.ceil(mid * tokens_per_pair), self.settings.max_batch_tokens) <= deadline_s:
                lo = mid
            else:
                hi = mid - 1
        return lo
