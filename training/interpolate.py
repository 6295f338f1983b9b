"""Stage 3: WiSE-FT-style weight interpolation between stage 1 and stage 2.

``θ(c) = (1−c)·θ₁ + c·θ₂`` over the trainable weights (Wortsman et al. 2022).
For LoRA, stage 1 is the frozen backbone (adapter = zero delta, ``B = 0``) with
the probed head. Interpolating the *delta* ``B·A`` linearly is done by keeping
``A = A₂`` and interpolating ``B`` (so ``B(c) = c·B₂``): the merged weights are
then exactly ``W₀ + c·ΔW₂``, the WiSE interpolation of the merged models.
The coefficient is picked on a grid by an objective on ID + OOD validation data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


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
