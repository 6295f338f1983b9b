"""Overload: open-loop Poisson load at ~3x capacity against a real `darl serve`.

Usage (repo root, after ``make install``)::

    .venv/bin/python benchmarks/overload.py [--model-dir DIR] [--items 20] [--factor 3] [--seconds 60]

Starts ``darl serve`` (torch engine) on loopback, measures capacity with a short
closed loop, then sends requests with exponential inter-arrival times at
``factor`` x capacity for ``--seconds`` (bounded: it stops by itself). While it
runs it samples the server's queue depth (``/metrics``) and resident memory.
Reports: status counts (only 200 and 429 expected, no 5xx), the 429 share,
whether every 429 carried ``Retry-After``, p50/p99 latency of accepted
requests against the deadline, the largest queue depth against its bound, and
memory at start/middle/end. Writes ``benchmarks/results/overload.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.server import running_server  # noqa: E402


def load_requests(path: Path, items: int, n: int) -> list[dict]:
    """Real queries, each with ``items`` real titles (its own first, then others')."""
    by_query: dict[str, list[str]] = {}
    titles: list[str] = []
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            by_query.setdefault(row["query"], []).append(row["item_title"])
            titles.append(row["item_title"])
    rng = random.Random(0)
    queries = list(by_query)
    out = []
    for k in range(n):
        q = queries[k % len(queries)]
        ts = (by_query[q] + rng.sample(titles, items))[:items]
        out.append({"query": q, "items": [{"id": str(i), "title": t} for i, t in enumerate(ts)]})
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


async def capacity(url: str, bodies: list[dict], seconds: float = 20.0, concurrency: int = 2) -> float:
    """Requests/s of a closed loop at ``concurrency`` (the service at full batching)."""
    done = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as c:

        async def worker(k: int) -> None:
            nonlocal done
            while time.monotonic() < stop:
                r = await c.post(url + "/v1/score", json=bodies[(done + k) % len(bodies)])
                done += r.status_code == 200

        t0 = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return done / (time.monotonic() - t0)


async def open_loop(url: str, bodies: list[dict], rate: float, seconds: float, server: psutil.Process) -> dict:
    results: list[tuple[int, float, bool]] = []
    depth_max = 0.0
    capacity_pairs = None
    rss: list[float] = []
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def one(body: dict) -> None:
            t = time.monotonic()
            try:
                r = await c.post(url + "/v1/score", json=body)
                results.append((r.status_code, time.monotonic() - t, "retry-after" in r.headers))
            except httpx.HTTPError:
                results.append((-1, time.monotonic() - t, False))

        async def sampler() -> None:
            nonlocal depth_max, capacity_pairs
            while True:
                text = (await c.get(url + "/metrics")).text
                depth = float(re.search(r"^darl_queue_depth_pairs (\S+)", text, re.M).group(1))
                capacity_pairs = float(re.search(r"^darl_queue_capacity_pairs (\S+)", text, re.M).group(1))
                depth_max = max(depth_max, depth)
                rss.append(sum(p.memory_info().rss for p in [server, *server.children(recursive=True)]) / 2**20)
                await asyncio.sleep(0.5)

        sampling = asyncio.create_task(sampler())
        tasks = []
        stop = time.monotonic() + seconds
        k = 0
        while time.monotonic() < stop:
            tasks.append(asyncio.create_task(one(bodies[k % len(bodies)])))
            k += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
        sampling.cancel()
    codes: dict[str, int] = {}
    for code, _, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    ok = [lat for code, lat, _ in results if code == 200]
    rejected = [ra for code, _, ra in results if code == 429]
    third = max(1, len(rss) // 3)
    return {
        "sent": len(results),
        "status_counts": codes,
        "share_429": round(len(rejected) / len(results), 3),
        "all_429_have_retry_after": all(rejected),
        "accepted_p50_s": round(pct(ok, 50), 3),
        "accepted_p99_s": round(pct(ok, 99), 3),
        "accepted_max_s": round(max(ok), 3) if ok else None,
        "queue_depth_max_pairs": depth_max,
        "queue_capacity_pairs": capacity_pairs,
        "rss_mib_first_third_median": round(statistics.median(rss[:third]), 1),
        "rss_mib_last_third_median": round(statistics.median(rss[-third:]), 1),
        "rss_mib_max": round(max(rss), 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "model_artifacts" / "darl-smollm2")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "homedepot.csv.gz")
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--factor", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--timeout-s", type=float, default=5.0, help="the server's DARL_REQUEST_TIMEOUT_S")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overload.json")
    args = ap.parse_args()

    bodies = load_requests(args.data, args.items, 500)
    env = {
        "DARL_MODEL_DIR": str(args.model_dir),
        "DARL_ENGINE": "torch",
        "DARL_REQUEST_TIMEOUT_S": str(args.timeout_s),
        "DARL_LOG_LEVEL": "warning",
    }
    with running_server(env, ready_timeout=600) as (url, proc):
        server = psutil.Process(proc.pid)
        cap = await capacity(url, bodies)
        print(f"capacity: {cap:.1f} req/s of {args.items} items", file=sys.stderr)
        report = await open_loop(url, bodies, args.factor * cap, args.seconds, server)
    report.update(
        {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores",
            "items_per_request": args.items,
            "capacity_req_per_s": round(cap, 2),
            "offered_req_per_s": round(args.factor * cap, 2),
            "seconds": args.seconds,
            "deadline_s": args.timeout_s,
            "no_5xx": not any(k.startswith("5") or k == "-1" for k in report["status_counts"]),
            "p99_within_deadline": report["accepted_p99_s"] <= args.timeout_s,
            "queue_within_bound": report["queue_depth_max_pairs"] <= report["queue_capacity_pairs"],
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
