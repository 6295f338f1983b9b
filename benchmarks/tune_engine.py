"""Engine-level tuning: the torch engine's options on the batches the micro-batcher forms.

    .venv/bin/python -m benchmarks.tune_engine [--variants eager,eager+sb1024,prefix,compile] [--reps 3]

In-process, no HTTP: each variant is a ``TorchEngine`` with its options set
(``prefix``: query-prefix KV reuse; ``compile``: torch.compile; ``sbN``: a
sub-batch budget of N padded tokens). It scores the same
batches (real Home Depot calls of N items, concatenated up to the batcher's
pair limit, ``DARL_MAX_BATCH_PAIRS``, plus one lone call of 10 items as at
concurrency 1) ``--reps`` times; the median pairs/s is reported, with the
largest probability difference from the eager variant (bf16 rounding differs
between kernels). Results go to
``benchmarks/results/tuning_engine.json``, which ``benchmarks.report`` renders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import host
from benchmarks.workload import DEFAULT_DATA, REPO, load_catalog, load_model, make_calls, read_rows
from relevance_core.host import host_info

MAX_FOREIGN_SHARE = 0.08
DEFAULT_OUT = REPO / "benchmarks" / "results" / "tuning_engine.json"
Batches = list[tuple[str, list]]  # (kind, token ids of each pair)


def variant_kwargs(name: str) -> dict:
    """``TorchEngine`` options of a variant name such as ``eager+sb1024`` or ``prefix``."""
    kw: dict = {"prefix_reuse": False, "compile": False}
    for part in name.split("+"):
        if part == "prefix":
            kw["prefix_reuse"] = True
        elif part == "compile":
            kw["compile"] = True
        elif part.startswith("sb") and part[2:].isdigit():
            kw["sub_batch_tokens"] = int(part[2:])
        elif part != "eager":
            raise ValueError(f"unknown variant part {part!r}")
    return kw


def make_batches(renderer: Any, data: Path, ns: list[int], batch_pairs: int, per_n: int) -> Batches:
    """``per_n`` full batches of N-item calls per N, and one lone call of 10 items."""
    cat = load_catalog(read_rows(data, ["test"]))
    out = []
    for n in ns:
        calls = make_calls(cat, n, max(1, per_n * batch_pairs // n + 1), seed=7)
        pairs = [
            r.token_ids
            for c in calls
            for r in renderer.render_many(c.query, [(i.title, i.description) for i in c.items])
        ]
        for k in range(per_n):
            out.append((f"N={n}", pairs[k * batch_pairs : (k + 1) * batch_pairs]))
    lone = make_calls(cat, 10, 1, seed=8)[0]
    out.append(
        ("lone N=10", [r.token_ids for r in renderer.render_many(lone.query, [(i.title, None) for i in lone.items])])
    )
    return out


async def bench_variant(name: str, ckpt: Path, batches: Batches, reps: int) -> dict:
    """Median pairs/s per kind of batch over ``reps`` repetitions that other jobs left alone."""
    import torch

    from service.engine_torch import TorchEngine
    from service.settings import Settings

    torch.set_num_threads(os.cpu_count() or 1)  # every core, as the roofline is measured
    t0 = time.perf_counter()
    engine = TorchEngine(ckpt, Settings(dtype="bfloat16"), **variant_kwargs(name))
    await engine.start()
    start_s = time.perf_counter() - t0
    try:
        outputs = [await engine.score(b) for _, b in batches]  # warm-up (and the probabilities)
        per_kind: dict[str, list[float]] = {}
        foreign: list[float] = []
        stolen: list[float] = []
        for _ in range(reps):
            for _attempt in range(3):  # a repetition during which other jobs used the cores is run again
                await host.wait_until_alone(None, MAX_FOREIGN_SHARE, 600.0)
                c0, k0 = host.clock(), time.process_time()
                totals: dict[str, list[float]] = {}
                for kind, b in batches:
                    t = time.perf_counter()
                    await engine.score(b)
                    acc = totals.setdefault(kind, [0.0, 0.0])
                    acc[0] += len(b)
                    acc[1] += time.perf_counter() - t
                sh = host.shares(c0, host.clock(), time.process_time() - k0)
                share, steal = sh["foreign_cpu_share"] or 0.0, sh["steal_share"] or 0.0
                if share <= MAX_FOREIGN_SHARE:
                    break
                print(f"[tune] other jobs used {share:.0%} of the cores; again", file=sys.stderr, flush=True)
            foreign.append(share)
            stolen.append(steal)
            for kind, (pairs, secs) in totals.items():
                per_kind.setdefault(kind, []).append(pairs / secs)
    finally:
        await engine.stop()
    return {
        "variant": name,
        "start_s": round(start_s, 1),
        "pairs_per_s": {k: round(statistics.median(v), 1) for k, v in per_kind.items()},
        "runs": {k: [round(x, 1) for x in v] for k, v in per_kind.items()},
        "foreign_cpu_share_max": round(max(foreign), 3),
        "steal_share_max": round(max(stolen), 3),
        "probs": [o.tolist() for o in outputs],
    }


def reference(results: list[dict]) -> dict:
    """The variant the others' probabilities are compared with: ``eager``, else the first measured."""
    return next((r for r in results if r["variant"] == "eager"), results[0])


def with_diffs(results: list[dict]) -> list[dict]:
    """Results without their probabilities, each with its largest difference from ``reference``."""
    base = reference(results)
    out = []
    for r in results:
        diffs = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(r["probs"], base["probs"], strict=True)]
        out.append({k: v for k, v in r.items() if k != "probs"} | {"max_abs_prob_diff": float(max(diffs))})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--variants", default="eager,eager+sb2048,eager+sb1024,eager+sb4096,prefix,compile")
    ap.add_argument("--ns", default="10,50")
    ap.add_argument("--batch-pairs", type=int, help="pairs per batch; default the batcher's DARL_MAX_BATCH_PAIRS")
    ap.add_argument("--batches-per-n", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    busy = host.busy_reason()
    if busy:
        print(f"[tune] warning: machine is busy ({busy}); numbers will be low", file=sys.stderr)
    from service.settings import Settings

    model = load_model(args.model_dir, Path(tempfile.mkdtemp(prefix="darl-tune-")))
    batch_pairs = args.batch_pairs or Settings().max_batch_pairs
    batches = make_batches(
        model.renderer, args.data, [int(x) for x in args.ns.split(",")], batch_pairs, args.batches_per_n
    )
    tokens = {k: float(np.mean([len(x) for kk, b in batches if kk == k for x in b])) for k, _ in batches}
    results: list[dict] = []
    t0 = time.monotonic()
    load0 = host.loadavg()
    for name in args.variants.split(","):
        print(f"[tune] {name}", file=sys.stderr, flush=True)
        res = asyncio.run(bench_variant(name, model.checkpoint, batches, args.reps))
        print(f"[tune] {name}: {res['pairs_per_s']} (start {res['start_s']} s)", file=sys.stderr, flush=True)
        results.append(res)
        # written after every variant, so a variant that stalls (compile) loses nothing measured before it
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": "python -m benchmarks.tune_engine " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": host_info(),
            "versions": host.versions(),
            "model": model.name,
            "load_at_start": load0,
            "load_at_end": host.loadavg(),
            "busy_at_start": busy,
            "elapsed_min": round((time.monotonic() - t0) / 60, 1),
            "batches": {k: sum(1 for kk, _ in batches if kk == k) for k in tokens},
            "batch_pairs": batch_pairs,
            "mean_tokens": {k: round(v, 1) for k, v in tokens.items()},
            "reps": args.reps,
            "diff_against": reference(results)["variant"],
            "results": with_diffs(results),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({r["variant"]: r["pairs_per_s"] for r in results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
