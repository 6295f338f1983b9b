"""What the benchmarks measure: the model artifact, and real Home Depot calls of N items.

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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "homedepot.csv.gz"
DEFAULT_ARTIFACT = REPO / "model_artifacts" / "darl-smollm2"


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


@dataclass(frozen=True)
class Prepared:
    """One call in every form a server may need: the JSON body, the rendered token ids, and their text."""

    darl_body: bytes
    token_ids: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...]


def prepare_calls(data: Path, ns: list[int], calls_per_n: int, renderer: Any, tokenizer: Any) -> dict:
    """``calls_per_n`` test-split calls per N, rendered once so that no server's numbers include the client's work."""
    cat = load_catalog(read_rows(data, ["test"]))
    out: dict = {"_catalog": {"queries": len(cat.groups), "items": len(cat.items)}}
    for n in ns:
        calls = make_calls(cat, n, calls_per_n, seed=13)
        prepared, tokens = [], []
        for c in calls:
            ids = tuple(r.token_ids for r in renderer.render_many(c.query, [(i.title, i.description) for i in c.items]))
            tokens.extend(len(x) for x in ids)
            prepared.append(Prepared(c.darl_body(), ids, tuple(tokenizer.decode(x) for x in ids)))
        out[n] = {
            "prepared": prepared,
            "mean_tokens": sum(tokens) / len(tokens),
            "own_fraction": own_fraction(calls),
            "queries": len({c.query for c in calls}),
        }
    return out


@dataclass(frozen=True)
class Model:
    """The artifact under test, loaded as the service loads it, with its tokenizer and prompt renderer."""

    artifact_dir: Path
    cache_dir: Path | None  # set for a random-head artifact: its merged checkpoint is built there
    checkpoint: Path
    max_length: int
    name: str
    tokenizer: Any
    renderer: Any


def load_model(model_dir: Path | None, workdir: Path) -> Model:
    """The given artifact, else the trained default, else the real base with a random head.

    Speed does not depend on the weights, so a checkout without a trained
    artifact still measures the real model's cost.
    """
    from transformers import AutoTokenizer

    from relevance_core.prompt import PromptRenderer
    from service.artifacts import load_artifact

    if model_dir is None and (DEFAULT_ARTIFACT / "manifest.json").is_file():
        model_dir = DEFAULT_ARTIFACT
    cache = None
    if model_dir is None:
        from relevance_core.testing import make_random_head_artifact, real_base_dir

        cache, model_dir = workdir / "cache", workdir / "random-head"
        if not (model_dir / "manifest.json").is_file():
            make_random_head_artifact(model_dir, real_base_dir(), "adapter", name="random-head")
    loaded = load_artifact(model_dir, cache)
    max_length = loaded.manifest.max_length
    tokenizer = AutoTokenizer.from_pretrained(loaded.checkpoint_dir)
    renderer = PromptRenderer(tokenizer, max_length)
    return Model(model_dir, cache, loaded.checkpoint_dir, max_length, loaded.manifest.name, tokenizer, renderer)
