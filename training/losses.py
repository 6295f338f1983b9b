"""The DaRL loss: cross-entropy + over-confidence calibration + ordinal term.

``L = CE_ε(z, y) + λ_conf · Σ_k p_k log p_k + λ_ord · R_ord(p, y)``

* ``CE_ε``: cross-entropy with optional label smoothing ε (Szegedy et al. 2016).
* Calibration: the *confidence penalty* of Pereyra et al. 2017 ("Regularizing
  Neural Networks by Penalizing Confident Output Distributions"): minus the
  entropy of the predicted distribution, which pushes against over-confident
  outputs (mean over the batch).
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
) -> tuple[Any, dict[str, float]]:
    """``(loss, parts)``: the scalar loss and each term's value for logging.

    ``class_weights`` (optional, ``[K]``) reweights the CE term, e.g. inverse class
    frequency so the rare ``irrelevant`` grade counts for macro-F1.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    k = logits.shape[-1]
    ce = F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)
    log_p = F.log_softmax(logits, dim=-1)
    p = log_p.exp()
    neg_entropy = (p * log_p).sum(-1).mean()
    if ordinal_form == "expected_grade_mse":
        grades = torch.arange(k, dtype=p.dtype, device=p.device)
        ordinal = (((p @ grades) - labels.to(p.dtype)) / (k - 1)).pow(2).mean()
    elif ordinal_form == "emd2":
        cdf_p = p.cumsum(-1)
        cdf_y = F.one_hot(labels, k).to(p.dtype).cumsum(-1)
        ordinal = (cdf_p - cdf_y).pow(2).sum(-1).mean()
    else:
        raise ValueError(f"unknown ordinal_form {ordinal_form!r}")
    loss = ce + confidence_penalty * neg_entropy + ordinal_weight * ordinal
    parts = {"ce": ce.item(), "neg_entropy": neg_entropy.item(), "ordinal": ordinal.item()}
    return loss, parts


def balanced_class_weights(labels: Any, num_labels: int) -> Any:
    """Inverse-frequency weights ``n / (K · n_k)`` (scikit-learn's "balanced")."""
    import torch

    y = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(y, minlength=num_labels).float().clamp_min(1)
    return len(y) / (num_labels * counts)


def loss_from_config(logits: Any, labels: Any, cfg: Any, class_weights: Any = None) -> tuple[Any, dict[str, float]]:
    """``darl_loss`` with the weights of a ``LossConfig``."""
    return darl_loss(
        logits,
        labels,
        label_smoothing=cfg.label_smoothing,
        confidence_penalty=cfg.confidence_penalty,
        ordinal_weight=cfg.ordinal_weight,
        ordinal_form=cfg.ordinal_form,
        class_weights=class_weights,
    )
