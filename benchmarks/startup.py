"""Startup time: seconds from ``darl serve`` to ``GET /readyz`` → 200, per engine configuration.

Usage (from the repo root, on a quiet machine)::

    .venv/bin/python -m benchmarks.startup [--configs torch vllm vllm-eager] [--restarts 3] [--cold]

Each configuration is started once (``first``: caches as they are, so it may compile and fill
them), then ``--restarts`` more times (warm: they find what the first start left). ``--cold``
points vLLM's cache (``VLLM_CACHE_ROOT``) at a fresh directory per configuration, kept for its
warm restarts, so ``first`` is truly cold and the warm restarts reuse exactly what it wrote.
Each start's log is searched for vLLM's compile-cache messages: the evidence of whether the
compiled graph was loaded or rebuilt. A markdown table goes to stdout and the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.host import busy_reason, versions
from benchmarks.workload import REPO
from darl.process import running_server
from relevance_core.host import host_info, machine

CONFIGS: dict[str, dict[str, str]] = {
    "torch": {"DARL_ENGINE": "torch"},
    "vllm": {"DARL_ENGINE": "vllm"},  # the server's defaults (DARL_VLLM_AOT_COMPILE=false)
    "vllm-eager": {"DARL_ENGINE": "vllm", "DARL_VLLM_ENFORCE_EAGER": "true"},
    "vllm-no-aot": {"DARL_ENGINE": "vllm", "VLLM_USE_AOT_COMPILE": "0"},
    "vllm-aot": {"DARL_ENGINE": "vllm", "VLLM_USE_AOT_COMPILE": "1"},
}
DEFAULT_CONFIGS = ["torch", "vllm", "vllm-eager"]
CACHE_MISS = "Compiling model again due to a load failure"  # vLLM found a cache it could not use
CACHE_HIT = "Directly load"  # vLLM loaded compiled graphs (or the AOT artifact) from its cache


def cache_hit(log: Path) -> bool | None:
    """Whether vLLM reused its compile cache, from its log lines; None if it said neither (torch, eager)."""
    text = log.read_text(errors="replace")
    if CACHE_MISS in text:
        return False
    return True if CACHE_HIT in text else None


def start_once(env: dict[str, str], log: Path, ready_timeout: float) -> dict[str, Any]:
    """One start: seconds until /readyz answers 200 (the server is stopped after), and the cache evidence."""
    with log.open("w") as f:
        t0 = time.perf_counter()
        try:
            with running_server(env, argv=("serve",), ready_timeout=ready_timeout, log=f):
                ready_s = time.perf_counter() - t0
        except (RuntimeError, TimeoutError) as e:  # record it and go on with the other configurations
            return {"error": str(e).splitlines()[0], "log": str(log)}
    return {"ready_s": round(ready_s, 2), "cache_hit": cache_hit(log), "log": str(log)}


def bench_config(name: str, env: dict[str, str], args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """The first start and the warm restarts of one configuration (with its own vLLM cache under --cold)."""
    fresh = tempfile.TemporaryDirectory(prefix=f"darl-vllm-cache-{name}-") if args.cold else contextlib.nullcontext()
    with fresh as cache:
        env = {**env, "DARL_MODEL_DIR": str(args.model.resolve())} | ({"VLLM_CACHE_ROOT": cache} if cache else {})
        runs = []
        for i in range(args.restarts + 1):
            label = "first" if i == 0 else f"warm{i}"
            print(f"[startup] {name} {label}", file=sys.stderr, flush=True)
            runs.append(start_once(env, log_dir / f"{name}-{label}.log", args.ready_timeout))
            print(f"[startup]   {runs[-1]}", file=sys.stderr, flush=True)
            if "error" in runs[-1]:
                break
    warm = [r["ready_s"] for r in runs[1:] if "ready_s" in r]
    median = round(statistics.median(warm), 2) if warm else None
    return {"config": name, "env": env, "first": runs[0], "warm": runs[1:], "warm_median_s": median}


def table(results: list[dict[str, Any]]) -> str:
    """The markdown summary: one row per configuration."""
    mark = {True: "yes", False: "no", None: "–"}
    rows = ["| config | first s | warm median s | warm runs | compile cache reused |", "|---|---|---|---|---|"]
    for r in results:
        warm = r["warm"]
        runs = ", ".join(str(w.get("ready_s", "error")) for w in warm) or "–"
        reused = ", ".join(mark[w.get("cache_hit")] for w in warm) or "–"
        first, median = r["first"].get("ready_s", "error"), r["warm_median_s"]
        rows.append(f"| {r['config']} | {first} | {'–' if median is None else median} | {runs} | {reused} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ", ".join(CONFIGS)
    ap.add_argument("--configs", nargs="+", action="extend", choices=CONFIGS, metavar="NAME", help=names)
    ap.add_argument("--model", type=Path, default=Path("model_artifacts/darl-smollm2"), help="artifact directory")
    ap.add_argument("--restarts", type=int, default=3, help="warm restarts after the first start")
    ap.add_argument("--cold", action="store_true", help="a fresh VLLM_CACHE_ROOT per configuration")
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="seconds one start may take")
    ap.add_argument("--log-dir", type=Path, default=None, help="server logs (default: a new temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "startup.json")
    args = ap.parse_args()
    configs = list(dict.fromkeys(args.configs or DEFAULT_CONFIGS))  # default: torch vllm vllm-eager
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="darl-startup-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"[startup] logs in {log_dir}", file=sys.stderr)
    if busy := busy_reason():
        print(f"[startup] machine not quiet: {busy}; timings will show it", file=sys.stderr)

    info = host_info()  # asks torch about a GPU: once, before any timing
    results = [bench_config(name, CONFIGS[name], args, log_dir) for name in configs]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(info),
        "host": info,
        "versions": versions(),
        "busy": busy,
        "model": str(args.model),
        "cold": args.cold,
        "restarts": args.restarts,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
