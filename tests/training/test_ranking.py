"""Candidate-set ranking measures against hand-computed cases, and the foreign-item sampler."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import Pair
from training.ranking import (
    FOREIGN_PREFIX,
    candidate_metrics,
    foreign_pairs,
    is_foreign,
    training_foreign_pairs,
)


def pair(pid: str, query: str, title: str, label: int, raw: float | None = None, source: str = "cf") -> Pair:
    return Pair(pid, query, title, "", label, raw, source, "test")


def test_inversion_rate_hand_case() -> None:
    # query a: strong items score 0.9 and 0.5; foreign items 0.6 and 0.1 -> (0.6 > 0.5) is the one
    # inversion of 4 pairs. query b: one strong at 0.3, one foreign tied at 0.3 -> half an inversion.
    # The weak item of a takes part in no (strong, foreign) pair.
    pairs = [
        pair("a1", "a", "t1", 2),
        pair("a2", "a", "t2", 2),
        pair("a3", "a", "t3", 1),
        pair(f"{FOREIGN_PREFIX}0:0", "a", "f1", 0),
        pair(f"{FOREIGN_PREFIX}0:1", "a", "f2", 0),
        pair("b1", "b", "t4", 2),
        pair(f"{FOREIGN_PREFIX}1:0", "b", "f3", 0),
    ]
    scores = np.array([0.9, 0.5, 0.95, 0.6, 0.1, 0.3, 0.3])
    m = candidate_metrics(pairs, scores)
    assert m["inversion_rate"] == pytest.approx((1 + 0.5) / (4 + 1))
    assert m["cand_pairs"] == 7


def test_candidate_ndcg_hand_case() -> None:
    # one query, gains by rank: weak (1) first, foreign (0), strong (2); ideal: 2, 1, 0.
    pairs = [pair("s", "q", "strong", 2), pair("w", "q", "weak", 1), pair(f"{FOREIGN_PREFIX}0:0", "q", "f", 0)]
    scores = np.array([0.1, 0.9, 0.5])
    got = candidate_metrics(pairs, scores)["cand_ndcg@10"]
    dcg = 1 / np.log2(2) + 0 / np.log2(3) + 2 / np.log2(4)
    idcg = 2 / np.log2(2) + 1 / np.log2(3)
    assert got == pytest.approx(dcg / idcg)


def test_home_depot_gain_is_the_raw_grade_and_ties_are_broken_against_the_model() -> None:
    # raw grades 2.67 and 1.33 -> gains 1.67 and 0.33; a constant score ranks the foreign item first.
    pairs = [
        pair("h1", "q", "a", 2, 2.67, "homedepot"),
        pair("h2", "q", "b", 0, 1.33, "homedepot"),
        pair(f"{FOREIGN_PREFIX}0:0", "q", "f", 0, None, "homedepot"),
    ]
    got = candidate_metrics(pairs, np.zeros(3))["cand_ndcg@10"]
    dcg = 0 / np.log2(2) + 0.33 / np.log2(3) + 1.67 / np.log2(4)
    idcg = 1.67 / np.log2(2) + 0.33 / np.log2(3)
    assert got == pytest.approx(dcg / idcg)
    assert candidate_metrics(pairs, np.zeros(3))["inversion_rate"] == pytest.approx(0.5)


def test_foreign_pairs_come_from_other_queries_seeded() -> None:
    pairs = [pair(f"{q}{i}", f"query {q}", f"title {q} {i}", 2) for q in "abcdef" for i in range(4)]
    out = foreign_pairs(pairs, per_query=5, seed=1)
    assert len(out) == 6 * 5
    assert out == foreign_pairs(pairs, per_query=5, seed=1)
    assert out != foreign_pairs(pairs, per_query=5, seed=2)
    own = {(p.query, p.title) for p in pairs}
    for f in out:
        assert is_foreign(f) and f.label == 0
        assert (f.query, f.title) not in own
        assert f.title.split()[1] != f.query.split()[1]  # an item of another query
    per_query = {q: sum(f.query == q for f in out) for q in {p.query for p in pairs}}
    assert set(per_query.values()) == {5}
    assert len({f.pair_id for f in out}) == len(out)


def test_training_foreign_pairs_are_bottom_grade_training_pairs() -> None:
    pairs = [pair(f"{q}{i}", q, f"{q} item {i}", 2, 3.0, "homedepot") for q in "xyz" for i in range(3)]
    out = training_foreign_pairs(pairs, 2, seed=0)
    assert len(out) == 6 and all(p.raw_relevance == 1.0 and p.split == "train" and p.label == 0 for p in out)
    assert training_foreign_pairs(pairs, 0, seed=0) == []
