"""Evaluation metrics for 3-grade relevance predictions.

Classification metrics come from scikit-learn; ECE and per-query NDCG@10 are
small enough to define here (and are tested against references). Grades are
the label ids (irrelevant=0, weak=1, strong=2), which are also the NDCG gains.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from relevance_core.labels import LABELS, NUM_LABELS


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence, equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds conf in (edges[i], edges[i+1]]; conf == 0 cannot happen for a softmax.
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin confidence, accuracy and count, for reliability diagrams."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(1)
    correct = probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [], "lower": [], "upper": []}
    for b in range(n_bins):
        m = bins == b
        out["lower"].append(float(edges[b]))
        out["upper"].append(float(edges[b + 1]))
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
    return out


def dcg(gains: np.ndarray, k: int) -> float:
    g = np.asarray(gains, dtype=np.float64)[:k]
    return float((g / np.log2(np.arange(2, len(g) + 2))).sum())


def ndcg_at_k(queries: Sequence[str], gains: np.ndarray, scores: np.ndarray, k: int = 10) -> float | None:
    """Mean per-query NDCG@k with linear gains; queries whose gains are all 0 are skipped.

    Items are ranked by ``scores`` descending; ties keep input order (stable sort).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        groups[q].append(i)
    vals = []
    for idx in groups.values():
        g = np.asarray(gains, dtype=np.float64)[idx]
        ideal = dcg(np.sort(g)[::-1], k)
        if ideal == 0:
            continue
        order = np.argsort(-np.asarray(scores, dtype=np.float64)[idx], kind="stable")
        vals.append(dcg(g[order], k) / ideal)
    return float(np.mean(vals)) if vals else None


def expected_grade_ids(probs: np.ndarray) -> np.ndarray:
    """E[grade] on the 0..2 label-id scale."""
    return np.asarray(probs, dtype=np.float64) @ np.arange(NUM_LABELS, dtype=np.float64)


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    queries: Sequence[str] | None = None,
    raw_relevance: Sequence[float | None] | None = None,
    sources: Sequence[str] | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """All report metrics for one set of labelled predictions.

    RMSE is on Home Depot's 1–3 scale: ``1 + E[grade]`` against ``raw_relevance``,
    over the rows whose ``source`` is ``homedepot`` (None when there are none).
    """
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pred = probs.argmax(1)
    ids = list(range(NUM_LABELS))
    per_class = f1_score(labels, pred, labels=ids, average=None, zero_division=0)
    out: dict[str, Any] = {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=ids, average="macro", zero_division=0)),
        "f1_per_class": {LABELS[i]: float(v) for i, v in enumerate(per_class)},
        "ece": ece(probs, labels, n_bins),
        "qwk": float(cohen_kappa_score(labels, pred, labels=ids, weights="quadratic")),
        "confusion_matrix": confusion_matrix(labels, pred, labels=ids).tolist(),
        "ndcg@10": None,
        "rmse_hd": None,
    }
    grade = expected_grade_ids(probs)
    if queries is not None:
        out["ndcg@10"] = ndcg_at_k(queries, labels, grade, 10)
    if raw_relevance is not None:
        m = np.array(
            [
                r is not None and (sources is None or s == "homedepot")
                for r, s in zip(raw_relevance, sources or [None] * len(raw_relevance), strict=True)
            ]
        )
        if m.any():
            raw = np.array([r for r, keep in zip(raw_relevance, m, strict=True) if keep], dtype=np.float64)
            out["rmse_hd"] = float(np.sqrt(np.mean((1.0 + grade[m] - raw) ** 2)))
    return out


def objective(name: str, id_metrics: dict[str, Any], ood_metrics: dict[str, Any] | None) -> float:
    """Scalar to maximise when picking the interpolation coefficient."""

    def mean(key: str) -> float:
        vals = [m[key] for m in (id_metrics, ood_metrics) if m]
        return float(np.mean(vals))

    if name == "macro_f1_mean":
        return mean("macro_f1")
    if name == "macro_f1_id":
        return float(id_metrics["macro_f1"])
    if name == "macro_f1_ood":
        return float((ood_metrics or id_metrics)["macro_f1"])
    if name == "accuracy_mean":
        return mean("accuracy")
    if name == "neg_ece_mean":
        return -mean("ece")
    raise ValueError(f"unknown objective {name!r}")
