"""Aggregation of repeated windows into the numbers the report shows (pure functions)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from benchmarks.loadgen import percentile


def median_or_none(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def cell_key(w: dict) -> tuple:
    """Cells are (mode, N, concurrency or load fraction)."""
    return (w["mode"], w["n"], w.get("concurrency") if w["mode"] == "closed" else w.get("fraction"))


def aggregate(windows: Sequence[dict]) -> dict:
    """Median over repetitions of one cell's windows (dicts from ``Window.summary`` + extras)."""
    ok = [w for w in windows if w["seconds"] > 0 and w["pairs"] > 0]
    pooled = [x for w in ok for x in w["latencies"]]
    out = {
        "reps": len(ok),
        "reps_attempted": len(windows),
        "pairs_per_s": median_or_none(w["pairs_per_s"] for w in ok),
        "pairs_per_s_runs": [round(w["pairs_per_s"], 1) for w in ok],
        "requests_per_s": median_or_none(w["requests_per_s"] for w in ok),
        "p50": median_or_none(w["p50"] for w in ok),
        "p90": median_or_none(w["p90"] for w in ok),
        "p99": median_or_none(w["p99"] for w in ok),
        "pooled_p50": percentile(pooled, 50),
        "pooled_p99": percentile(pooled, 99),
        "samples": len(pooled),
        "errors": sum(w["errors"] for w in windows),
        "server_cpu_s_per_1k": median_or_none(w.get("server_cpu_s_per_1k") for w in ok),
        "client_cpu_s_per_1k": median_or_none(w.get("client_cpu_s_per_1k") for w in ok),
        "offered_rate": median_or_none(w.get("rate") for w in ok),
        "foreign_cpu_share": max((w.get("foreign_cpu_share") or 0.0 for w in ok), default=None),
        # absent in runs made before the harness recorded it
        "steal_share": max((w["steal_share"] for w in ok if w.get("steal_share") is not None), default=None),
    }
    return out


def group_cells(windows: Sequence[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for w in windows:
        cells.setdefault(cell_key(w), []).append(w)
    return cells


def capacity(windows: Sequence[dict], n: int) -> float | None:
    """Best closed-loop pairs/s at ``n`` items among these windows (one repetition's)."""
    rates = [w["pairs_per_s"] for w in windows if w["mode"] == "closed" and w["n"] == n and w["pairs"] > 0]
    return max(rates) if rates else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
