"""OOD scores on head-input features: Mahalanobis and k-nearest-neighbour.

* Mahalanobis (Lee et al. 2018): class means and one shared covariance fitted on
  ID training features, shrunk toward a scaled identity
  ``Σ_α = (1−α)Σ + α·tr(Σ)/d·I`` so it is invertible with few samples; the score
  is the distance to the closest class mean, ``min_c (x−μ_c)ᵀ Σ_α⁻¹ (x−μ_c)``.
* kNN (Sun et al. 2022): L2-normalised features, the distance to the k-th
  nearest ID training feature, searched exactly with FAISS.

Higher = less covered by the training set. Scores are put on one scale by
z-normalising against held-out ID reference features before being combined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Mahalanobis:
    means: np.ndarray  # [C, d]
    precision: np.ndarray  # [d, d]

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray, shrinkage: float = 0.1) -> Mahalanobis:
        x = np.asarray(feats, dtype=np.float64)
        y = np.asarray(labels)
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(0) for c in classes])
        centered = x - means[np.searchsorted(classes, y)]
        cov = centered.T @ centered / len(x)
        d = cov.shape[0]
        cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
        return cls(means=means, precision=np.linalg.inv(cov))

    def score(self, feats: np.ndarray) -> np.ndarray:
        x = np.asarray(feats, dtype=np.float64)
        out = np.empty((len(x), len(self.means)))
        for c, mu in enumerate(self.means):
            diff = x - mu
            out[:, c] = ((diff @ self.precision) * diff).sum(1)
        return out.min(1)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class KNN:
    index: object
    k: int

    @classmethod
    def fit(cls, feats: np.ndarray, k: int = 10) -> KNN:
        import faiss

        train = np.ascontiguousarray(l2_normalize(feats))
        index = faiss.IndexFlatL2(train.shape[1])
        index.add(train)
        return cls(index=index, k=min(k, len(train)))

    def score(self, feats: np.ndarray) -> np.ndarray:
        """Euclidean distance to the k-th neighbour (FAISS returns squared L2)."""
        q = np.ascontiguousarray(l2_normalize(feats))
        dist2, _ = self.index.search(q, self.k)
        return np.sqrt(np.maximum(dist2[:, -1], 0.0)).astype(np.float64)


@dataclass
class ZNorm:
    """Standardise a score by its mean/std on ID reference data."""

    mean: float
    std: float

    @classmethod
    def fit(cls, ref_scores: np.ndarray) -> ZNorm:
        return cls(float(np.mean(ref_scores)), float(np.std(ref_scores)) or 1.0)

    def __call__(self, s: np.ndarray) -> np.ndarray:
        return (np.asarray(s) - self.mean) / self.std


@dataclass
class DasaScorer:
    """Both detectors, fitted on ID train features and normalised on ID reference ones."""

    maha: Mahalanobis
    knn: KNN
    maha_norm: ZNorm
    knn_norm: ZNorm
    maha_weight: float
    knn_weight: float

    @classmethod
    def fit(
        cls,
        train_feats: np.ndarray,
        train_labels: np.ndarray,
        ref_feats: np.ndarray,
        shrinkage: float = 0.1,
        k: int = 10,
        maha_weight: float = 0.5,
        knn_weight: float = 0.5,
    ) -> DasaScorer:
        maha = Mahalanobis.fit(train_feats, train_labels, shrinkage)
        knn = KNN.fit(train_feats, k)
        return cls(
            maha,
            knn,
            ZNorm.fit(maha.score(ref_feats)),
            ZNorm.fit(knn.score(ref_feats)),
            maha_weight,
            knn_weight,
        )

    def scores(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        """Raw, normalised and combined scores (higher = more OOD)."""
        m = self.maha.score(feats)
        k = self.knn.score(feats)
        total = self.maha_weight + self.knn_weight or 1.0
        combined = (self.maha_weight * self.maha_norm(m) + self.knn_weight * self.knn_norm(k)) / total
        return {"mahalanobis": m, "knn": k, "combined": combined}


def auroc(scores: np.ndarray, is_ood: np.ndarray) -> float | None:
    """AUROC of ``scores`` at separating OOD (positive) from ID; None if one class."""
    from sklearn.metrics import roc_auc_score

    is_ood = np.asarray(is_ood, dtype=bool)
    if is_ood.all() or not is_ood.any():
        return None
    return float(roc_auc_score(is_ood, scores))
