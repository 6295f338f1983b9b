"""The learning curve of a run: validation quality against training pairs seen and wall time.

``darl train`` records it during stage 2 (``eval.curve_points``, ``pipeline._curve_hook``) in the
run summary and the artifact manifest (``metrics.stage2.curve``); ``darl experiment`` draws it into
docs/ next to the results table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANELS = (("macro_f1", "val macro-F1"), ("qwk", "val quadratic kappa"), ("inversion_rate", "val inversion rate"))


def plot_learning_curve(curve: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Three panels (macro-F1, kappa, inversion rate; ID and OOD) against pairs seen, wall time on top."""
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["pairs_seen"] for r in curve]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 3.4))
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for dom, style in (("id", "o-"), ("ood", "s--")):
            ys = [(r.get(dom) or {}).get(key) for r in curve]
            if any(y is not None for y in ys):
                ax.plot(xs, [float("nan") if y is None else y for y in ys], style, label=f"{dom.upper()}")
        ax.set_xlabel("training pairs seen")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        top = ax.secondary_xaxis("top", functions=(_interp(xs, curve), _interp_inv(xs, curve)))
        top.set_xlabel("stage-2 wall time (s)", fontsize=8)
    axes[0].legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _interp(xs: list[float], curve: list[dict[str, Any]]) -> Any:
    import numpy as np

    ws = [r["wall_s"] for r in curve]
    return lambda x: np.interp(x, xs, ws)


def _interp_inv(xs: list[float], curve: list[dict[str, Any]]) -> Any:
    import numpy as np

    ws = [r["wall_s"] for r in curve]
    return lambda w: np.interp(w, ws, xs)


BUDGET_PANELS = (
    ("macro_f1", "test macro-F1"),
    ("qwk", "test kappa"),
    ("rmse_hd", "test RMSE"),
    ("inversion_rate", "test inversion rate"),
)


def line_in_log_pairs(points: list[tuple[float, float]], bound: float, sense: str) -> tuple[float, float | None]:
    """Least-squares line of a test metric against log10(pairs seen): its change per tenfold pairs, and the
    pairs at which it reaches ``bound`` (None where the line moves away from the bound). An extrapolation."""
    import numpy as np

    x = np.log10([p for p, _ in points])
    slope, intercept = np.polyfit(x, [v for _, v in points], 1)
    toward = slope > 1e-9 if sense == "≥" else slope < -1e-9  # a flat line reaches nothing
    return float(slope), float(10 ** ((bound - intercept) / slope)) if toward else None


def plot_budget_curve(
    points: dict[str, tuple[float, dict[str, dict]]], targets: tuple[tuple[str, str, float, str], ...], path: Path
) -> Path:
    """Test metrics (ID solid, OOD dashed) of each run against its pairs seen (log axis), targets dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(points.items(), key=lambda kv: kv[1][0])
    xs = [pairs for _, (pairs, _) in ordered]
    fig, axes = plt.subplots(1, len(BUDGET_PANELS), figsize=(14, 3.4))
    for ax, (key, label) in zip(axes, BUDGET_PANELS, strict=True):
        for dom, style in (("id", "o-"), ("ood", "s--")):
            ys = [m.get(dom, {}).get(key) for _, (_, m) in ordered]
            if any(y is not None for y in ys):
                ax.plot(xs, [float("nan") if y is None else y for y in ys], style, label=dom.upper())
        for dom, metric, bound, _ in targets:
            if metric == key:
                ax.axhline(bound, ls=":", color="C0" if dom == "id" else "C1", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x / 1000:.0f}k" for x in xs])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("stage-2 training pairs seen")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("runs of the default recipe at several budgets (targets dotted)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
