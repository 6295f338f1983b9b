"""Logits -> probabilities and the expected-grade score, always in fp32."""

from __future__ import annotations

import numpy as np

from relevance_core.labels import NUM_LABELS


def probs_from_logits(logits: np.ndarray) -> np.ndarray:
    """Numerically stable fp32 softmax over the last axis.

    Engines may compute in bf16; the softmax runs in fp32 so that probabilities
    sum to one to float precision whatever the engine's dtype.
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.shape[-1] != NUM_LABELS:
        raise ValueError(f"expected {NUM_LABELS} logits per pair, got shape {x.shape}")
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """Expected grade rescaled to [0, 1]: 0 = surely irrelevant, 1 = surely strong.

    A single sortable number for ranking that uses the ordinal label order
    (irrelevant=0, weak=1, strong=2), unlike P(strong) alone.
    """
    p = np.asarray(probs, dtype=np.float32)
    grades = np.arange(NUM_LABELS, dtype=np.float32)
    return (p @ grades) / (NUM_LABELS - 1)
