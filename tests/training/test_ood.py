"""Mahalanobis and kNN OOD scores against plain NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from training.ood import KNN, DasaScorer, Mahalanobis, auroc, l2_normalize


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 6)) + np.repeat(np.eye(3, 6) * 3, 40, axis=0)
    y = np.repeat(np.arange(3), 40)
    q = rng.normal(size=(15, 6)) * 2
    return x, y, q


def test_mahalanobis_matches_numpy() -> None:
    x, y, q = _data()
    alpha = 0.2
    maha = Mahalanobis.fit(x, y, shrinkage=alpha)
    mus = np.stack([x[y == c].mean(0) for c in range(3)])
    cen = x - mus[y]
    cov = cen.T @ cen / len(x)
    cov = (1 - alpha) * cov + alpha * np.trace(cov) / 6 * np.eye(6)
    inv = np.linalg.inv(cov)
    ref = np.array([min((v - m) @ inv @ (v - m) for m in mus) for v in q])
    np.testing.assert_allclose(maha.score(q), ref, rtol=1e-9)


def test_knn_matches_bruteforce() -> None:
    x, _, q = _data(1)
    k = 5
    knn = KNN.fit(x, k=k)
    xn, qn = l2_normalize(x).astype(np.float64), l2_normalize(q).astype(np.float64)
    d = np.sqrt(((qn[:, None, :] - xn[None, :, :]) ** 2).sum(-1))
    ref = np.sort(d, axis=1)[:, k - 1]
    np.testing.assert_allclose(knn.score(q), ref, rtol=1e-4, atol=1e-5)


def test_combined_score_and_auroc() -> None:
    x, y, _ = _data(2)
    rng = np.random.default_rng(3)
    ref = x[::3] + rng.normal(scale=0.1, size=x[::3].shape)
    far = rng.normal(size=(30, 6)) * 0.5 + 10.0
    scorer = DasaScorer.fit(x, y, ref, shrinkage=0.1, k=5, maha_weight=1.0, knn_weight=1.0)
    s = scorer.scores(np.vstack([ref[:30], far]))
    expected = (scorer.maha_norm(s["mahalanobis"]) + scorer.knn_norm(s["knn"])) / 2
    np.testing.assert_allclose(s["combined"], expected)
    is_ood = np.r_[np.zeros(30), np.ones(30)]
    assert auroc(s["combined"], is_ood) == pytest.approx(1.0)
    assert auroc(s["combined"], np.zeros(60)) is None
