"""One server under load: start it, check its answers, measure every cell in windows, stop it.

A window is one cell (closed loop at a concurrency, or open loop at a load) of
one repetition. Besides latency and throughput it records the server's CPU
(its whole process tree), the load generator's, and the share of the cores
that other jobs took meanwhile; a window that others disturbed is measured
again after they leave.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import host, loadgen, stats
from benchmarks.launch import RunningServer
from benchmarks.servers import ALL_SERVERS, ServerSpec

Loop = Callable[[loadgen.Send, loadgen.Hook, loadgen.Hook], Awaitable[loadgen.Window]]


@dataclass
class Profile:
    """Which cells to run and how long each may take; the defaults are the full run of `make bench`."""

    ns: list[int] = field(default_factory=lambda: [10, 50, 200])
    concurrencies: list[int] = field(default_factory=lambda: [1, 4, 16])
    max_inflight_pairs: int = 400  # closed-loop cells with c·N above this are skipped (one round would not fit)
    open_n: int = 100
    open_fractions: list[float] = field(default_factory=lambda: [0.5, 0.8])
    open_requests: int = 12
    reps: int = 3
    pairs_target: int = 300  # measured pairs per closed-loop window
    max_seconds: float = 5.0  # per window
    servers: str = ALL_SERVERS
    budget_minutes: float = 60
    calls_per_n: int = 32
    open_max_seconds: float = 30.0  # arrivals of one open-loop window stop after this
    # A window during which other jobs used more than this share of the cores is measured again
    # (up to `retries` times), after waiting (≤ `alone_wait_s`) until they use less.
    max_foreign_share: float = 0.08
    retries: int = 3
    alone_wait_s: float = 600.0


def closed_cells(prof: Profile, ns: list[int]) -> list[tuple[int, int]]:
    """(N, concurrency) of the closed-loop cells: c = 1 always, larger c while c·N pairs fit in flight."""
    return [(n, c) for n in ns for c in prof.concurrencies if c == 1 or c * n <= prof.max_inflight_pairs]


class Driver:
    """Sends pre-built bodies to one running server and measures windows."""

    def __init__(self, running: RunningServer, bodies: dict[int, list[bytes]]) -> None:
        self.running = running
        self.bodies = bodies
        self.url = running.url + running.spec.score_path

    async def _window(self, loop: Loop, connections: int) -> dict:
        import httpx

        marks: dict[str, tuple] = {}

        def mark(at: str) -> None:
            marks[at] = (self.running.cpu_snapshot(), time.process_time(), host.clock())

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300.0)) as client:
            headers = {"content-type": "application/json"}

            async def send(body: bytes) -> tuple[int, bytes]:
                r = await client.post(self.url, content=body, headers=headers)
                return r.status_code, r.content

            w = await loop(send, lambda: mark("anchor"), lambda: mark("end"))
        d = w.summary()
        if "end" in marks and d["pairs"]:
            (server0, client0, clock0), (server1, client1, clock1) = marks["anchor"], marks["end"]
            d["server_cpu_s"] = host.cpu_delta(server0, server1)
            d["server_cpu_s_per_1k"] = d["server_cpu_s"] / d["pairs"] * 1000
            d["client_cpu_s_per_1k"] = (client1 - client0) / d["pairs"] * 1000
            d.update(host.shares(clock0, clock1, d["server_cpu_s"] + client1 - client0))
        return d

    async def _guarded(self, loop: Loop, connections: int, prof: Profile) -> dict:
        """A window on a machine that other jobs leave alone, measured again if they did not."""
        pid = self.running.proc.pid if self.running.proc else None
        waited = 0.0
        for attempt in range(prof.retries + 1):
            waited += await host.wait_until_alone(pid, prof.max_foreign_share, prof.alone_wait_s)
            d = await self._window(loop, connections)
            d["attempts"] = attempt + 1
            d["waited_for_quiet_s"] = round(waited, 1)
            share = d.get("foreign_cpu_share")
            if share is None or share <= prof.max_foreign_share:
                break
            print(f"[bench] other jobs used {share:.0%} of the cores during the window; again", file=sys.stderr)
        return d

    async def closed(self, n: int, c: int, prof: Profile) -> dict:
        measure = max(2, c, math.ceil(prof.pairs_target / n))
        bodies = self.bodies[n]
        return await self._guarded(
            lambda send, a, e: loadgen.closed_loop(send, bodies, n, c, measure, prof.max_seconds, a, e), c + 2, prof
        )

    async def open(self, n: int, rate: float, count: int, prof: Profile, seed: int) -> dict:
        horizon = max(prof.max_seconds * 3, min(count / rate * 1.5, prof.open_max_seconds))
        bodies = self.bodies[n]
        return await self._guarded(
            lambda send, a, e: loadgen.open_loop(send, bodies, n, rate, count, horizon, seed, 120.0, a, e), 64, prof
        )

    async def check(self, n: int) -> list[list[float]]:
        """Send the first call of ``n`` items, check the answer, return its probabilities."""
        import httpx

        async with httpx.AsyncClient(timeout=300) as client:
            r = await client.post(self.url, content=self.bodies[n][0], headers={"content-type": "application/json"})
        if r.status_code != 200:
            raise RuntimeError(f"{self.running.spec.name}: status {r.status_code}: {r.text[:300]}")
        return self.running.spec.answer(r.content, n)


def _log(spec: ServerSpec, what: str, d: dict) -> None:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.0f}ms"

    print(
        f"[bench] {spec.name} {what}: p50={ms(d['p50'])} p99={ms(d['p99'])} err={d['errors']}",
        file=sys.stderr,
        flush=True,
    )


async def bench_server(
    spec: ServerSpec,
    work: dict,
    prof: Profile,
    logdir: Path,
    deadline: float,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """Start ``spec``, measure every cell ``prof.reps`` times, stop it; ``save(result)`` after every window."""
    result: dict = {"name": spec.name, "kind": spec.kind, "label": spec.label, "ours": spec.ours}
    result["settings"] = spec.settings
    if spec.unavailable:
        result["unavailable"] = spec.unavailable
        return result
    running = RunningServer(spec, spec.port, logdir / (spec.name.replace("/", "_").replace(";", "_") + ".log"))
    windows: list[dict] = []
    result["windows"] = windows
    try:
        running.start()
        result["start_s"] = round(await asyncio.to_thread(running.wait_ready), 1)
        ns = sorted({*prof.ns, *([prof.open_n] if prof.open_fractions else [])})
        driver = Driver(running, {n: [spec.body(p) for p in work[n]["prepared"]] for n in ns})
        result["first_call_probs"] = {}
        for n in ns:  # validate the answers, keep one call's probabilities, warm up every shape
            result["first_call_probs"][str(n)] = await driver.check(n)
            for _ in range(2):
                await driver.check(n)
        cells = closed_cells(prof, prof.ns)
        if prof.open_fractions and prof.open_n not in prof.ns:
            cells += [(prof.open_n, c) for c in (1, 4)]
        for rep in range(prof.reps):
            if rep > 0 and time.monotonic() > deadline:  # every server gets at least one repetition
                result["note"] = f"time budget reached: {rep} of {prof.reps} repetitions"
                break
            rep_windows: list[dict] = []

            def keep(d: dict, what: str, rep_windows: list[dict] = rep_windows) -> None:
                rep_windows.append(d)
                if save:
                    save({**result, "windows": windows + rep_windows, "partial": True})
                _log(spec, what, d)

            for n, c in cells:
                d = await driver.closed(n, c, prof)
                d["rep"] = rep
                keep(d, f"rep{rep} closed N={n} c={c}: {d['pairs_per_s']:.1f} pairs/s")
            cap = stats.capacity(rep_windows, prof.open_n)
            for frac in prof.open_fractions if cap else []:
                rate = frac * cap / prof.open_n
                d = await driver.open(prof.open_n, rate, prof.open_requests, prof, seed=rep * 100 + int(frac * 100))
                d.update(rep=rep, fraction=frac, capacity_pairs_per_s=cap)
                keep(d, f"rep{rep} open N={prof.open_n} {frac:.0%} of {cap:.0f} pairs/s")
            windows.extend(rep_windows)
    except Exception as e:  # a peer that fails is reported, never the end of the run
        result["error"] = f"{type(e).__name__}: {e}"
        print(f"[bench] {spec.name} failed: {result['error']}", file=sys.stderr, flush=True)
    finally:
        running.stop()  # synchronous: also runs when the task is being cancelled (Ctrl-C, SIGTERM)
    return result
