"""``darl experiment``: the ablation table in docs/results.md, made by one command.

Each variant is the base config plus overrides (``configs/experiments.yaml``),
run for each of its seeds without exporting an artifact; the table rows are read
from each run's summary, with the machine and wall time of that run. Nothing is
written into the table that a run did not measure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from training.config import deep_update, find_root, load_config

log = logging.getLogger(__name__)

COLUMNS = ("accuracy", "macro_f1", "qwk", "rmse_hd", "ece", "inversion_rate", "cand_ndcg@10", "ndcg@10")


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


# Config fields added after runs were recorded, with their defaults: left out of the hash while at
# the default, so that adding a switch does not invalidate runs made before it existed.
ADDED_FIELDS: dict[tuple[str, ...], Any] = {
    ("interpolate", "temperature"): False,
    ("probe", "dasa_pairs"): False,
    ("finetune", "loss", "pairwise_weight"): 0.0,
    ("prompt_template",): "darl-prompt-v1",  # runs before v2 rendered descriptions
}


def config_sha(overrides: dict[str, Any], cfg: Any) -> str:
    """What a finished run is reused for: its resolved config and its kind (baseline or DaRL)."""
    dump = cfg.for_manifest()
    for where in ("run_dir", "output_dir"):  # where a run writes is not what it computes (any checkout)
        dump.pop(where, None)
    for (*sections, key), default in ADDED_FIELDS.items():
        node = dump
        for section in sections:
            node = node.get(section, {})
        if node.get(key, default) == default:
            node.pop(key, None)
    blob = json.dumps({"kind": overrides.get("kind", "darl"), "config": dump}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def summary_path(runs_dir: Path, name: str, seed: int, summaries_dir: Path | None = None) -> Path:
    """Where a run's summary is kept: ``summaries_dir`` (tracked in git, so the table is rebuilt on any
    checkout) or else inside the run's own directory."""
    if summaries_dir is not None:
        return summaries_dir / f"{name}-s{seed}.json"
    return runs_dir / f"{name}-s{seed}" / "summary.json"


def run_variant(
    base_config: Path,
    name: str,
    seed: int,
    overrides: dict[str, Any],
    runs_dir: Path,
    summaries_dir: Path | None = None,
) -> dict[str, Any]:
    """One training run (or baseline) → its summary, cached in ``summary_path(...)``.

    A finished run is reused only if it was made with the same resolved config; after a change to the
    base config or the variant's overrides it runs again (the old directory is kept as ``*.stale-<sha>``).
    """
    run_dir = runs_dir / f"{name}-s{seed}"
    done = summary_path(runs_dir, name, seed, summaries_dir)
    over = deep_update(overrides, {"seed": seed, "run_dir": str(run_dir), "name": f"exp-{name}"})
    kind = over.pop("kind", "darl")
    cfg = load_config(base_config, over)
    sha = config_sha({"kind": kind}, cfg)
    if done.is_file():
        old = json.loads(done.read_text())
        if old.get("config_sha") == sha:
            log.info("experiment %s seed %d: reusing %s", name, seed, done)
            return old
        stale = run_dir.with_name(f"{run_dir.name}.stale-{old.get('config_sha', 'unknown')}")
        log.warning(
            "experiment %s seed %d: config changed (%s → %s); running again, old run kept in %s",
            name,
            seed,
            old.get("config_sha"),
            sha,
            stale,
        )
        shutil.rmtree(stale, ignore_errors=True)
        if run_dir.is_dir():
            run_dir.rename(stale)
    if kind == "cross_encoder":
        from training.baseline import run_cross_encoder

        summary = run_cross_encoder(cfg)
    elif kind in ("lexical", "prior"):
        from training.lexical import run_cheap_baseline

        summary = run_cheap_baseline(cfg, kind)
    else:
        from training.pipeline import run

        summary = run(cfg, export=False)
    in_run = run_dir / "summary.json"
    summary = json.loads(in_run.read_text()) if in_run.is_file() else summary
    summary["config_sha"] = sha
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def artifact_section(artifact_dir: Path, out_dir: Path | None = None) -> list[str]:
    """The default artifact's test metrics, wall time and learning curve, as its manifest recorded them.

    With ``out_dir`` the learning curve is also drawn there (``learning-curve.png``).
    """
    from relevance_core.manifest import read_manifest
    from training.curves import plot_learning_curve

    m = read_manifest(artifact_dir)
    met = m.metrics
    rows = {k: met[k] for k in ("id", "ood") if met.get(k)}
    stage2 = {k: v for k, v in (met.get("stage2") or {}).items() if k != "curve"}
    curve = (met.get("stage2") or {}).get("curve") or []
    lines = [
        f"## Default artifact `{artifact_dir.name}` (version {m.version})",
        "",
        f"Made by `darl train --config configs/{m.name}.yaml`; numbers from its `manifest.json` "
        f"(created {m.created_at}). Machine: {met.get('machine', '–')}. "
        f"Stage timings (s): `{json.dumps(met.get('timings_s'))}`.",
        "",
        "| split | n | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for k, r in rows.items():
        lines.append(f"| {k} | {r.get('n')} | " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |")
    interp = met.get("interpolation") or {}
    lines += [
        "",
        f"OOD-detector AUROC (CrowdFlower pool vs Home Depot pool): `{json.dumps(met.get('ood_auroc'))}`; "
        f"selection: `{json.dumps(met.get('selection'))}`; probe on val: `{json.dumps(met.get('probe_val'))}`; "
        f"interpolation coefficient {interp.get('coef')} (objective {interp.get('objective')}); curve: "
        + ", ".join(f"{r['coef']}→{r['objective']:.4f}" for r in interp.get("curve", []))
        + (f"; temperature scaling on val: `{json.dumps(met['calibration'])}`" if met.get("calibration") else "")
        + (f"; stage 2: `{json.dumps(stage2)}`" if stage2 else ""),
        "",
    ]
    if curve:
        png = plot_learning_curve(curve, out_dir / "learning-curve.png", f"{m.name} {m.version}") if out_dir else None
        lines += [
            "### Learning curve",
            "",
            f"Validation quality during stage 2 ({len(curve)} points, `eval.curve_points`): "
            "ID = Home Depot val, OOD = CrowdFlower val (the config's `data.max_val_per_domain` pairs, with "
            "`eval.curve_foreign_per_query` foreign items per query for the inversion rate); wall time counts "
            "stage 2 from its start, these evaluations included.",
            "",
            *([f"![learning curve]({png.name})", ""] if png else []),
            "| pairs seen | wall s | ID macro-F1 | ID kappa | ID RMSE | ID inversion | OOD macro-F1 | OOD kappa "
            "| OOD inversion |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in curve:
            i, o = r.get("id") or {}, r.get("ood") or {}
            cells = [i.get("macro_f1"), i.get("qwk"), i.get("rmse_hd"), i.get("inversion_rate")]
            cells += [o.get("macro_f1"), o.get("qwk"), o.get("inversion_rate")]
            lines.append(f"| {r['pairs_seen']} | {r['wall_s']} | " + " | ".join(_fmt(c) for c in cells) + " |")
        lines.append("")
    return lines


METHOD_NOTES = """\
## What the components are

- **DaRL loss** (`training/losses.py`): `CE + λ_conf·Σ p log p + λ_ord·((E[g] − y)/2)²`. The calibration
  term is the confidence penalty of Pereyra et al. 2017 (minus the predicted entropy); the ordinal term
  is the squared error of the expected grade (grades 0/1/2), the same expected grade the service returns
  as `score`; `emd2` (squared EMD of the CDFs, Hou et al. 2016) is the configurable alternative.
  Defaults λ_conf = 0.1, λ_ord = 0.5. With `soft_targets` (default recipe) a Home Depot pair's target is
  the raters' mean grade spread over its two nearest grades, mapped so that the label thresholds (1.67,
  2.5) fall on the grade midpoints: the fine-grained degree the hard label throws away.
- **DASA** (`training/ood.py`, `training/selection.py`): Mahalanobis (class means, shared covariance shrunk
  toward a scaled identity, α = 0.1) and kNN (k = 10, L2-normalised features, FAISS exact search) on the
  head-input features of the frozen backbone, fitted on Home Depot train features, z-normalised on Home
  Depot val features and averaged; the pool pairs with the highest combined score are labelled (their
  held-back labels are revealed) up to the budget, under a per-query cap. The random control draws the
  same budget under the same cap.
- **Multi-stage**: stage 1 linear probe (L-BFGS logistic regression on cached features, l2 picked on val),
  stage 2 LoRA from the probed head (default: r = 32 on all attention and MLP projections of the last 2
  of the 12 decoder layers kept, `num_layers`, of the base's 30; the 10 layers below are frozen, run once
  per pair and cached, `finetune.cache_trunk`), stage 3 WiSE interpolation of adapter delta and head
  between stage 1 and stage 2, coefficient picked on ID + OOD val macro-F1, then temperature scaling (Guo
  et al. 2017): one temperature fitted on ID + OOD val by NLL and folded into the head, which changes
  confidence and never a prediction.
- **Foreign items** (`finetune.foreign_per_query`, `training/ranking.py`): per training query (and per DASA
  query), items of other queries as extra `irrelevant` pairs, the distribution of the candidate-set test.
- **Candidate-set ranking** (`training/ranking.py`): each test query's judged items plus 20 items of other
  queries of the same test set (seeded, the same draw for every row), counted as irrelevant; NDCG@10 with
  the judged grade as gain (Home Depot: raw mean grade − 1) and ties broken against the model; the
  inversion rate is the share of (judged `strong`, foreign) pairs of a query where the foreign item scores
  higher (ties count ½).
"""


# The issue's quality targets on the test sets: (split, metric, bound, sense), for the targets table
# and the budget curve.
QUALITY_TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("id", "rmse_hd", 0.48, "≤"),
    ("id", "qwk", 0.45, "≥"),
    ("id", "macro_f1", 0.52, "≥"),
    ("ood", "macro_f1", 0.50, "≥"),
    ("ood", "qwk", 0.45, "≥"),
    ("id", "inversion_rate", 0.02, "≤"),
    ("ood", "inversion_rate", 0.02, "≤"),
)
METRIC_NAMES = {
    "rmse_hd": "RMSE of the expected grade",
    "qwk": "kappa",
    "macro_f1": "macro-F1",
    "inversion_rate": "inversion rate",
}


def _meets(value: float, bound: float, sense: str) -> bool:
    return value <= bound if sense == "≤" else value >= bound


def _mean(rows: list[dict[str, Any]], variant: str, split: str, metric: str) -> float | None:
    vals = [
        r["summary"][split][metric]
        for r in rows
        if r["variant"] == variant and (r["summary"].get(split) or {}).get(metric) is not None
    ]
    return sum(vals) / len(vals) if vals else None


def targets_section(rows: list[dict[str, Any]], names: dict[str, str]) -> list[str]:
    """The issue's targets, each computed from the table's rows (means over seeds) and marked met or not."""
    sft, darl = names.get("sft", "sft"), names.get("darl", "full-darl")
    baselines = [b for b in (names.get("baseline"), names.get("lexical")) if b]
    keys = ("macro_f1", "ece", "qwk", "rmse_hd", "inversion_rate")
    m = {(v, sp, k): _mean(rows, v, sp, k) for v in (sft, darl, *baselines) for sp in ("id", "ood") for k in keys}
    checks: list[tuple[str, float | None, str, bool | None]] = []

    def add(what: str, value: float | None, target: str, ok: Any) -> None:
        checks.append((what, value, target, None if value is None else bool(ok(value))))

    def gap(other: str, split: str, key: str = "macro_f1", scale: float = 100.0) -> float | None:
        """``key`` of full DaRL minus ``other``'s on ``split`` (None while either is missing)."""
        a, b = m[(darl, split, key)], m[(other, split, key)]
        return None if a is None or b is None else scale * (a - b)

    for sp, key, bound, sense in QUALITY_TARGETS:
        add(
            f"{sp.upper()} {METRIC_NAMES[key]}, {darl}",
            m[(darl, sp, key)],
            f"{sense} {bound:.2f}",
            lambda v, b=bound, s=sense: _meets(v, b, s),
        )
    for base in baselines:
        for sp in ("id", "ood"):
            add(f"{sp.upper()} macro-F1, {darl} − {base} (points)", gap(base, sp), "≥ +3", lambda v: v >= 3)
            inv = gap(base, sp, "inversion_rate", 1.0)
            add(f"{sp.upper()} inversion rate, {darl} − {base}", inv, "< 0", lambda v: v < 0)
    add(f"OOD macro-F1, {darl} − {sft} (points)", gap(sft, "ood"), "≥ +5", lambda v: v >= 5)
    add(f"ID macro-F1, {darl} − {sft} (points)", gap(sft, "id"), "≥ −0.5", lambda v: v >= -0.5)
    add(f"ID ECE, {darl}", m[(darl, "id", "ece")], "≤ 0.05", lambda v: v <= 0.05)
    add(f"OOD ECE, {darl}", m[(darl, "ood", "ece")], "≤ 0.08", lambda v: v <= 0.08)
    lines = [
        "### Targets",
        "",
        "Means over each variant's seeds, from the rows above.",
        "",
        "| target | measured | wanted | met |",
        "|---|---|---|---|",
    ]
    for what, value, target, ok in checks:
        shown = "–" if value is None else f"{value:+.1f}" if "points" in what else f"{value:.3f}"
        lines.append(f"| {what} | {shown} | {target} | {'–' if ok is None else 'yes' if ok else 'no'} |")
    return [*lines, ""]


def budget_section(rows: list[dict[str, Any]], variants: list[str], out_dir: Path | None = None) -> list[str]:
    """The budget curve: test metrics of ``variants`` (means over seeds) against the stage-2 pairs each saw,
    and where a straight line in log(pairs) through them would reach each target (drawn into ``out_dir``)."""
    from training.curves import line_in_log_pairs, plot_budget_curve

    points: dict[str, tuple[float, dict[str, dict]]] = {}
    seconds: dict[str, float | None] = {}
    for v in variants:
        runs = [r["summary"] for r in rows if r["variant"] == v and (r["summary"].get("stage2") or {}).get("curve")]
        if runs:
            keys = ("macro_f1", "qwk", "rmse_hd", "inversion_rate")
            metrics = {sp: {k: _mean(rows, v, sp, k) for k in keys} for sp in ("id", "ood")}
            points[v] = (runs[0]["stage2"]["curve"][-1]["pairs_seen"], metrics)
            secs = [t for s in runs if (t := (s.get("timings_s") or {}).get("stage2_finetune")) is not None]
            seconds[v] = sum(secs) / len(secs) if secs else None
    if len(points) < 2:
        return []
    png = plot_budget_curve(points, QUALITY_TARGETS, out_dir / "budget-curve.png") if out_dir else None
    lines = [
        "### Budget curve",
        "",
        "The runs named under `budget_curve` in the spec: test metrics (means over seeds) against the stage-2 "
        "training pairs each saw (distinct pairs × epochs, foreign and DASA pairs included). The fit is a "
        "least-squares line of each metric against log10(pairs seen) through these points and the pairs at "
        "which that line would reach the target: an extrapolation of this recipe, not a measurement.",
        "",
        *([f"![budget curve]({png.name})", ""] if png else []),
        "| run | pairs seen | stage-2 s | ID macro-F1 | ID kappa | ID RMSE | ID inversion | OOD macro-F1 | "
        "OOD kappa | OOD inversion |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, (pairs, m) in sorted(points.items(), key=lambda kv: kv[1][0]):
        cells = [m["id"][k] for k in ("macro_f1", "qwk", "rmse_hd", "inversion_rate")]
        cells += [m["ood"][k] for k in ("macro_f1", "qwk", "inversion_rate")]
        secs = "–" if seconds[v] is None else f"{seconds[v]:.0f}"
        lines.append(f"| {v} | {pairs} | {secs} | " + " | ".join(_fmt(c) for c in cells) + " |")
    most = max(p for p, _ in points.values())
    lines += ["", "| target | change per ×10 pairs | pairs where the line reaches it | × the largest run |"]
    lines.append("|---|---|---|---|")
    for sp, key, bound, sense in QUALITY_TARGETS:
        pts = [(p, m[sp][key]) for p, m in points.values() if m[sp][key] is not None]
        if len(pts) < 2:
            continue
        slope, reach = line_in_log_pairs(pts, bound, sense)
        where = "never (flat or moving away)" if reach is None else f"{reach:,.0f}"
        times = "–" if reach is None else f"{reach / most:,.1f}"
        lines.append(f"| {sp.upper()} {METRIC_NAMES[key]} {sense} {bound:.2f} | {slope:+.3f} | {where} | {times} |")
    return [*lines, ""]


def results_markdown(
    rows: list[dict[str, Any]],
    spec_path: Path,
    artifact_dir: Path | None = None,
    pending: list[str] | None = None,
    target_names: dict[str, str] | None = None,
    notes: str | None = None,
    out_dir: Path | None = None,
    budget_variants: list[str] | None = None,
) -> str:
    """The page: the default artifact (and its learning curve, drawn into ``out_dir``), the rows, the targets."""
    lines = ["# Results", ""]
    if artifact_dir is not None and (artifact_dir / "manifest.json").is_file():
        lines += artifact_section(artifact_dir, out_dir)
    lines += [
        "## Rows: the default recipe, plain SFT, the baselines and the DaRL ablations",
        "",
        f"Generated by `darl experiment --config {spec_path}` on "
        f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
        "ID = Home Depot `test`, OOD = CrowdFlower `test` (sizes in the `n` columns). "
        "Every number below comes from the run named in its row "
        "(its summary in the spec's `summaries_dir`, tracked in git).",
        "",
        "| variant | seed | item text | n ID | n OOD | "
        + " | ".join(f"ID {c}" for c in COLUMNS)
        + " | "
        + " | ".join(f"OOD {c}" for c in COLUMNS if c != "rmse_hd")
        + " | wall s | machine |",
        "|---" * (6 + len(COLUMNS) * 2 - 1 + 1) + "|",
    ]
    for r in rows:
        s = r["summary"]
        i, o = s.get("id") or {}, s.get("ood") or {}
        lines.append(
            f"| {r['variant']} | {r['seed']} | {_item_text(r)} | {i.get('n', '–')} | {o.get('n', '–')} | "
            + " | ".join(_fmt(i.get(c)) for c in COLUMNS)
            + " | "
            + " | ".join(_fmt(o.get(c)) for c in COLUMNS if c != "rmse_hd")
            + " | "
            + f"{(s.get('timings_s') or {}).get('total', '–')} | {_machine(s)} |"
        )
    if pending:
        lines += ["", "Not run yet (no summary): " + ", ".join(f"`{p}`" for p in pending) + "."]
    lines += ["", *targets_section(rows, target_names or {})]
    lines += budget_section(rows, budget_variants or [], out_dir)
    if notes:
        lines += ["### Findings", "", notes.strip(), ""]
    lines += ["Variant definitions (overrides of the base config):", ""]
    seen: set[str] = set()
    for r in rows:
        if r["variant"] not in seen:
            seen.add(r["variant"])
            lines.append(f"- **{r['variant']}**: `{json.dumps(r['overrides'], sort_keys=True)}`")
    lines += ["", METHOD_NOTES]
    return "\n".join(lines) + "\n"


def run_experiments(
    spec_path: Path, out: Path, only: list[str] | None = None, overrides: dict[str, Any] | None = None, run: bool = True
) -> list[dict[str, Any]]:
    """Run every variant × seed of ``spec_path`` and write the table to ``out``.

    ``only``: run just these variants (finished runs of the others stay in the table);
    ``run=False``: run nothing, rewrite the table from the finished runs.
    """
    import yaml

    spec_path = Path(spec_path)
    spec = yaml.safe_load(spec_path.read_text())
    root = find_root(spec_path.resolve().parent)
    base = root / spec["base_config"]
    runs_dir = root / spec.get("runs_dir", "runs/experiments")
    summaries_dir = root / spec["summaries_dir"] if spec.get("summaries_dir") else None
    common = deep_update(spec.get("common") or {}, overrides or {})
    out = Path(out) if Path(out).is_absolute() else root / out
    artifact = root / spec["artifact"] if spec.get("artifact") else None
    # Hand-written reading of the table (it adds no numbers of its own), kept next to the spec.
    notes = (root / spec["notes"]).read_text() if spec.get("notes") and (root / spec["notes"]).is_file() else None
    all_runs = [f"{v['name']}-s{s}" for v in spec["variants"] for s in v.get("seeds", [spec.get("seed", 13)])]
    rows = []
    for v in spec["variants"]:
        over = deep_update(common, v.get("set") or {})
        for seed in v.get("seeds", [spec.get("seed", 13)]):
            done = summary_path(runs_dir, v["name"], seed, summaries_dir)
            if not run or (only and v["name"] not in only):
                if done.is_file():  # keep finished runs of other variants in the table
                    rows.append(
                        {
                            "variant": v["name"],
                            "seed": seed,
                            "summary": json.loads(done.read_text()),
                            "overrides": v.get("set") or {},
                        }
                    )
                continue
            log.info("experiment %s seed %d", v["name"], seed)
            summary = run_variant(base, v["name"], seed, over, runs_dir, summaries_dir)
            rows.append({"variant": v["name"], "seed": seed, "summary": summary, "overrides": v.get("set") or {}})
            # after every run: a partial table survives a stop
            _write(out, rows, spec_path, artifact, all_runs, spec, notes)
    _write(out, rows, spec_path, artifact, all_runs, spec, notes)
    return rows


def _machine(summary: dict[str, Any]) -> str:
    """The run's machine and, where its summary recorded it, the float type ``auto`` resolved to there."""
    precision = summary.get("precision")
    return f"{summary.get('machine', '–')}" + (f", {precision}" if precision else "")


def _item_text(row: dict[str, Any]) -> str:
    """What of an item the row's model reads: the prompt template of an LLM row (runs before the
    summary recorded it used v1), the title and description for the baselines."""
    kind = row["overrides"].get("kind", "darl")
    if kind == "prior":
        return "–"
    if kind != "darl":
        return "title+description"
    from relevance_core.prompt import TEMPLATES

    template = row["summary"].get("prompt_template", "darl-prompt-v1")
    read = "title+description" if TEMPLATES[template] else "title"
    return f"{read} ({template.removeprefix('darl-prompt-')})"


def _write(
    out: Path,
    rows: list[dict[str, Any]],
    spec_path: Path,
    artifact: Path | None,
    all_runs: list[str],
    spec: dict[str, Any],
    notes: str | None = None,
) -> None:
    done = {f"{r['variant']}-s{r['seed']}" for r in rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    pending = [r for r in all_runs if r not in done]
    page = results_markdown(
        rows, spec_path, artifact, pending, spec.get("targets"), notes, out.parent, spec.get("budget_curve")
    )
    out.write_text(page)
    log.info("wrote %s (%d rows)", out, len(rows))
