"""How much of a call's prompts is a shared query prefix: the ceiling of prefix caching / KV reuse.

Renders every Home Depot test query's judged items with the served prompt template and measures,
per query, the tokens its prompts share from the start (the ``Query: …`` part). vLLM caches
prefixes only in whole KV blocks (128 tokens by default on CPU), so a shared prefix shorter than a
block is recomputed for every item.

    .venv/bin/python -m benchmarks.prefix_share [--queries 500]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

from benchmarks.workload import DEFAULT_DATA, read_rows


def shared_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from relevance_core.base_model import DEFAULT_BASE, ensure_base_model
    from relevance_core.prompt import PromptRenderer

    renderer = PromptRenderer(AutoTokenizer.from_pretrained(ensure_base_model(DEFAULT_BASE)), args.max_length)
    by_query: dict[str, list] = collections.defaultdict(list)
    for row in read_rows(args.data, ["test"]):
        by_query[row["query"]].append((row["item_title"], row["item_description"] or None))
    shared, tokens = [], []
    for query, items in list(by_query.items())[: args.queries]:
        ids = [r.token_ids for r in renderer.render_many(query, [*items, ("\x00", None)])]  # a foil item
        shared.append(min(shared_prefix(ids[0], x) for x in ids[1:]))
        tokens.extend(len(x) for x in ids[:-1])
    out = {
        "queries": len(shared),
        "mean_tokens_per_pair": round(statistics.mean(tokens), 1),
        "shared_prefix_tokens_median": statistics.median(shared),
        "shared_prefix_tokens_max": max(shared),
        "shared_fraction_of_tokens": round(statistics.mean(shared) / statistics.mean(tokens), 3),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
