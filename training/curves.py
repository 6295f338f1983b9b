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
