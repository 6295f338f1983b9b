"""Overload and admission: open-loop Poisson load against a real `darl serve` with its default settings.

Usage (repo root, after ``make install``)::

    .venv/bin/python -m benchmarks.overload [--model-dir DIR] [--items 20 | --sizes 10,50,512]
        [--factor 3] [--seconds 60] [--retries 0] [--idle-sweep]

Starts ``darl serve`` on loopback, measures capacity (pairs/s) with a short
closed loop, then sends calls with exponential inter-arrival times at ``factor``
x capacity for ``--seconds`` (bounded: it stops by itself). Call sizes cycle
through ``--sizes``; with ``--retries`` a refused call sleeps its ``Retry-After``
and tries again, and a call still refused after that many retries is a lockout.
``--idle-sweep`` first sends one call of each size from 1 to 512 items, alone,
to the idle server.
While it runs it samples the queue depth (``/metrics``) and resident memory.
Reports: status counts (only 200 and 429 expected: no 5xx, no 504), the 429
share, lockouts, whether every 429 carried ``Retry-After``, p50/p99 latency of
accepted calls against their deadlines, the largest queue depth against its
bound, memory at start/middle/end, and the CPU's vector extensions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.workload import DEFAULT_ARTIFACT, DEFAULT_DATA, REPO, read_rows
from darl.process import running_server
from relevance_core.host import machine

SWEEP_SIZES = [1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 512]  # 512 = DARL_MAX_ITEMS's default


def load_requests(path: Path, sizes: list[int], n: int) -> list[dict]:
    """Real queries, call ``k`` with ``sizes[k % len(sizes)]`` real titles (its own first, then others')."""
    by_query: dict[str, list[str]] = {}
    titles: list[str] = []
    for row in read_rows(path):
        by_query.setdefault(row["query"], []).append(row["item_title"])
        titles.append(row["item_title"])
    rng = random.Random(0)
    queries = list(by_query)
    out = []
    for k in range(n):
        q, items = queries[k % len(queries)], sizes[k % len(sizes)]
        ts = (by_query[q] + rng.sample(titles, items))[:items]
        out.append({"query": q, "items": [{"id": str(i), "title": t} for i, t in enumerate(ts)]})
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


async def capacity(url: str, bodies: list[dict], seconds: float = 20.0, concurrency: int = 2) -> float:
    """Pairs/s of a closed loop at ``concurrency`` (the service at full batching)."""
    done = calls = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=120) as c:

        async def worker(k: int) -> None:
            nonlocal done, calls
            while time.monotonic() < stop:
                body = bodies[(calls + k) % len(bodies)]
                calls += 1
                r = await c.post(url + "/v1/score", json=body)
                done += len(body["items"]) if r.status_code == 200 else 0

        t0 = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return done / (time.monotonic() - t0)


async def idle_sweep(url: str, bodies: list[dict]) -> list[dict]:
    """Each call alone on the idle server: its status, latency and deadline."""
    out = []
    async with httpx.AsyncClient(timeout=300) as c:
        for body in bodies:
            t = time.monotonic()
            r = await c.post(url + "/v1/score", json=body)
            deadline = r.json()["usage"]["deadline_s"] if r.status_code == 200 else None
            out.append({"items": len(body["items"]), "status": r.status_code, "s": round(time.monotonic() - t, 2)})
            out[-1]["deadline_s"] = deadline
    return out


async def open_loop(
    url: str, bodies: list[dict], rate: float, seconds: float, server: psutil.Process, retries: int = 0
) -> dict:
    results: list[tuple[int, float, bool]] = []
    per_call: list[tuple[int, int, int]] = []  # items, final status, attempts
    depth_max = 0.0
    capacity_pairs = None
    rss: list[float] = []
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def one(body: dict) -> None:
            for attempt in range(retries + 1):
                t = time.monotonic()
                try:
                    r = await c.post(url + "/v1/score", json=body)
                    results.append((r.status_code, time.monotonic() - t, "retry-after" in r.headers))
                except httpx.HTTPError:
                    results.append((-1, time.monotonic() - t, False))
                    break
                if r.status_code != 429 or attempt == retries:
                    break
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
            per_call.append((len(body["items"]), results[-1][0], attempt + 1))

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
    by_size: dict[str, dict[str, int]] = {}
    for items, code, _ in per_call:
        row = by_size.setdefault(str(items), {})
        row[str(code)] = row.get(str(code), 0) + 1
    return {
        "calls": len(per_call),
        "lockouts": sum(code == 429 for _, code, _ in per_call) if retries else None,
        "final_status_by_size": by_size,
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
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_ARTIFACT)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--items", type=int, default=20, help="items per call (unless --sizes)")
    ap.add_argument("--sizes", default=None, help="comma-separated call sizes, cycled (mixed traffic)")
    ap.add_argument("--factor", type=float, default=3.0, help="offered load / capacity, in pairs/s")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--retries", type=int, default=0, help="retries of a 429 after its Retry-After")
    ap.add_argument("--idle-sweep", action="store_true", help="first, each size alone on the idle server")
    ap.add_argument("--engine", default="auto", help="DARL_ENGINE")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overload.json")
    args = ap.parse_args()

    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [args.items]
    bodies = load_requests(args.data, sizes, 500)
    env = {"DARL_MODEL_DIR": str(args.model_dir), "DARL_ENGINE": args.engine, "DARL_LOG_LEVEL": "warning"}
    log = tempfile.NamedTemporaryFile("w", prefix="darl-overload-", suffix=".log", delete=False)  # noqa: SIM115
    print(f"server log: {log.name}", file=sys.stderr)
    with log, running_server(env, ready_timeout=600, log=log) as (url, proc):
        server = psutil.Process(proc.pid)
        sweep = None
        if args.idle_sweep:
            sweep = await idle_sweep(url, load_requests(args.data, SWEEP_SIZES, len(SWEEP_SIZES)))
        cap = await capacity(url, load_requests(args.data, [100], 50))
        mean_items = statistics.mean(sizes)
        print(f"capacity: {cap:.1f} pairs/s (calls of 100 items)", file=sys.stderr)
        report = await open_loop(url, bodies, args.factor * cap / mean_items, args.seconds, server, args.retries)
    report.update(
        {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "engine": args.engine,
            "call_sizes": sizes,
            "idle_sweep": sweep,
            "capacity_pairs_per_s": round(cap, 2),
            "offered_pairs_per_s": round(args.factor * cap, 2),
            "seconds": args.seconds,
            "retries": args.retries,
            "no_5xx": not any(k.startswith("5") or k == "-1" for k in report["status_counts"]),
            "count_504": report["status_counts"].get("504", 0),
            "queue_within_bound": report["queue_depth_max_pairs"] <= report["queue_capacity_pairs"],
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
