"""DASA / random selection: determinism, budget, per-query cap, CSV round trip."""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.data import UNLABELED, DataError, Pair
from training.selection import export_for_labelling, import_labels, reveal, select_dasa, select_random


def _pool(n_queries: int = 10, per_query: int = 6) -> list[Pair]:
    return [
        Pair(
            f"p{q}-{i}",
            f"query {q}",
            f"title {q} {i}",
            "",
            (q + i) % 3,
            None,
            "crowdflower" if q % 2 else "homedepot",
            "pool",
        )
        for q in range(n_queries)
        for i in range(per_query)
    ]


def test_dasa_takes_highest_scores_under_cap_and_budget() -> None:
    pool = _pool()
    scores = np.random.default_rng(0).normal(size=len(pool))
    idx = select_dasa(pool, scores, budget=15, per_query_cap=2)
    assert len(idx) == 15 and len(set(idx)) == 15
    assert max(Counter(pool[i].query for i in idx).values()) <= 2
    assert idx == select_dasa(pool, scores, budget=15, per_query_cap=2)  # deterministic
    # Greedy order: scores never increase along the selection.
    assert all(scores[a] >= scores[b] for a, b in itertools.pairwise(idx))
    # Without a binding cap it is exactly the top-k.
    top = select_dasa(pool, scores, budget=5, per_query_cap=100)
    assert sorted(top) == sorted(np.argsort(-scores)[:5].tolist())


def test_ties_break_by_pair_id_and_cap_limits_total() -> None:
    pool = _pool(3, 4)
    idx = select_dasa(pool, np.zeros(len(pool)), budget=100, per_query_cap=1)
    assert [pool[i].pair_id for i in idx] == ["p0-0", "p1-0", "p2-0"]


def test_random_is_seeded_and_capped() -> None:
    pool = _pool()
    a = select_random(pool, budget=12, per_query_cap=3, seed=1)
    assert a == select_random(pool, budget=12, per_query_cap=3, seed=1)
    assert a != select_random(pool, budget=12, per_query_cap=3, seed=2)
    assert len(a) == 12 and max(Counter(pool[i].query for i in a).values()) <= 3


def test_export_import_round_trip(tmp_path: Path) -> None:
    pool = _pool(3, 2)
    hidden = [Pair(p.pair_id, p.query, p.title, p.description, UNLABELED, None, p.source, p.split) for p in pool]
    out = tmp_path / "to_label.csv"
    export_for_labelling(hidden[:4], [0.9, 0.8, 0.7, 0.6], out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-1] == "ood_score" and all(r["label"] == "" for r in rows)
    labelled = tmp_path / "labelled.csv"

    def write(rs: list[dict]) -> None:
        with open(labelled, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rs)

    write([{**r, "label": "strong"} for r in rows])
    got = import_labels(labelled, hidden)
    assert [p.pair_id for p in got] == [p.pair_id for p in pool[:4]] and {p.label for p in got} == {2}
    # Unknown ids and missing labels are rejected.
    write([{**rows[0], "pair_id": "nope", "label": "weak"}])
    with pytest.raises(DataError, match="not in the pool"):
        import_labels(labelled, hidden)
    write(rows[:1])
    with pytest.raises(DataError, match="no label"):
        import_labels(labelled, hidden)


def test_reveal_uses_held_back_labels() -> None:
    pool = _pool(2, 2)
    hidden = [Pair(p.pair_id, p.query, p.title, "", UNLABELED, None, p.source, "pool") for p in pool]
    got = reveal(hidden, {p.pair_id: p for p in pool})
    assert [p.label for p in got] == [p.label for p in pool]
