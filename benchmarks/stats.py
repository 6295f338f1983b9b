"""The numbers the report shows, from a run's windows (pure functions).

Every figure is the median over the repetitions of a cell; comparisons between
servers are made per cell, and combined by geometric mean where one number is wanted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from benchmarks import roofline
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
        "pairs_per_s": median_or_none(w["pairs_per_s"] for w in ok),
        "pairs_per_s_runs": [round(w["pairs_per_s"], 1) for w in ok],
        "requests_per_s": median_or_none(w["requests_per_s"] for w in ok),
        "p50": median_or_none(w["p50"] for w in ok),
        "p90": median_or_none(w["p90"] for w in ok),
        "p99": median_or_none(w["p99"] for w in ok),
        "pooled_p99": percentile(pooled, 99),
        "samples": len(pooled),
        "errors": sum(w["errors"] for w in windows),
        "server_cpu_s_per_1k": median_or_none(w.get("server_cpu_s_per_1k") for w in ok),
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


def server_cells(server: dict) -> dict[tuple, dict]:
    return {k: aggregate(ws) for k, ws in group_cells(server.get("windows", [])).items()}


def roofline_of(run: dict, n: int, pairs_per_s: float | None) -> float | None:
    if pairs_per_s is None:
        return None
    tokens = run["workload"]["per_n"][str(n)]["mean_tokens"]
    return roofline.roofline_fraction(
        pairs_per_s, tokens, run["model"]["non_embedding_params"], run["roofline"]["tflops_best"]
    )


def measured(run: dict) -> list[dict]:
    return [s for s in run["servers"] if s.get("windows")]


def best_ours(run: dict, key: tuple) -> tuple[str | None, float | None]:
    best = (None, None)
    for s in measured(run):
        if not s["ours"]:
            continue
        cell = server_cells(s).get(key)
        if cell and cell["pairs_per_s"] and (best[1] is None or cell["pairs_per_s"] > best[1]):
            best = (s["name"], cell["pairs_per_s"])
    return best


def comparisons(run: dict) -> list[dict]:
    """Per closed-loop cell: this service's best config against every peer."""
    keys = sorted({k for s in measured(run) for k in server_cells(s) if k[0] == "closed"}, key=lambda k: (k[1], k[2]))
    rows = []
    for key in keys:
        ours_name, ours = best_ours(run, key)
        peers = {}
        for s in measured(run):
            if s["ours"]:
                continue
            cell = server_cells(s).get(key)
            if cell and cell["pairs_per_s"]:
                peers[s["name"]] = cell["pairs_per_s"]
        best_peer = max(peers.items(), key=lambda kv: kv[1]) if peers else (None, None)
        rows.append(
            {
                "n": key[1],
                "c": key[2],
                "ours_name": ours_name,
                "ours": ours,
                "peers": peers,
                "best_peer": best_peer[0],
                "ratio_best_peer": ratio(ours, best_peer[1]),
            }
        )
    return rows


def latency_target(run: dict) -> list[dict]:
    """Per server: p99 of the open-loop N-item call at 50 % load against its unloaded (c=1) latency."""
    n = run["profile"]["open_n"]
    rows = []
    for s in measured(run):
        cells = server_cells(s)
        unloaded = cells.get(("closed", n, 1))
        half = cells.get(("open", n, 0.5))
        if not unloaded or not half:
            continue
        base = unloaded["p50"]
        rows.append(
            {
                "server": s["name"],
                "ours": s["ours"],
                "unloaded_p50": base,
                "unloaded_p99": unloaded["p99"],
                "half_p99": half["p99"],
                "half_pooled_p99": half["pooled_p99"],
                "samples": half["samples"],
                "factor": ratio(half["p99"], base),
                "factor_pooled": ratio(half["pooled_p99"], base),
            }
        )
    return rows


def tuning_summary(tun: dict) -> list[dict]:
    """Per variant of a tuning study against its first server (the reference, e.g. the defaults of the day).

    Closed-loop pairs/s ratios are combined by their geometric mean over the cells
    both measured, so one cell cannot carry the verdict; the open-loop column is the
    latency target's factor (p99 at 50 % load over unloaded p50).
    """
    servers = measured(tun)
    if not servers:
        return []
    base = servers[0]
    base_cells = server_cells(base)
    factors = {r["server"]: r["factor"] for r in latency_target(tun)}
    rows = []
    for s in servers:
        cells = server_cells(s)
        ratios = {
            k: ratio(cells[k]["pairs_per_s"], base_cells[k]["pairs_per_s"])
            for k in cells
            if k[0] == "closed" and k in base_cells
        }
        ratios = {k: r for k, r in ratios.items() if r}
        geo = math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios)) if ratios else None
        changed = {k: v for k, v in s.get("settings", {}).items() if base.get("settings", {}).get(k) != v}
        rows.append(
            {
                "server": s["name"],
                "changed": changed,
                "cells": len(ratios),
                "geomean": geo,
                "worst": min(ratios.items(), key=lambda kv: kv[1]) if ratios else None,
                "best": max(ratios.items(), key=lambda kv: kv[1]) if ratios else None,
                "p99_factor": factors.get(s["name"]),
            }
        )
    return rows


def agreement(run: dict) -> list[dict]:
    """Largest |Δ probability| of each server against the first of this service's, on the same first call."""
    ref = next((s for s in measured(run) if s["ours"] and s.get("first_call_probs")), None)
    if ref is None:
        return []
    rows = []
    for s in measured(run):
        if s is ref or not s.get("first_call_probs"):
            continue
        worst = None
        for n, probs in s["first_call_probs"].items():
            base = ref["first_call_probs"].get(n)
            if not probs or not base:
                continue
            d = max(abs(a - b) for pa, pb in zip(probs, base, strict=True) for a, b in zip(pa, pb, strict=True))
            worst = d if worst is None else max(worst, d)
        rows.append({"server": s["name"], "reference": ref["name"], "max_abs_diff": worst})
    return rows
