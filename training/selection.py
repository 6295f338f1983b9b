"""Pick pool pairs to annotate under a budget, and the CSV labelling round trip.

DASA ranks the unlabeled pool by the combined OOD score (least covered by the
training set first) and takes up to ``budget`` pairs with at most
``per_query_cap`` per query, so a few odd queries cannot eat the budget. The
random control draws the same budget under the same cap. Ties break by pair id,
so a selection is a pure function of (scores, pool, budget, cap, seed).
``run_selection`` is the whole DASA stage of ``darl train``: score, select, export, label.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.data import Pair, hide_labels, load_pairs, write_pairs_csv

if TYPE_CHECKING:
    from training.config import DasaConfig

log = logging.getLogger(__name__)


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


@dataclass
class DasaFeatures:
    """Frozen-backbone features the DASA scorer reads: it is fitted on train (+ ID val) and scores the pool."""

    train: np.ndarray
    val_id: np.ndarray
    pool: np.ndarray  # rows in the order of the pool passed to ``run_selection``


@dataclass
class Selection:
    """The DASA stage's outcome; ``report`` and ``ood_auroc`` go to summary.json as they are."""

    added: list[Pair]  # the newly labelled pool pairs (empty when only exporting for labelling)
    report: dict[str, Any]
    ood_auroc: dict[str, float | None] | None = None  # per detector; None for the random control


def run_selection(
    pool: Sequence[Pair],
    train: Sequence[Pair],
    dc: DasaConfig,
    seed: int,
    ood_sources: Collection[str],
    run_dir: Path,
    feats: DasaFeatures | None = None,
    export_only: bool = False,
) -> Selection:
    """Score the pool (labels hidden), select under the budget, write ``run_dir/selection.csv``, then label
    the selection: held-back labels revealed, or ``run_dir/imported_labels.csv`` read back.

    ``pool`` carries its labels (the experiments' annotators); ``feats`` is needed by the ``dasa`` strategy.
    ``export_only``: stop after the CSV (``darl select --export``), nothing labelled yet.
    """
    from training.ood import DasaScorer, auroc

    hidden = hide_labels(pool)
    scores = None
    ood_auroc = None
    if dc.strategy == "dasa":
        if feats is None:
            raise ValueError("the dasa strategy needs the stage-1 features of train, val_id and the pool")
        scorer = DasaScorer.fit(
            feats.train,
            np.array([p.label for p in train]),
            feats.val_id,
            dc.shrinkage,
            dc.knn_k,
            dc.mahalanobis_weight,
            dc.knn_weight,
        )
        all_scores = scorer.scores(feats.pool)
        is_ood = np.array([p.source in ood_sources for p in hidden])
        ood_auroc = {k: auroc(v, is_ood) for k, v in all_scores.items()}
        log.info("OOD AUROC (pool, OOD source vs ID): %s", ood_auroc)
        scores = all_scores["combined"]
        idx = select_dasa(hidden, scores, dc.budget, dc.per_query_cap)
    else:
        idx = select_random(hidden, dc.budget, dc.per_query_cap, seed)
    chosen = [hidden[i] for i in idx]
    chosen_scores = [float(scores[i]) if scores is not None else float("nan") for i in idx]
    report: dict[str, Any] = {
        "strategy": dc.strategy,
        "budget": dc.budget,
        "selected": len(chosen),
        "ood_fraction": float(np.mean([p.source in ood_sources for p in chosen])) if chosen else 0.0,
        "queries": len({p.query for p in chosen}),
    }
    export_for_labelling(chosen, chosen_scores, run_dir / "selection.csv")
    if export_only:
        return Selection([], report, ood_auroc)
    if dc.label_source == "import":
        path = run_dir / "imported_labels.csv"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `darl select --config … --export FILE`, label FILE, "
                "then `darl select --config … --import FILE`"
            )
        added = import_labels(path, pool)
    else:
        added = reveal(chosen, {p.pair_id: p for p in pool})
    report["labelled"] = len(added)
    log.info("selection: %s", report)
    return Selection(added, report, ood_auroc)
