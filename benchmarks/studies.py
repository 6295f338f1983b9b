"""Sections of docs/benchmarks.md beside the main run: tuning and side-by-side studies, engines, admission.

Each renders one JSON of ``benchmarks/results/`` (written by ``benchmarks.run --tuning`` / ``--study``,
``benchmarks.tune_engine``, ``benchmarks/engines.py`` and ``benchmarks/overload.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.stats import measured, server_cells, tuning_summary
from benchmarks.tables import closed_tables, contention, f1, f2, open_table, servers_section, xr


def tuning_summary_section(tun: dict) -> list[str]:
    """Every variant of a study against its first server, and which one was fastest."""
    rows = tuning_summary(tun)
    if not rows:
        return []

    def cell(item: tuple | None) -> str:
        return "–" if item is None else f"{xr(item[1])} (N = {item[0][1]}, c = {item[0][2]})"

    lines = [
        f"Against `{rows[0]['server']}`, the study's first server: closed-loop pairs/s ratio per cell, combined by "
        "geometric mean over the cells both measured; p99 of the open-loop call at 50 % load over its unloaded p50.",
        "",
        "| variant | settings changed | pairs/s vs the first (geomean) | worst cell | best cell "
        "| p99 at 50 % ÷ unloaded |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = ", ".join(f"`{k}={v}`" for k, v in r["changed"].items()) or "–"
        lines.append(
            f"| {r['server']} | {changed} | {xr(r['geomean'])} over {r['cells']} | {cell(r['worst'])} "
            f"| {cell(r['best'])} | {xr(r['p99_factor'])} |"
        )
    best = max((r for r in rows if r["geomean"]), key=lambda r: r["geomean"])
    verdict = " The reference is the best measured." if best is rows[0] else ""
    lines += [
        "",
        f"Highest closed-loop throughput: **{best['server']}** ({xr(best['geomean'])} the pairs/s of "
        f"`{rows[0]['server']}`, geometric mean).{verdict}",
    ]
    return lines


def study_section(title: str, tun: dict) -> list[str]:
    """A smaller run of the same harness (settings or servers side by side), compared with its first server."""
    lines = [
        f"## {title}",
        "",
        f"Same harness, `{tun['command']}`, {tun['date']} ({tun.get('elapsed_min', '?')} min); "
        f"bf16 roofline {tun['roofline']['tflops_best']:.3f} TFLOP/s in that run.",
        "",
        *servers_section(tun),
        "",
        *tuning_summary_section(tun),
        "",
        *closed_tables(tun),
    ]
    if any(k[0] == "open" for s in measured(tun) for k in server_cells(s)):
        lines += [*open_table(tun), ""]
    return lines


def engine_tuning_section(tun: dict) -> list[str]:
    """``benchmarks.tune_engine``'s variants of the torch engine, per kind of batch."""
    kinds = list(tun["mean_tokens"])
    shapes = ", ".join(f"{k}: {tun['batches'][k]} batch(es), {tun['mean_tokens'][k]} tokens/pair" for k in kinds)
    lines = [
        f"`{tun['command']}`, {tun['date']} ({tun['elapsed_min']} min, 1-min load {f2(tun.get('load_at_start'))} "
        f"at start{'; busy: ' + tun['busy_at_start'] if tun.get('busy_at_start') else ''}); "
        f"the torch engine in-process, bf16, on batches of up to {tun['batch_pairs']} pairs built from "
        f"real calls ({shapes}); "
        f"median of {tun['reps']} repetitions (lowest–highest in brackets). The last column is the largest "
        "probability difference from "
        f"`{tun['diff_against']}` on the same batches.",
        "",
        "| variant | " + " | ".join(f"{k} pairs/s" for k in kinds) + " | start (s) | max abs prob diff "
        "| other jobs' CPU (max) |",
        "|---|" + "---|" * (len(kinds) + 3),
    ]
    for r in tun["results"]:
        cells = " | ".join(
            f"{f1(r['pairs_per_s'].get(k))} ({f1(min(r['runs'][k]))}–{f1(max(r['runs'][k]))})" for k in kinds
        )
        shares = {"foreign_cpu_share": r.get("foreign_cpu_share_max"), "steal_share": r.get("steal_share_max")}
        lines.append(
            f"| {r['variant']} | {cells} | {f1(r['start_s'])} | {r['max_abs_prob_diff']:.4f} | {contention(shares)} |"
        )
    return lines


def cpu_engines_section(results: Path) -> list[str]:
    """Engines, int8 quality and admission on the machine `make bench-cpu` ran on (its CPU features named)."""
    speed, quality = results / "engines.json", results / "engines-quality.json"
    if not speed.is_file():
        return []
    sp = json.loads(speed.read_text())
    out = [
        "## CPU engines and admission (`make bench-cpu`)",
        "",
        f"`benchmarks/engines.py`, {sp['date']}, {sp['machine']}; model `{sp['model']}`, {sp['pairs']} real "
        f"Home Depot test pairs ({sp['mean_tokens_per_pair']} tokens each on average) in batches of {sp['batch']} "
        f"(what the micro-batcher hands an engine for calls of 100 items); median of {sp['repeats']} passes.",
        "",
        "| engine | pairs/s (median) | runs | start (s) | vs the first row |",
        "|---|---|---|---|---|",
    ]
    ref = sp["results"][0]["pairs_per_s_median"]
    for r in sp["results"]:
        runs = ", ".join(map(str, r["pairs_per_s_runs"]))
        ratio = r["pairs_per_s_median"] / ref
        out.append(f"| {r['engine']} | {r['pairs_per_s_median']} | {runs} | {r['start_s']} | {ratio:.2f}× |")
    if quality.is_file():
        q = json.loads(quality.read_text())
        out += [
            "",
            f"`benchmarks/engines.py --quality`, {q['date']}, {q['machine']}: the whole Home Depot (id) and "
            f"CrowdFlower (ood) test sets, each engine against `{q['reference']}`.",
            "",
            "| engine | domain | pairs | max abs Δp | changed labels | macro-F1 | kappa |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in q["rows"]:
            out.append(
                f"| {r['engine']} | {r['domain']} | {r['pairs']} | {r['max_abs_dp_vs_ref']} "
                f"| {r['changed_labels_vs_ref']:.2%} | {r['macro_f1']} | {r['qwk']} |"
            )
    for name, title in (("admission-half.json", "0.5× capacity"), ("admission-3x.json", "3× capacity")):
        path = results / name
        if not path.is_file():
            continue
        a = json.loads(path.read_text())
        out += [
            "",
            f"Admission at {title} (`benchmarks/overload.py`, {a['date']}, {a['machine']}, engine {a['engine']}):",
        ]
        if a.get("idle_sweep"):
            sweep = ", ".join(f"{r['items']}→{r['status']} in {r['s']} s" for r in a["idle_sweep"])
            out.append(f"idle server, one call of each size: {sweep}.")
        out.append(
            f"Capacity {a['capacity_pairs_per_s']} pairs/s; offered {a['offered_pairs_per_s']} pairs/s for "
            f"{a['seconds']:g} s in calls of {a['call_sizes']} items, retries after `Retry-After`: {a['retries']}. "
            f"Final status per call: {a['calls']} calls, lockouts {a['lockouts']}; all responses "
            f"{a['status_counts']}; 504s {a['count_504']}; no 5xx: {a['no_5xx']}; accepted p50/p99 "
            f"{a['accepted_p50_s']}/{a['accepted_p99_s']} s; per size {a['final_status_by_size']}."
        )
    return [*out, ""]


def sections(results: Path) -> list[str]:
    """Every study found in ``results``, in the document's order."""
    lines: list[str] = []
    found = [("Tuning study", results / "tuning.json")]
    found += [(f"Study: {p.stem.removeprefix('study_')}", p) for p in sorted(results.glob("study_*.json"))]
    for title, path in found:
        if path.is_file():
            lines += study_section(title, json.loads(path.read_text()))
    engine_tuning = results / "tuning_engine.json"
    if engine_tuning.is_file():
        lines += [
            "## Engine tuning (torch engine, in-process)",
            "",
            *engine_tuning_section(json.loads(engine_tuning.read_text())),
            "",
        ]
    return lines + cpu_engines_section(results)
