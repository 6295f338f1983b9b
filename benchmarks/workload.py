"""The benchmark workload: real Home Depot queries with N candidate items per call.

A call is one query with N items. Rows are grouped by query; a query keeps its
own judged items first (in file order) and, because Home Depot has only ~6
items per query on average, is filled up to N with items of other queries,
drawn by a seeded generator (as a ranking stage scores a query against
candidates that a retriever found, many of them irrelevant). How many of the
items are the query's own is reported (``own_fraction``).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    description: str | None = None


@dataclass(frozen=True)
class Call:
    """One scoring call: a query and its N items; ``own`` = items judged for this query."""

    query: str
    items: tuple[Item, ...]
    own: int

    @property
    def n(self) -> int:
        return len(self.items)

    def darl_body(self) -> bytes:
        """The body of ``POST /v1/score`` (this service and the naive peer)."""
        items = [
            {"id": it.id, "title": it.title, **({"description": it.description} if it.description else {})}
            for it in self.items
        ]
        return json.dumps({"query": self.query, "items": items}).encode()


@dataclass
class Catalog:
    """Items grouped by query, in file order, plus a flat list for filling."""

    groups: dict[str, list[Item]] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)


def read_rows(path: Path, splits: Iterable[str] | None = None) -> Iterable[dict[str, str]]:
    wanted = set(splits) if splits else None
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if wanted is None or row.get("split") in wanted:
                yield row


def load_catalog(rows: Iterable[dict[str, str]]) -> Catalog:
    cat = Catalog()
    seen: set[tuple[str, str]] = set()
    for row in rows:
        query = (row.get("query") or "").strip()
        title = (row.get("item_title") or "").strip()
        if not query or not title or (query, title) in seen:
            continue
        seen.add((query, title))
        item = Item(
            id=row.get("pair_id") or f"i{len(cat.items)}", title=title, description=row.get("item_description") or None
        )
        cat.groups.setdefault(query, []).append(item)
        cat.items.append(item)
    return cat


def make_calls(cat: Catalog, n: int, count: int, seed: int = 0) -> list[Call]:
    """``count`` calls of ``n`` items, queries in a seeded random order (cycled if needed)."""
    if n < 1 or count < 1:
        raise ValueError("n and count must be positive")
    if not cat.groups:
        raise ValueError("empty catalog")
    rng = random.Random(f"{seed}-{n}")
    queries = sorted(cat.groups)
    rng.shuffle(queries)
    calls = []
    for k in range(count):
        query = queries[k % len(queries)]
        own = cat.groups[query][:n]
        own_ids = {it.id for it in own}
        items = list(own)
        used_titles = {it.title for it in own}
        while len(items) < n:
            cand = cat.items[rng.randrange(len(cat.items))]
            if cand.id in own_ids or cand.title in used_titles:
                if len(used_titles) >= len(cat.items):  # tiny catalogs: allow repeats, keep ids unique
                    cand = Item(id=f"{cand.id}#{len(items)}", title=cand.title, description=cand.description)
                else:
                    continue
            used_titles.add(cand.title)
            own_ids.add(cand.id)
            items.append(cand)
        # ids must be unique within a call
        calls.append(Call(query=query, items=tuple(items), own=len(own)))
    return calls


def own_fraction(calls: Sequence[Call]) -> float:
    total = sum(c.n for c in calls)
    return sum(c.own for c in calls) / total if total else 0.0
