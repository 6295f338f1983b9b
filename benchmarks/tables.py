"""Markdown tables of one run's servers and cells, shared by the main report and its studies."""

from __future__ import annotations

from benchmarks.stats import agreement, measured, ratio, roofline_of, server_cells


def f1(x: float | None) -> str:
    return "–" if x is None else f"{x:,.1f}"


def f2(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1000:,.0f}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.0f} %"


def xr(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def contention(a: dict) -> str:
    """Other jobs' share of the cores, and the host's steal where the run recorded it."""
    out = pct(a.get("foreign_cpu_share"))
    if a.get("steal_share") is not None:
        out += f"; steal {pct(a['steal_share'])}"
    return out


def servers_section(run: dict) -> list[str]:
    """What ran with which settings, whether it was measured, and whether all answered alike."""
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


def closed_tables(run: dict) -> list[str]:
    """One table per N: every server at every closed-loop concurrency (this service's rows in bold)."""
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
    """Every server at every open-loop load of the run's open-loop N."""
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
    """This service's best pairs/s per cell over each peer's (``stats.comparisons`` rows)."""
    peers = [s["name"] for s in measured(run) if not s["ours"]]
    head = (
        "| N | concurrency | best of this service | pairs/s | "
        + " | ".join(f"× vs {p}" for p in peers)
        + " | × vs best peer |"
    )
    lines = [head, "|" + "---|" * (5 + len(peers))]
    for r in rows:
        cells = [xr(ratio(r["ours"], r["peers"].get(p))) for p in peers]
        lines.append(
            f"| {r['n']} | {r['c']} | {r['ours_name'] or '–'} | {f1(r['ours'])} | "
            + " | ".join(cells)
            + f" | {xr(r['ratio_best_peer'])} ({r['best_peer'] or '–'}) |"
        )
    return lines
