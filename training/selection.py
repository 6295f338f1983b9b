"""Pick pool pairs to annotate under a budget, and the CSV labelling round trip.

DASA ranks the unlabeled pool by the combined OOD score (least covered by the
training set first) and takes up to ``budget`` pairs with at most
``per_query_cap`` per query, so a few odd queries cannot eat the budget. The
random control draws the same budget under the same cap. Ties break by pair id,
so a selection is a pure function of (scores, pool, budget, cap, seed).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.data import Pair, load_pairs, write_pairs_csv


def _capped(order: Sequence[int], pool: Sequence[Pair], budget: int, cap: int) -> list[int]:
    taken: Counter[str] = Counter()
    out: list[int] = []
    for i in order:
        if len(out) >= budget:
            break
        q = pool[i].query
        if taken[q] >= cap:
            continue
        taken[q] += 1
        out.append(int(i))
    return out


def select_dasa(pool: Sequence[Pair], scores: np.ndarray, budget: int, per_query_cap: int) -> list[int]:
    """Indices of the highest-scoring pool pairs, score desc then pair id."""
    ids = np.array([p.pair_id for p in pool])
    order = np.lexsort((ids, -np.asarray(scores, dtype=np.float64)))
    return _capped(order, pool, budget, per_query_cap)


def select_random(pool: Sequence[Pair], budget: int, per_query_cap: int, seed: int) -> list[int]:
    """The control: a seeded random order under the same budget and cap."""
    order = np.random.default_rng(seed).permutation(len(pool))
    return _capped(order, pool, budget, per_query_cap)


def reveal(selected: Sequence[Pair], truth: dict[str, Pair]) -> list[Pair]:
    """Experiments: the held-back pool labels play the annotators."""
    return [replace(p, label=truth[p.pair_id].label) for p in selected if truth[p.pair_id].labeled]


def export_for_labelling(selected: Sequence[Pair], scores: Sequence[float], path: str | Path) -> None:
    """CSV in the data schema with an empty ``label`` column for annotators to fill."""
    write_pairs_csv([replace(p, label=-1) for p in selected], path, extra={"ood_score": [f"{s:.4f}" for s in scores]})


def import_labels(path: str | Path, pool: Sequence[Pair]) -> list[Pair]:
    """Read an annotated CSV back; every row must name a pool pair and carry a label."""
    from training.data import DataError

    by_id = {p.pair_id: p for p in pool}
    rows = load_pairs(path, on_error="error", default_split="pool")
    problems = []
    with open(path, encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), [])
    if "pair_id" not in header:
        raise DataError(f"{path}:1: an annotated file needs the pair_id column of the export")
    out = []
    for line, r in enumerate(rows, start=2):
        if r.pair_id not in by_id:
            problems.append(f"{path}: pair_id {r.pair_id!r} (row {line - 1}) is not in the pool")
        elif not r.labeled:
            problems.append(f"{path}: pair_id {r.pair_id!r} (row {line - 1}) has no label")
        else:
            out.append(replace(by_id[r.pair_id], label=r.label))
    if problems:
        raise DataError("annotated file rejected:\n  " + "\n  ".join(problems[:20]))
    return out
