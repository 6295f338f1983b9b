"""The DaRL loss: cross-entropy + over-confidence calibration + ordinal term.

``L = CE_ε(z, y) + λ_conf · Σ_k p_k log p_k + λ_ord · R_ord(p, y)``

* ``CE_ε``: cross-entropy with optional label smoothing ε (Szegedy et al. 2016).
* Calibration: the *confidence penalty* of Pereyra et al. 2017 ("Regularizing
  Neural Networks by Penalizing Confident Output Distributions"): minus the
  entropy of the predicted distribution, which pushes against over-confident
  outputs (mean over the batch).
* Pairwise (optional, ``pairwise_weight``): RankNet's logistic loss (Burges et al. 2005)
  over the pairs of one query's items in a batch with different target grades, on the
  expected grade the service ranks by: ``softplus(-σ (E_i[g] − E_j[g]))`` for ``y_i > y_j``.
* Ordinal (uses irrelevant < weak < strong):
  - ``expected_grade_mse``: ``((E_p[g] − y) / (K−1))²`` with grades ``g = 0..K−1``;
    the same expected grade the service exposes as its ranking score.
  - ``emd2``: squared Earth Mover's Distance between predicted and one-hot CDFs
    (Hou et al. 2016, "Squared EMD loss for ordered-class classification"),
    ``Σ_k (CDF_p(k) − CDF_y(k))²``: mass far from the true grade costs more.

Weights and forms are configuration (``LossConfig``); all terms are means over
the batch, so gradient accumulation is a plain average.
"""

from __future__ import annotations

from typing import Any


def darl_loss(
    logits: Any,
    labels: Any,
    label_smoothing: float = 0.0,
    confidence_penalty: float = 0.0,
    ordinal_weight: float = 0.0,
    ordinal_form: str = "expected_grade_mse",
    class_weights: Any = None,
    targets: Any = None,
) -> tuple[Any, dict[str, float]]:
    """``(loss, parts)``: the scalar loss and each term's value for logging.

    ``class_weights`` (optional, ``[K]``) reweights the CE term, e.g. inverse class
    frequency so the rare ``irrelevant`` grade counts for macro-F1.
    ``targets`` (optional, ``[B, K]`` rows summing to 1): soft targets in place of the
    one-hot labels (``soft_targets``: the raters' mean grade spread over its two nearest
    grades); CE and the ordinal term then use them, class weights weigh by ``labels``.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    k = logits.shape[-1]
    log_p = F.log_softmax(logits, dim=-1)
    p = log_p.exp()
    if targets is None:
        ce = F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)
        target = F.one_hot(labels, k).to(p.dtype)
    else:
        target = targets.to(p.dtype)
        smoothed = target * (1 - label_smoothing) + label_smoothing / k
        per = -(smoothed * log_p).sum(-1)
        w = class_weights[labels] if class_weights is not None else torch.ones_like(per)
        ce = (per * w).sum() / w.sum()
    neg_entropy = (p * log_p).sum(-1).mean()
    if ordinal_form == "expected_grade_mse":
        grades = torch.arange(k, dtype=p.dtype, device=p.device)
        ordinal = (((p - target) @ grades) / (k - 1)).pow(2).mean()
    elif ordinal_form == "emd2":
        ordinal = (p.cumsum(-1) - target.cumsum(-1)).pow(2).sum(-1).mean()
    else:
        raise ValueError(f"unknown ordinal_form {ordinal_form!r}")
    loss = ce + confidence_penalty * neg_entropy + ordinal_weight * ordinal
    parts = {"ce": ce.item(), "neg_entropy": neg_entropy.item(), "ordinal": ordinal.item()}
    return loss, parts


def pairwise_loss(logits: Any, grades: Any, groups: Any, scale: float = 5.0) -> Any:
    """Mean RankNet loss over the pairs ``(i, j)`` of the same group with ``grades[i] > grades[j]``
    (0 when the batch has none): the item graded higher should get the higher expected grade."""
    import torch

    p = torch.softmax(logits.float(), dim=-1)
    score = p @ torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)
    grades = grades.to(p.dtype)
    mask = (groups[:, None] == groups[None, :]) & (grades[:, None] > grades[None, :] + 1e-6)
    if not bool(mask.any()):
        return score.sum() * 0.0
    diff = score[:, None] - score[None, :]
    return torch.nn.functional.softplus(-scale * diff)[mask].mean()


def balanced_class_weights(labels: Any, num_labels: int) -> Any:
    """Inverse-frequency weights ``n / (K · n_k)`` (scikit-learn's "balanced")."""
    import torch

    y = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(y, minlength=num_labels).float().clamp_min(1)
    return len(y) / (num_labels * counts)


def loss_from_config(
    logits: Any, labels: Any, cfg: Any, class_weights: Any = None, targets: Any = None
) -> tuple[Any, dict[str, float]]:
    """``darl_loss`` with the weights of a ``LossConfig``."""
    return darl_loss(
        logits,
        labels,
        label_smoothing=cfg.label_smoothing,
        confidence_penalty=cfg.confidence_penalty,
        ordinal_weight=cfg.ordinal_weight,
        ordinal_form=cfg.ordinal_form,
        class_weights=class_weights,
        targets=targets,
    )


# Home Depot's label thresholds on the raters' mean grade (shared/data/README.md): ≤ 1.67 irrelevant,
# ≥ 2.5 strong. Soft targets map the mean grade piecewise-linearly onto 0..2 so that these thresholds
# land on 0.5 and 1.5: the soft target's argmax is then always the hard label.
_KNOTS = ((1.0, 0.0), (5 / 3, 0.5), (2.5, 1.5), (3.0, 2.0))


def soft_target(label: int, raw: float | None, source: str, num_labels: int = 3) -> list[float]:
    """Target distribution of one pair: Home Depot's mean grade spread over its two nearest grades,
    one-hot elsewhere (CrowdFlower medians, foreign items, users' labels)."""
    out = [0.0] * num_labels
    if raw is None or source != "homedepot":
        out[label] = 1.0
        return out
    import numpy as np

    xs, ys = zip(*_KNOTS, strict=True)
    g = float(np.interp(raw, xs, ys))
    lo = min(int(g), num_labels - 2)
    out[lo], out[lo + 1] = lo + 1 - g, g - lo
    return out
