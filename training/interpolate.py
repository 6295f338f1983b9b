"""Stage 3: WiSE-FT-style weight interpolation between stage 1 and stage 2.

``θ(c) = (1−c)·θ₁ + c·θ₂`` over the trainable weights (Wortsman et al. 2022).
For LoRA, stage 1 is the frozen backbone (adapter = zero delta, ``B = 0``) with
the probed head. Interpolating the *delta* ``B·A`` linearly is done by keeping
``A = A₂`` and interpolating ``B`` (so ``B(c) = c·B₂``): the merged weights are
then exactly ``W₀ + c·ΔW₂``, the WiSE interpolation of the merged models.
The coefficient is picked on a grid by an objective on ID + OOD validation data
(``run_interpolation``, stage 3 of ``darl train``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from training.config import InterpolateConfig
    from training.data import Pair

# (pairs, progress description, trunk-cache name) -> class probabilities of the model as it stands
Predict = Callable[[list["Pair"], str, str], np.ndarray]


def interpolate_state(s1: dict[str, Any], s2: dict[str, Any], coef: float) -> dict[str, Any]:
    """Weights at ``coef`` (0 → stage 1, 1 → stage 2); LoRA ``A`` matrices come from stage 2."""
    if s1.keys() != s2.keys():
        raise KeyError("the two endpoints do not have the same trainable weights")
    out = {}
    for name, w2 in s2.items():
        if "lora_A" in name or coef == 1.0:
            out[name] = w2.clone()
        elif coef == 0.0:
            out[name] = s1[name].clone()
        else:
            out[name] = (1.0 - coef) * s1[name] + coef * w2
    return out


def pick_coefficient(
    grid: Sequence[float],
    evaluate: Callable[[float], tuple[float, dict[str, Any]]],
) -> tuple[float, list[dict[str, Any]]]:
    """Evaluate every grid point; return the best coefficient (first on ties) and the curve."""
    curve = []
    for c in grid:
        value, details = evaluate(float(c))
        curve.append({"coef": float(c), "objective": value, **details})
    if any(math.isnan(r["objective"]) for r in curve):
        raise ValueError(f"interpolation objective is NaN: {curve}")
    best = max(curve, key=lambda r: r["objective"])  # max keeps the first of equal values
    return best["coef"], curve


@dataclass
class Interpolation:
    """Stage 3's outcome: the chosen coefficient, the grid curve and the val probabilities at ``coef``."""

    coef: float
    curve: list[dict[str, Any]]
    objective: str | None = None  # None: interpolation disabled, stage 2 kept as it is
    val_probs: dict[str, np.ndarray] = field(default_factory=dict)  # by domain ("id", "ood"), at ``coef``

    def report(self) -> dict[str, Any]:
        """The summary.json record (no ``objective`` key when interpolation is disabled)."""
        if self.objective is None:
            return {"coef": self.coef, "curve": self.curve}
        return {"coef": self.coef, "objective": self.objective, "curve": self.curve}


def run_interpolation(
    model: Any,
    s1: dict[str, Any],
    s2: dict[str, Any],
    predict: Predict,
    val: Mapping[str, list[Pair]],
    ic: InterpolateConfig,
    ece_bins: int,
    stage1_feats: Mapping[str, np.ndarray] | None = None,
) -> Interpolation:
    """Evaluate the grid on ID+OOD val, load the best coefficient's weights into ``model`` and return it.

    ``val`` maps a domain (``id``, ``ood``) to its val pairs (empty ones are skipped). ``stage1_feats``:
    the cached val features by domain when stage 1 is the frozen backbone plus the probed head (LoRA,
    no head bias); then c = 0 scores them with the stage-1 head instead of a forward pass.
    """
    from relevance_core.postprocess import probs_from_logits
    from training.evaluate import metrics_for
    from training.metrics import objective
    from training.model import load_trainable_state
    from training.probe import head_logits

    head_key = next(k for k in s1 if k.endswith("score.weight"))
    has_bias = any(k.endswith("score.bias") for k in s1)
    val_probs: dict[float, dict[str, np.ndarray]] = {}

    def evaluate(c: float) -> tuple[float, dict]:
        load_trainable_state(model, interpolate_state(s1, s2, c))
        m = {}
        for name, pairs in val.items():
            if pairs and c == 0.0 and stage1_feats is not None and not has_bias:
                # Stage 1 = frozen backbone + stage-1 head: its val logits are the cached features
                # times that head, no forward pass needed.
                probs = probs_from_logits(head_logits(stage1_feats[name], s1[head_key].float().numpy()))
            elif pairs:
                probs = predict(pairs, f"val c={c:g} {name}", f"val_{name}")
            else:
                continue
            val_probs.setdefault(c, {})[name] = probs
            full = metrics_for(pairs, probs, ece_bins)
            m[name] = {k: full[k] for k in ("accuracy", "macro_f1", "ece", "qwk")}
        return objective(ic.objective, m.get("id"), m.get("ood")), m

    best, curve = pick_coefficient(ic.grid, evaluate)
    load_trainable_state(model, interpolate_state(s1, s2, best))
    return Interpolation(best, curve, ic.objective, val_probs.get(best, {}))


def plot_curve(path: Path, curve: list[dict]) -> None:
    """Val macro-F1 (ID, OOD) and the objective over the grid, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = [r["coef"] for r in curve]
    for dom in ("id", "ood"):
        if all(dom in r for r in curve):
            ax.plot(xs, [r[dom]["macro_f1"] for r in curve], "o-", label=f"{dom} val macro-F1")
    ax.plot(xs, [r["objective"] for r in curve], "k--", label="objective")
    ax.set_xlabel("interpolation coefficient (0 = stage 1, 1 = stage 2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
