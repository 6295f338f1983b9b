"""Temperature scaling (Guo et al. 2017), folded into the classification head.

One scalar T divides the logits; fitted by minimising validation NLL. Because the head
is linear, dividing its weight (and bias) by T is the same as dividing the logits, so
the served artifact needs nothing new. Argmax, hence accuracy and macro-F1, is unchanged.
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
