"""Evaluation metrics against scikit-learn and hand computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, ndcg_score

from training.metrics import compute_metrics, ece, ndcg_at_k, objective, reliability


def _preds(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, size=n)
    return probs, labels


def test_classification_metrics_match_sklearn() -> None:
    probs, labels = _preds()
    m = compute_metrics(probs, labels)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    per = f1_score(labels, pred, average=None)
    assert [m["f1_per_class"][k] for k in ("irrelevant", "weak", "strong")] == pytest.approx(per.tolist())
    assert m["qwk"] == pytest.approx(cohen_kappa_score(labels, pred, weights="quadratic"))
    assert np.asarray(m["confusion_matrix"]).sum() == len(labels)


def test_ece_hand_case() -> None:
    # Two bins used: conf 0.9 (both right) and conf 0.5 (one of two right).
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    labels = np.array([0, 1, 0, 1])
    # |1.0 - 0.9| * 0.5 + |0.5 - 0.5| * 0.5 = 0.05
    assert ece(probs, labels, 15) == pytest.approx(0.05)
    rel = reliability(probs, labels, 15)
    assert sum(rel["count"]) == 4 and len(rel["count"]) == 15


def test_ece_matches_reference_loop() -> None:
    probs, labels = _preds(500, 1)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    ref = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    assert ece(probs, labels) == pytest.approx(ref)


def test_ndcg_matches_sklearn_per_query() -> None:
    rng = np.random.default_rng(2)
    queries, gains, scores, per_query = [], [], [], []
    for q in range(12):
        n = int(rng.integers(2, 15))
        g = rng.integers(0, 3, size=n)
        g[0] = 2  # every query has a relevant item
        s = rng.normal(size=n)
        queries += [f"q{q}"] * n
        gains += g.tolist()
        scores += s.tolist()
        per_query.append(ndcg_score([g], [s], k=10))
    assert ndcg_at_k(queries, np.array(gains), np.array(scores), 10) == pytest.approx(np.mean(per_query))


def test_ndcg_skips_all_zero_queries_and_rmse_on_hd_only() -> None:
    assert ndcg_at_k(["a", "a"], np.array([0, 0]), np.array([0.1, 0.2])) is None
    probs = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    m = compute_metrics(
        probs,
        np.array([2, 0, 1]),
        queries=["a", "a", "b"],
        raw_relevance=[3.0, 1.5, 4.0],
        sources=["homedepot", "homedepot", "crowdflower"],
    )
    # HD rows: predicted 1+2=3 vs 3, 1+0=1 vs 1.5 → sqrt((0 + 0.25) / 2)
    assert m["rmse_hd"] == pytest.approx(np.sqrt(0.125))
    assert m["ndcg@10"] == pytest.approx(1.0)


def test_objective() -> None:
    a, b = {"macro_f1": 0.6, "accuracy": 0.7, "ece": 0.1}, {"macro_f1": 0.4, "accuracy": 0.5, "ece": 0.3}
    assert objective("macro_f1_mean", a, b) == pytest.approx(0.5)
    assert objective("macro_f1_ood", a, b) == pytest.approx(0.4)
    assert objective("neg_ece_mean", a, b) == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        objective("nope", a, b)
