"""Tiny training inputs: synthetic data files and configs for tiny models (no test in here).

Used by the fixtures in ``conftest.py`` and imported by the training tests.
"""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

from relevance_core.testing import tiny_base_ref

WORDS = [
    "drill",
    "hammer",
    "paint",
    "lamp",
    "faucet",
    "ladder",
    "shovel",
    "mower",
    "tile",
    "sink",
    "mouse",
    "kettle",
    "pillow",
    "guitar",
    "camera",
    "blender",
    "laptop",
    "stroller",
]
HD_GRADE = {"strong": 3.0, "weak": 2.0, "irrelevant": 1.0}
CF_GRADE = {"strong": 4, "weak": 3, "irrelevant": 1}
FIELDS = ["pair_id", "query", "item_title", "item_description", "label", "raw_relevance", "source", "split"]


def synthetic_rows(source: str, n_queries: int, splits: list[str], seed: int) -> list[dict]:
    """Pairs whose label follows word overlap, so a model can learn something."""
    rng = random.Random(seed)
    rows = []
    for q in range(n_queries):
        word = WORDS[(q + seed) % len(WORDS)]
        query = f"{word} {rng.choice(['pro', 'set', 'kit', 'mini'])} {q}"
        split = splits[q % len(splits)]
        for j, label in enumerate(["strong", "weak", "irrelevant", "strong"]):
            if label == "strong":
                title = f"{query} deluxe {j}"
            elif label == "weak":
                title = f"{word} accessory {j}"
            else:
                title = f"{rng.choice(WORDS)} thing {rng.randint(0, 99)}"
            desc = f"A {title} for home use." if source == "crowdflower" else ""
            grade = HD_GRADE[label] if source == "homedepot" else CF_GRADE[label]
            rows.append(
                {
                    "pair_id": f"{source[:2]}-{q}-{j}",
                    "query": query,
                    "item_title": title,
                    "item_description": desc,
                    "label": label,
                    "raw_relevance": grade,
                    "source": source,
                    "split": split,
                }
            )
    return rows


def write_csv_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_train_dict(data_root: Path, base: Path, **over) -> dict:
    """A training config for tiny models and data; ``over`` is merged into it section by section."""
    raw = {
        "name": "tiny",
        "base_model": tiny_base_ref(base).model_dump(),
        "max_length": 40,
        "data": {"root": str(data_root)},
        "features": {"batch_size": 32, "autocast": "float32"},
        "dasa": {"budget": 8, "per_query_cap": 2, "knn_k": 3},
        "finetune": {
            "max_train_pairs": 48,
            "batch_size": 8,
            "grad_accum": 1,
            "autocast": "float32",
            "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
        },
        "interpolate": {"grid": [0.0, 1.0]},
    }
    return _merge(raw, over)


def tiny_config(tmp: Path, data_root: Path, base: Path, **over):
    """The end-to-end tests' ``TrainConfig``: every stage on, run and artifact under ``tmp``;
    ``over`` replaces top-level keys."""
    from training.config import TrainConfig

    raw = tiny_train_dict(
        data_root,
        base,
        name="tiny-darl",
        seed=3,
        threads=2,
        max_length=48,
        run_dir=str(tmp / "run"),
        output_dir=str(tmp / "artifact"),
        dasa={"budget": 12},
        finetune={
            "max_train_pairs": 96,
            "grad_accum": 2,
            "lr": 5e-3,
            "head_lr": 5e-3,
            "checkpoint_every": 2,
            # top layer only: the exported adapter's layers_to_transform must survive the service's loader
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "top_layers": 1},
        },
        interpolate={"grid": [0.0, 0.5, 1.0], "temperature": True},
        eval={"batch_size": 32},
        root_dir=str(tmp),
    )
    for k, v in over.items():
        raw[k] = v
    return TrainConfig.model_validate(raw)
