"""Engine throughput: pairs/s of each engine on the same real pairs, side by side.

Usage (from the repo root, after ``make install``)::

    .venv/bin/python -m benchmarks.engines [--model-dir DIR] [--pairs 1024] [--repeats 5]
    .venv/bin/python -m benchmarks.engines --quality --engines torch-fp32,torch-int8

Pairs are real (query, title) rows of the Home Depot test split, rendered with
the production template. Each engine is started once, warmed up, then scores
all pairs ``--repeats`` times in batches of ``--batch`` pairs (what the
micro-batcher hands it under load); the median pairs/s is reported. Speed does
not depend on the weights, so without a trained artifact the real base model
with a random head is used. Results go to ``benchmarks/results/engines.json``
and a markdown table on stdout.

``--quality`` instead scores the whole Home Depot and CrowdFlower test sets with
each engine and reports, against the first engine listed (the reference), the
largest |Δp| and the share of changed labels, and every engine's macro-F1 and
quadratic kappa (``benchmarks/results/engines-quality.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.workload import DEFAULT_DATA, REPO, load_model, read_rows
from relevance_core.host import machine

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `darl serve` sets it (darl/cli.py)

ENGINE_CONFIGS = {
    "torch-bf16": ("torch", "bfloat16", {}),
    "torch-fp32": ("torch", "float32", {}),
    "vllm-bf16": ("vllm", "bfloat16", {}),  # model threads on every core (the default)
    "vllm-bf16-autobind": ("vllm", "bfloat16", {"vllm_cpu_threads_bind": "auto"}),  # vLLM's own: 1 core kept
    "vllm-fp32": ("vllm", "float32", {}),
    "torch-int8": ("torch", "int8", {}),
}
Pair = tuple[str, str, str | None, str]  # query, title, description, label


def read_test_pairs(path: Path, limit: int | None = None) -> list[Pair]:
    """The test split's pairs of one data file, the first ``limit`` of them."""
    rows = itertools.islice(read_rows(path, ["test"]), limit)
    return [(r["query"], r["item_title"], r["item_description"] or None, r["label"]) for r in rows]


async def quality(names: list[str], ckpt: Path, max_length: int, renderer: Any, data_root: Path) -> dict:
    """Every engine over the whole test sets; agreement with the first engine and test metrics."""
    import numpy as np
    from sklearn.metrics import cohen_kappa_score, f1_score

    from relevance_core.labels import LABELS
    from service.engine_factory import create_engine
    from service.settings import Settings

    sets = {d: read_test_pairs(data_root / f) for d, f in (("id", "homedepot.csv.gz"), ("ood", "crowdflower.csv.gz"))}
    probs: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        kind, dtype, extra = ENGINE_CONFIGS[name]
        engine = create_engine(Settings(engine=kind, dtype=dtype, **extra), ckpt, max_length)
        await engine.start()
        try:
            probs[name] = {}
            for domain, rows in sets.items():
                ids = [renderer.render(q, t, d).token_ids for q, t, d, _ in rows]
                out = [await engine.score(ids[i : i + 64]) for i in range(0, len(ids), 64)]
                probs[name][domain] = np.concatenate(out)
        finally:
            await engine.stop()
        print(f"== {name} scored", file=sys.stderr, flush=True)
    ref = names[0]
    rows = []
    for name in names:
        for domain, pairs in sets.items():
            y = np.array([LABELS.index(r[3]) for r in pairs])
            p, p_ref = probs[name][domain], probs[ref][domain]
            pred = p.argmax(1)
            rows.append(
                {
                    "engine": name,
                    "domain": domain,
                    "pairs": len(pairs),
                    "max_abs_dp_vs_ref": round(float(np.abs(p - p_ref).max()), 4),
                    "changed_labels_vs_ref": round(float((pred != p_ref.argmax(1)).mean()), 4),
                    "macro_f1": round(float(f1_score(y, pred, average="macro")), 4),
                    "qwk": round(float(cohen_kappa_score(y, pred, weights="quadratic")), 4),
                }
            )
    return {"reference": ref, "rows": rows}


async def bench_engine(name: str, ckpt: Path, max_length: int, batches: list[list], repeats: int) -> dict:
    from service.engine_factory import create_engine
    from service.settings import Settings

    kind, dtype, extra = ENGINE_CONFIGS[name]
    settings = Settings(engine=kind, dtype=dtype, max_batch_pairs=max(len(b) for b in batches), **extra)
    t0 = time.perf_counter()
    engine = create_engine(settings, ckpt, max_length)
    await engine.start()
    start_s = time.perf_counter() - t0
    n_pairs = sum(len(b) for b in batches)
    try:
        for b in batches[:2]:  # warm-up (compilation, allocator)
            await engine.score(b)
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for b in batches:
                await engine.score(b)
            rates.append(n_pairs / (time.perf_counter() - t))
    finally:
        await engine.stop()
    return {
        "engine": name,
        "start_s": round(start_s, 1),
        "pairs_per_s_median": round(statistics.median(rates), 1),
        "pairs_per_s_runs": [round(r, 1) for r in rates],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engines", default="torch-bf16,torch-fp32,vllm-bf16,vllm-bf16-autobind")
    ap.add_argument("--quality", action="store_true", help="whole test sets: agreement and metrics per engine")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    name = "engines-quality.json" if args.quality else "engines.json"
    args.out = args.out or REPO / "benchmarks" / "results" / name

    model = load_model(args.model_dir, Path(tempfile.mkdtemp(prefix="darl-bench-")))
    ckpt, max_length, renderer = model.checkpoint, model.max_length, model.renderer
    if args.quality:
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "model": model.name,
            **await quality(args.engines.split(","), ckpt, max_length, renderer, args.data.parent),
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print("| engine | domain | max abs Δp | changed labels | macro-F1 | kappa |\n|---|---|---|---|---|---|")
        for r in report["rows"]:
            print(
                f"| {r['engine']} | {r['domain']} | {r['max_abs_dp_vs_ref']} | {r['changed_labels_vs_ref']:.2%} "
                f"| {r['macro_f1']} | {r['qwk']} |"
            )
        return
    ids = [renderer.render(q, t, d).token_ids for q, t, d, _ in read_test_pairs(args.data, args.pairs)]
    batches = [ids[i : i + args.batch] for i in range(0, len(ids), args.batch)]
    results = []
    for name in args.engines.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        results.append(await bench_engine(name, ckpt, max_length, batches, args.repeats))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    import torch

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": model.name,
        "pairs": len(ids),
        "mean_tokens_per_pair": round(sum(map(len, ids)) / len(ids), 1),
        "batch": args.batch,
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| engine | pairs/s (median of {args.repeats}) | start (s) |\n|---|---|---|")
    for r in results:
        print(f"| {r['engine']} | {r['pairs_per_s_median']} | {r['start_s']} |")


if __name__ == "__main__":
    asyncio.run(main())
