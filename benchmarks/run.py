"""Serving benchmark: this service (torch and vLLM engines) against its peers, over HTTP on loopback.

One command starts each server in turn on 127.0.0.1, drives it with real Home
Depot queries (1 query × N items per call) in closed loop at several
concurrencies and in open loop (Poisson arrivals) at fractions of the capacity
it just showed, stops it, and writes ``docs/benchmarks.md``, ``docs/benchmarks.png``
and the raw windows to ``benchmarks/results/serving.json``::

    .venv/bin/python -m benchmarks.run                 # full run (~1 h on the 2-core host): `make bench`
    .venv/bin/python -m benchmarks.run --report-only   # re-render the doc from the JSON
    .venv/bin/python -m benchmarks.run --study NAME --servers A,B,A-again:A   # a side-by-side study

Servers (``--servers``, comma-separated): ``darl-torch``, ``darl-vllm``,
``vllm-serve``, ``infinity``, ``naive``. A name may carry settings for the
server's environment after ``@``, ``;``-separated, and a short name before
``:`` (``torch-1t:darl-torch@DARL_TORCH_THREADS=1;DARL_MAX_WAIT_MS=5``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import host, report, roofline, servers
from benchmarks.driver import Profile, bench_server
from benchmarks.workload import DEFAULT_DATA, REPO, load_model, prepare_calls
from relevance_core.host import host_info

DEFAULT_JSON = REPO / "benchmarks" / "results" / "serving.json"
DEFAULT_MD = REPO / "docs" / "benchmarks.md"
DEFAULT_PNG = REPO / "docs" / "benchmarks.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="homedepot.csv.gz (its test split is used)")
    ap.add_argument("--model-dir", type=Path, help="artifact; default the trained one, else base + random head")
    ap.add_argument("--servers", help=f"comma-separated (default: {servers.ALL_SERVERS})")
    ap.add_argument("--ns", help="items per call, e.g. 10,50,200")
    ap.add_argument("--concurrencies", help="closed-loop concurrencies, e.g. 1,4,16")
    ap.add_argument("--reps", type=int, help="repetitions (median reported; ≥ 3)")
    ap.add_argument("--open-fractions", help="open-loop loads as fractions of capacity, e.g. 0.5,0.8; 'none' skips")
    ap.add_argument("--budget-minutes", type=float, help="stop starting repetitions after this")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="raw windows; the studies are read beside it")
    ap.add_argument("--md", type=Path, default=DEFAULT_MD, help="the report")
    ap.add_argument("--png", type=Path, default=DEFAULT_PNG, help="its plot")
    ap.add_argument("--tuning", action="store_true", help="write tuning.json beside --json (the tuning study)")
    ap.add_argument("--study", metavar="NAME", help="write study_NAME.json beside --json (rendered in its own section)")
    ap.add_argument("--report-only", action="store_true", help="only re-render the doc and plot from the JSON")
    ap.add_argument("--resume", action="store_true", help="keep the servers already measured; run only the others")
    ap.add_argument("--infinity-bin", type=Path, help="default: $INFINITY_BIN, else ~/.cache/darl/venv-infinity")
    return ap.parse_args(argv)


def make_profile(args: argparse.Namespace) -> Profile:
    prof = Profile()
    if args.servers:
        prof.servers = args.servers
    if args.ns:
        prof.ns = [int(x) for x in args.ns.split(",")]
    if args.concurrencies:
        prof.concurrencies = [int(x) for x in args.concurrencies.split(",")]
    if args.reps:
        prof.reps = args.reps
    if args.open_fractions:
        fr = args.open_fractions.strip().lower()
        prof.open_fractions = [] if fr == "none" else [float(x) for x in fr.split(",")]
    if args.budget_minutes:
        prof.budget_minutes = args.budget_minutes
    return prof


def output_json(args: argparse.Namespace) -> Path:
    if args.study:
        return args.json.with_name(f"study_{args.study}.json")
    return args.json.with_name("tuning.json") if args.tuning else args.json


def measure_peak_alone(prof: Profile, attempts: int = 3) -> dict:
    """The bf16 matmul peak, measured when other jobs leave the cores alone; the best of a few tries."""
    best: dict | None = None
    for _ in range(attempts):
        asyncio.run(host.wait_until_alone(None, prof.max_foreign_share, prof.alone_wait_s))
        c0, k0 = host.clock(), host.children_cpu()
        peak = roofline.measure_peak_subprocess()
        share = host.shares(c0, host.clock(), host.children_cpu() - k0)["foreign_cpu_share"]
        peak["foreign_cpu_share"] = round(share or 0.0, 3)
        if best is None or peak["tflops_best"] > best["tflops_best"]:
            best = peak
        if peak["foreign_cpu_share"] <= prof.max_foreign_share:
            break
    assert best is not None
    return best


def resume(run: dict, previous: dict) -> set[str]:
    """Keep ``previous``'s servers that got all their repetitions (a budget-cut one runs again); their names."""
    reps = previous["profile"]["reps"]
    run["servers"] = [
        s for s in previous["servers"] if s.get("unavailable") or len({w["rep"] for w in s.get("windows", [])}) >= reps
    ]
    done = {s["name"] for s in run["servers"]}
    run["resumed"] = {"from": previous["date"], "command": previous["command"], "servers": sorted(done)}
    run["roofline_previous"] = previous.get("roofline")
    run["profile_previous"] = previous.get("profile")
    return done


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        report.write(args.json, args.md, args.png)
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the servers on the way out
    prof = make_profile(args)
    infinity_bin = args.infinity_bin or servers.default_infinity_bin()
    busy = host.busy_reason()
    if busy:
        print(f"[bench] warning: machine is busy ({busy}); numbers will be low", file=sys.stderr)
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="darl-serving-bench-"))
    model = load_model(args.model_dir, workdir)
    ns = sorted({*prof.ns, prof.open_n})
    work = prepare_calls(args.data, ns, prof.calls_per_n, model.renderer, model.tokenizer)
    print("[bench] measuring the bf16 matmul peak", file=sys.stderr, flush=True)
    peak = measure_peak_alone(prof)
    infinity_ckpt = servers.infinity_checkpoint(model.checkpoint, workdir / "infinity-ckpt")
    inf_version = servers.infinity_versions(infinity_bin)
    run = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": host_info(),
        "versions": {**host.versions(), **({"infinity-emb": inf_version} if inf_version else {})},
        "load_at_start": host.loadavg(),
        "busy_at_start": busy,
        "model": {
            "name": model.name,
            "artifact": str(model.artifact_dir if model.cache_dir is None else "real SmolLM2-135M base + random head"),
            "max_length": model.max_length,
            "non_embedding_params": roofline.non_embedding_params(model.checkpoint),
        },
        "roofline": peak,
        "profile": asdict(prof),
        "workload": {
            "data": str(args.data),
            "split": "test",
            "catalog": work["_catalog"],
            "per_n": {
                str(n): {k: work[n][k] for k in ("mean_tokens", "own_fraction", "queries")}
                | {"calls": prof.calls_per_n}
                for n in ns
            },
        },
        "servers": [],
    }
    deadline = t_start + prof.budget_minutes * 60
    out_json = output_json(args)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    done = resume(run, json.loads(out_json.read_text())) if args.resume and out_json.is_file() else set()

    def write(servers_so_far: list[dict]) -> None:  # after every window: a crash or Ctrl-C keeps what was measured
        run["elapsed_min"] = round((time.monotonic() - t_start) / 60, 1)
        out_json.write_text(json.dumps({**run, "servers": servers_so_far}, indent=1) + "\n")

    for name in [s.strip() for s in prof.servers.split(",") if s.strip()]:
        spec = servers.build_spec(name, model, infinity_bin, infinity_ckpt)
        if spec.name in done:
            print(f"[bench] == {spec.name}: kept from the previous run", file=sys.stderr, flush=True)
            continue
        print(f"[bench] == {name}: {spec.label}", file=sys.stderr, flush=True)
        res = asyncio.run(
            bench_server(spec, work, prof, args.json.parent / "logs", deadline, lambda p: write([*run["servers"], p]))
        )
        run["servers"].append(res)
        write(run["servers"])
    run["load_at_end"] = host.loadavg()
    run["busy_at_end"] = host.busy_reason(float("inf"))  # only other heavy jobs; our own load is expected
    write(run["servers"])
    if args.json.is_file():
        report.write(args.json, args.md, args.png)
    print(f"[bench] done in {run['elapsed_min']} min: {args.md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
