"""Score labelled pairs with a model and write metrics, a markdown report and plots.

Groups: the pipeline passes ``{"id": HD test, "ood": CF test}``; ``darl eval``
groups a data file by its ``source`` column. Plots use matplotlib's Agg backend
(no display): confusion matrices, reliability diagrams, ID-vs-OOD bars.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.labels import LABELS
from relevance_core.postprocess import expected_grade, probs_from_logits
from relevance_core.prompt import TEMPLATE_VERSION, PromptRenderer
from training.data import Pair, render_pairs
from training.features import encode
from training.metrics import compute_metrics, reliability
from training.model import pad_id
from training.ranking import candidate_metrics, foreign_pairs, is_foreign

SUMMARY_KEYS = ("n", "accuracy", "macro_f1", "ece", "qwk", "rmse_hd", "ndcg@10", "cand_ndcg@10", "inversion_rate")


@contextlib.contextmanager
def merged(model: Any) -> Iterator[Any]:
    """Fold a LoRA adapter into the base weights for the block: inference without the
    adapter's extra matmuls (much faster on CPU); unmerged again afterwards for training/export."""
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def predict(
    model: Any,
    tok: Any,
    pairs: Sequence[Pair],
    max_length: int,
    batch_size: int = 64,
    dtype: str = "bfloat16",
    desc: str = "eval",
    progress: bool = True,
    template: str = TEMPLATE_VERSION,
) -> np.ndarray:
    """Probabilities ``[N, 3]`` for ``pairs`` rendered with the shared template (the artifact's version)."""
    seqs, _ = render_pairs(PromptRenderer(tok, max_length, template), pairs)
    with merged(model):
        _, logits = encode(
            model, seqs, pad_id(tok), batch_size, dtype, want_features=False, desc=desc, progress=progress
        )
    return probs_from_logits(logits)


def with_candidates(pairs: Sequence[Pair], per_query: int, seed: int) -> list[Pair]:
    """``pairs`` followed by ``per_query`` foreign items for each of their queries (none if 0)."""
    return [*pairs, *foreign_pairs(pairs, per_query, seed)] if per_query else list(pairs)


def metrics_for(pairs: Sequence[Pair], probs: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Metrics of the judged pairs; with foreign pairs among ``pairs``, also the candidate-set ranking."""
    judged = np.array([p.labeled and not is_foreign(p) for p in pairs], dtype=bool)
    ps = [p for p, keep in zip(pairs, judged, strict=True) if keep]
    out = compute_metrics(
        probs[judged],
        np.array([p.label for p in ps]),
        queries=[p.query for p in ps],
        raw_relevance=[p.raw_relevance for p in ps],
        sources=[p.source for p in ps],
        n_bins=n_bins,
    )
    out.update({"cand_ndcg@10": None, "inversion_rate": None, "cand_pairs": 0})
    if len(ps) < len(pairs):
        cand = [p for p in pairs if p.labeled]
        keep = np.array([p.labeled for p in pairs], dtype=bool)
        out.update(candidate_metrics(cand, expected_grade(probs[keep])))
    return out


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``id``/``ood`` entries of a run summary: the table's columns of each test group."""
    keep = (*SUMMARY_KEYS, "f1_per_class", "cand_pairs")
    return {g: ({k: metrics[g].get(k) for k in keep} if g in metrics else None) for g in ("id", "ood")}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(rows: dict[str, dict[str, Any]], keys: Sequence[str] = SUMMARY_KEYS) -> str:
    lines = ["| group | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    groups: dict[str, tuple[Sequence[Pair], np.ndarray]],
    title: str,
    n_bins: int = 15,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json, report.md and PNG plots for every group; returns the metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    rel: dict[str, Any] = {}
    for name, (pairs, probs) in groups.items():
        metrics[name] = metrics_for(pairs, probs, n_bins)
        judged = np.array([p.labeled and not is_foreign(p) for p in pairs], dtype=bool)
        labels = np.array([p.label for p, keep in zip(pairs, judged, strict=True) if keep])
        rel[name] = reliability(probs[judged], labels, n_bins)

    for name, m in metrics.items():
        fig, ax = plt.subplots(figsize=(4, 3.5))
        cm = np.asarray(m["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(LABELS)), LABELS)
        ax.set_yticks(range(len(LABELS)), LABELS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} confusion")
        fig.tight_layout()
        fig.savefig(out_dir / f"confusion_{name}.png", dpi=100)
        plt.close(fig)

        r = rel[name]
        fig, ax = plt.subplots(figsize=(4, 3.5))
        centers = (np.array(r["lower"]) + np.array(r["upper"])) / 2
        ax.bar(centers, np.nan_to_num(r["accuracy"]), width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", label="perfect")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name} reliability (ECE {m['ece']:.3f})")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(out_dir / f"reliability_{name}.png", dpi=100)
        plt.close(fig)

    keys = ["accuracy", "macro_f1", "qwk", "ece", "cand_ndcg@10"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, len(metrics))
    for i, (name, m) in enumerate(metrics.items()):
        ax.bar(np.arange(len(keys)) + i * width, [m.get(k) or 0.0 for k in keys], width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(metrics) - 1) / 2, keys)
    ax.set_title("ID vs OOD")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "id_vs_ood.png", dpi=100)
    plt.close(fig)

    payload = {"groups": metrics, "reliability": rel, **(extra or {})}
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {title}", "", markdown_table(metrics), "", "Per-class F1:", ""]
    lines.append(markdown_table({n: m["f1_per_class"] for n, m in metrics.items()}, LABELS))
    lines += ["", "![ID vs OOD](id_vs_ood.png)", ""]
    for name in metrics:
        lines.append(f"![{name} confusion](confusion_{name}.png) ![{name} reliability](reliability_{name}.png)")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return metrics
