"""Temperature scaling (Guo et al. 2017), folded into the classification head.

One scalar T divides the logits; fitted by minimising validation NLL. Because the head
is linear, dividing its weight (and bias) by T is the same as dividing the logits, so
the served artifact needs nothing new. Argmax, hence accuracy and macro-F1, is unchanged.
``calibrate`` is the step of ``darl train`` after the interpolation coefficient.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GRID = np.exp(np.linspace(np.log(0.25), np.log(8.0), 161))


def nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``softmax(log_probs / T)``; log-probabilities equal logits up to a per-row constant."""
    z = np.asarray(log_probs, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray = GRID) -> float:
    """The T on ``grid`` with the lowest validation NLL (a 1-D convex problem; a fine grid is exact enough)."""
    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    labels = np.asarray(labels, dtype=np.int64)
    return float(min(grid, key=lambda t: nll(log_probs, labels, float(t))))


def fold_temperature(head: Any, temperature: float) -> None:
    """Divide the head's weight (and bias) by ``temperature`` in place."""
    import torch

    with torch.no_grad():
        head.weight.div_(temperature)
        if getattr(head, "bias", None) is not None:
            head.bias.div_(temperature)


def calibrate(
    head: Any, probs_by_domain: dict[str, np.ndarray], labels_by_domain: dict[str, np.ndarray], n_bins: int = 15
) -> dict[str, Any]:
    """Fit one temperature on ID+OOD val together, fold it into ``head`` and report val ECE before/after.

    ``probs_by_domain`` holds the val probabilities of the model as it stands, for the domains
    (``id``, ``ood``) that have val pairs; ``labels_by_domain`` their labels, in the same order.
    """
    from relevance_core.postprocess import probs_from_logits
    from training.metrics import compute_metrics

    doms = [d for d in ("id", "ood") if d in probs_by_domain]
    t = fit_temperature(
        np.concatenate([probs_by_domain[d] for d in doms]), np.concatenate([labels_by_domain[d] for d in doms])
    )
    fold_temperature(head, t)
    report: dict[str, Any] = {"temperature": round(t, 4)}
    for d in doms:
        scaled = probs_from_logits(np.log(np.clip(probs_by_domain[d], 1e-12, 1.0)) / t)
        report[f"val_ece_{d}"] = {
            "before": compute_metrics(probs_by_domain[d], labels_by_domain[d], n_bins=n_bins)["ece"],
            "after": compute_metrics(scaled, labels_by_domain[d], n_bins=n_bins)["ece"],
        }
    return report
