"""Candidate-set ranking: each test query's judged items mixed with foreign items.

A retrieval stage hands the ranker a mixed list: items that were judged for the
query and items that merely share a word or a category. To measure that, every
test query gets its judged items plus ``per_query`` items drawn (seeded) from
*other* queries of the same test set; a foreign item counts as ``irrelevant``.

Two measures, both on the service's ranking score (the expected grade):

* **candidate NDCG@10**: gains are the judged grade (Home Depot: the raw mean
  grade − 1, so 0..2; otherwise the label id 0/1/2) and 0 for foreign items.
  Ties are broken against the model (a lower-gain item first), so a constant
  scorer gets no credit for the input order.
* **inversion rate**: over all (judged ``strong`` item, foreign item) pairs of a
  query, the share in which the foreign item scores higher (a tie counts ½, the
  expectation under a random tie-break). Micro-averaged over all such pairs.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from relevance_core.labels import LABEL2ID
from training.data import Pair
from training.metrics import dcg

FOREIGN_PREFIX = "foreign:"
STRONG = LABEL2ID["strong"]
IRRELEVANT = LABEL2ID["irrelevant"]


def is_foreign(pair: Pair) -> bool:
    return pair.pair_id.startswith(FOREIGN_PREFIX)


def foreign_pairs(pairs: Sequence[Pair], per_query: int = 20, seed: int = 13) -> list[Pair]:
    """``per_query`` items of other queries for every query of ``pairs``, labelled ``irrelevant``.

    Items are drawn without replacement from the distinct items (title, description) of the
    other queries, skipping any item whose title the query itself has judged.
    """
    by_query: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_query[p.query].append(p)
    items: dict[tuple[str, str], tuple[str, str]] = {}  # (title, description) -> (query, source)
    for p in pairs:
        items.setdefault((p.title, p.description), (p.query, p.source))
    catalogue = sorted(items)
    rng = random.Random(seed)
    out: list[Pair] = []
    for qi, (query, own) in enumerate(sorted(by_query.items())):
        own_titles = {p.title for p in own}
        chosen: list[tuple[str, str]] = []
        seen: set[int] = set()
        # rejection sampling: the catalogue is far larger than one query's items
        while len(chosen) < per_query and len(seen) < len(catalogue):
            i = rng.randrange(len(catalogue))
            if i in seen:
                continue
            seen.add(i)
            title, desc = catalogue[i]
            if items[(title, desc)][0] != query and title not in own_titles:
                chosen.append((title, desc))
        for j, (title, desc) in enumerate(chosen):
            out.append(
                replace(
                    own[0],
                    pair_id=f"{FOREIGN_PREFIX}{qi}:{j}",
                    title=title,
                    description=desc,
                    label=IRRELEVANT,
                    raw_relevance=None,
                    source=items[(title, desc)][1],
                )
            )
    return out


def candidate_gain(pair: Pair) -> float:
    """Judged grade on 0..2 (Home Depot's raw mean grade − 1 when known); 0 for a foreign item."""
    if is_foreign(pair):
        return 0.0
    if pair.raw_relevance is not None and pair.source == "homedepot":
        return float(pair.raw_relevance) - 1.0
    return float(pair.label)


def candidate_metrics(pairs: Sequence[Pair], scores: np.ndarray, k: int = 10) -> dict[str, Any]:
    """``cand_ndcg@10`` and ``inversion_rate`` over judged + foreign pairs (see module doc)."""
    scores = np.asarray(scores, dtype=np.float64)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[p.query].append(i)
    ndcgs: list[float] = []
    inverted, compared = 0.0, 0
    for idx in groups.values():
        gains = np.array([candidate_gain(pairs[i]) for i in idx])
        s = scores[idx]
        ideal = dcg(np.sort(gains)[::-1], k)
        if ideal > 0:
            order = np.lexsort((gains, -s))  # score descending, then the lower gain first
            ndcgs.append(dcg(gains[order], k) / ideal)
        foreign = np.array([is_foreign(pairs[i]) for i in idx])
        strong = np.array([(not is_foreign(pairs[i])) and pairs[i].label == STRONG for i in idx])
        if foreign.any() and strong.any():
            f, st = s[foreign][None, :], s[strong][:, None]
            inverted += float((f > st).sum() + 0.5 * (f == st).sum())
            compared += int(f.size * st.size)
    return {
        "cand_ndcg@10": float(np.mean(ndcgs)) if ndcgs else None,
        "inversion_rate": inverted / compared if compared else None,
        "cand_pairs": len(pairs),
    }


def training_foreign_pairs(pairs: Sequence[Pair], per_query: int, seed: int) -> list[Pair]:
    """Foreign items as extra ``irrelevant`` training pairs (raw grade 1, the bottom of Home Depot's scale)."""
    if per_query <= 0:
        return []
    return [replace(p, raw_relevance=1.0, split="train") for p in foreign_pairs(pairs, per_query, seed)]
