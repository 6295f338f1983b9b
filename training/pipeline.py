"""``darl train``: the DaRL stages end to end, each stage's output kept in the run dir.

data → stage 1 (cached features, linear probe) → DASA (OOD scores, selection,
labels) → stage 2 (LoRA/full fine-tune, resumable) → stage 3 (WiSE coefficient
on ID+OOD val) → test evaluation → artifact export. Re-running after a kill
reuses the cached features and resumes stage 2 from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.prompt import PromptRenderer
from training.config import TrainConfig
from training.data import Pair, by_split, fingerprint, hide_labels, load_pairs, render_pairs, subsample

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: list[Pair]
    pool: list[Pair]  # with labels: the experiments' annotators
    val_id: list[Pair]
    val_ood: list[Pair]
    test_id: list[Pair]
    test_ood: list[Pair]
    ood_sources: set[str]
    files: list[Path]


@dataclass
class Context:
    cfg: TrainConfig
    splits: Splits
    model: Any = None
    tok: Any = None
    base_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_path

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        log.info("== %s", stage)
        yield
        self.timings[stage] = round(time.perf_counter() - t0, 1)
        log.info("== %s done in %.1f s", stage, self.timings[stage])


def load_splits(cfg: TrainConfig) -> Splits:
    """ID files give train/pool/val/test; OOD files give pool/val/test."""
    d = cfg.data
    root = cfg.path(d.root)
    id_files = [root / f for f in d.id_files] + [cfg.path(f) for f in d.extra_files]
    ood_files = [root / f for f in d.ood_files]
    id_pairs = [p for f in id_files for p in load_pairs(f, d.on_error)]
    ood_pairs = [p for f in ood_files for p in load_pairs(f, d.on_error)]
    s = cfg.seed
    train = [p for p in by_split(id_pairs, d.train_split) if p.labeled]
    return Splits(
        train=subsample(train, d.max_train, s),
        pool=subsample(by_split(id_pairs, d.pool_split), d.max_pool_per_domain, s + 5)
        + subsample(by_split(ood_pairs, d.pool_split), d.max_pool_per_domain, s + 6),
        val_id=subsample([p for p in by_split(id_pairs, d.val_split) if p.labeled], d.max_val_per_domain, s + 1),
        val_ood=subsample([p for p in by_split(ood_pairs, d.val_split) if p.labeled], d.max_val_per_domain, s + 2),
        test_id=subsample([p for p in by_split(id_pairs, d.test_split) if p.labeled], d.max_test_per_domain, s + 3),
        test_ood=subsample([p for p in by_split(ood_pairs, d.test_split) if p.labeled], d.max_test_per_domain, s + 4),
        ood_sources={p.source for p in ood_pairs},
        files=id_files + ood_files,
    )


def data_fingerprint(cfg: TrainConfig, splits: Splits) -> str:
    return fingerprint(splits.files, json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True) + f"|seed={cfg.seed}")


def prepare(cfg: TrainConfig, progress: bool = True) -> Context:
    import torch

    from relevance_core.base_model import ensure_base_model
    from training.model import load_classifier

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    ctx = Context(cfg=cfg, splits=load_splits(cfg), progress=progress)
    s = ctx.splits
    log.info(
        "data: train %d, pool %d, val %d+%d, test %d+%d",
        len(s.train),
        len(s.pool),
        len(s.val_id),
        len(s.val_ood),
        len(s.test_id),
        len(s.test_ood),
    )
    ctx.base_dir = ensure_base_model(cfg.base_ref())
    ctx.model, ctx.tok = load_classifier(ctx.base_dir, cfg.num_layers)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ctx.model.to(device).eval()
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def _seqs_for(tok: Any, max_length: int, pairs: list[Pair]) -> list[tuple[int, ...]]:
    return render_pairs(PromptRenderer(tok, max_length), pairs)[0]


def _seqs(ctx: Context, pairs: list[Pair]) -> list[tuple[int, ...]]:
    return _seqs_for(ctx.tok, ctx.cfg.max_length, pairs)


def _features(ctx: Context, name: str, pairs: list[Pair]) -> np.ndarray:
    from training.features import cached_features
    from training.model import pad_id

    identity = f"{ctx.base_dir}|{ctx.cfg.base_ref().sha256}|{ctx.cfg.max_length}|layers={ctx.cfg.num_layers}"
    cache = ctx.cfg.path(ctx.cfg.features.cache_dir) if ctx.cfg.features.cache_dir else ctx.run_dir / "features"
    return cached_features(
        cache,
        name,
        ctx.model,
        _seqs(ctx, pairs),
        pad_id(ctx.tok),
        ctx.cfg.features.batch_size,
        ctx.cfg.features.autocast,
        identity,
    )


def _predict(ctx: Context, pairs: list[Pair], desc: str) -> np.ndarray:
    """Probabilities of the model as it stands (eval batch size and autocast of the config)."""
    from training.evaluate import predict

    cfg = ctx.cfg
    return predict(
        ctx.model,
        ctx.tok,
        pairs,
        cfg.max_length,
        cfg.eval.batch_size,
        cfg.features.autocast,
        desc=desc,
        progress=ctx.progress,
    )


def stage1(ctx: Context) -> None:
    """Features of train/val(/pool) once, then the probe on the frozen backbone.

    With ``probe.dasa_pairs`` the probe waits for DASA (``run`` calls ``fit_head`` after it).
    """
    cfg, s = ctx.cfg, ctx.splits
    if not (cfg.probe.enabled or (cfg.dasa.enabled and cfg.dasa.strategy == "dasa")):
        return
    with ctx.timed("stage1_features"):
        ctx.results["feats"] = {
            "train": _features(ctx, "train", s.train),
            "val_id": _features(ctx, "val_id", s.val_id),
            "val_ood": _features(ctx, "val_ood", s.val_ood),
        }
    if cfg.probe.enabled and not cfg.probe.dasa_pairs:
        fit_head(ctx, [])


def fit_head(ctx: Context, added: list[Pair]) -> None:
    """Stage 1 probe on the cached features of the train pairs (+ ``added``, the DASA-labelled ones)."""
    from training.probe import select_probe, set_head

    cfg, s = ctx.cfg, ctx.splits
    with ctx.timed("stage1_probe"):
        f = ctx.results["feats"]
        x, y = f["train"], np.array([p.label for p in s.train])
        if added:
            x = np.concatenate([x, _features(ctx, "selected", added)])
            y = np.concatenate([y, [p.label for p in added]])
        val = {
            name: (f[f"val_{name}"], np.array([p.label for p in pairs]))
            for name, pairs in (("id", s.val_id), ("ood", s.val_ood))
            if pairs
        }
        best = select_probe(x, y, val, cfg.probe, cfg.interpolate.objective, cfg.seed)
        set_head(ctx.model, best["weight"], best["bias"])
        np.savez(ctx.run_dir / "probe_head.npz", weight=best["weight"])
        ctx.results["probe_val"] = {"l2": best["l2"], "pairs": len(y), "dasa_pairs": len(added), **best["val"]}
        log.info("probe: picked l2=%g", best["l2"])


def dasa(ctx: Context, labels_csv: Path | None = None) -> list[Pair]:
    """Score the pool, select under the budget, return the newly labelled pairs."""
    from training.ood import DasaScorer, auroc
    from training.selection import import_labels, reveal, select_dasa, select_random

    cfg, s, dc = ctx.cfg, ctx.splits, ctx.cfg.dasa
    if not dc.enabled or not s.pool:
        return []
    with ctx.timed("dasa"):
        pool = hide_labels(s.pool)
        scores = None
        if dc.strategy == "dasa":
            f = ctx.results["feats"]
            pool_feats = _features(ctx, "pool", pool)
            scorer = DasaScorer.fit(
                f["train"],
                np.array([p.label for p in s.train]),
                f["val_id"],
                dc.shrinkage,
                dc.knn_k,
                dc.mahalanobis_weight,
                dc.knn_weight,
            )
            all_scores = scorer.scores(pool_feats)
            is_ood = np.array([p.source in s.ood_sources for p in pool])
            ctx.results["ood_auroc"] = {k: auroc(v, is_ood) for k, v in all_scores.items()}
            log.info("OOD AUROC (pool, OOD source vs ID): %s", ctx.results["ood_auroc"])
            scores = all_scores["combined"]
            idx = select_dasa(pool, scores, dc.budget, dc.per_query_cap)
        else:
            idx = select_random(pool, dc.budget, dc.per_query_cap, cfg.seed)
        chosen = [pool[i] for i in idx]
        chosen_scores = [float(scores[i]) if scores is not None else float("nan") for i in idx]
        ctx.results["selection"] = {
            "strategy": dc.strategy,
            "budget": dc.budget,
            "selected": len(chosen),
            "ood_fraction": float(np.mean([p.source in s.ood_sources for p in chosen])) if chosen else 0.0,
            "queries": len({p.query for p in chosen}),
        }
        from training.selection import export_for_labelling

        export_for_labelling(chosen, chosen_scores, ctx.run_dir / "selection.csv")
        if labels_csv is not None:
            return []
        if dc.label_source == "import":
            path = ctx.run_dir / "imported_labels.csv"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: run `darl select --config … --export FILE`, label FILE, "
                    "then `darl select --config … --import FILE`"
                )
            added = import_labels(path, s.pool)
        else:
            added = reveal(chosen, {p.pair_id: p for p in s.pool})
        ctx.results["selection"]["labelled"] = len(added)
        log.info("selection: %s", ctx.results["selection"])
        return added


def _run_id(cfg: TrainConfig, added: list[Pair]) -> str:
    """What a stage-2 checkpoint may be resumed by: the same config and the same DASA pairs."""
    import hashlib

    blob = json.dumps(cfg.for_manifest(), sort_keys=True) + "|" + ",".join(p.pair_id for p in added)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage2(ctx: Context, added: list[Pair], stop_after_steps: int | None = None) -> tuple[dict, dict] | None:
    """Fine-tune from the (probed) head; returns the (stage-1, stage-2) trainable states."""
    from training.finetune import finetune
    from training.model import pad_id, prepare_trainable, trainable_state

    cfg, fc = ctx.cfg, ctx.cfg.finetune
    if fc.method == "none":
        return None
    ctx.model = prepare_trainable(ctx.model, fc.method, fc.lora)
    s1 = trainable_state(ctx.model)
    train = subsample(ctx.splits.train, fc.max_train_pairs, cfg.seed + 10) + list(added)
    with ctx.timed("stage2_finetune"):
        info = finetune(
            ctx.model,
            _seqs(ctx, train),
            [p.label for p in train],
            fc,
            pad_id(ctx.tok),
            cfg.seed,
            ckpt_dir=ctx.run_dir / "stage2",
            stop_after_steps=stop_after_steps,
            progress=ctx.progress,
            run_id=_run_id(cfg, added),
        )
    if info["steps"] < info.get("total_steps", info["steps"]):
        raise InterruptedError(f"stage 2 stopped at step {info['steps']}/{info['total_steps']}")
    hist = info["history"]
    ctx.results["stage2"] = {
        "train_pairs": len(train),
        "dasa_pairs": len(added),
        "steps": info["steps"],
        "pairs_per_s": info.get("pairs_per_s"),
        "final_loss": hist[-1]["loss"] if hist else None,
        "first_loss": hist[0]["loss"] if hist else None,
    }
    (ctx.run_dir / "stage2_history.json").write_text(json.dumps(hist) + "\n")
    return s1, trainable_state(ctx.model)


def stage3(ctx: Context, states: tuple[dict, dict] | None) -> None:
    """Pick the interpolation coefficient on ID+OOD val and apply it."""
    from relevance_core.postprocess import probs_from_logits
    from training.evaluate import metrics_for
    from training.interpolate import interpolate_state, pick_coefficient
    from training.metrics import objective
    from training.model import load_trainable_state
    from training.probe import head_logits

    cfg = ctx.cfg
    if states is None:
        return
    s1, s2 = states
    if not cfg.interpolate.enabled:
        ctx.results["interpolation"] = {"coef": 1.0, "curve": []}
        return
    s = ctx.splits

    feats = ctx.results.get("feats")
    head_key = next(k for k in s1 if k.endswith("score.weight"))
    has_bias = any(k.endswith("score.bias") for k in s1)

    val_probs: dict[float, dict[str, np.ndarray]] = {}

    def evaluate(c: float) -> tuple[float, dict]:
        load_trainable_state(ctx.model, interpolate_state(s1, s2, c))
        m = {}
        for name, pairs in (("id", s.val_id), ("ood", s.val_ood)):
            if pairs and c == 0.0 and feats is not None and cfg.finetune.method == "lora" and not has_bias:
                # Stage 1 = frozen backbone + stage-1 head: its val logits are the cached features
                # times that head, no forward pass needed.
                probs = probs_from_logits(head_logits(feats[f"val_{name}"], s1[head_key].float().numpy()))
            elif pairs:
                probs = _predict(ctx, pairs, f"val c={c:g} {name}")
            else:
                continue
            val_probs.setdefault(c, {})[name] = probs
            full = metrics_for(pairs, probs, cfg.eval.ece_bins)
            m[name] = {k: full[k] for k in ("accuracy", "macro_f1", "ece", "qwk")}
        return objective(cfg.interpolate.objective, m.get("id"), m.get("ood")), m

    with ctx.timed("stage3_interpolate"):
        best, curve = pick_coefficient(cfg.interpolate.grid, evaluate)
        load_trainable_state(ctx.model, interpolate_state(s1, s2, best))
    ctx.results["interpolation"] = {"coef": best, "objective": cfg.interpolate.objective, "curve": curve}
    log.info("interpolation: best coef %.2f (%s)", best, [(r["coef"], round(r["objective"], 4)) for r in curve])
    _plot_curve(ctx.run_dir / "interpolation.png", curve)
    if cfg.interpolate.temperature and val_probs.get(best):
        _calibrate(ctx, val_probs[best])


def _calibrate(ctx: Context, probs_by_domain: dict[str, np.ndarray]) -> None:
    """Temperature scaling on ID+OOD val, folded into the head (argmax unchanged)."""
    from relevance_core.postprocess import probs_from_logits
    from training.calibration import fit_temperature, fold_temperature
    from training.metrics import compute_metrics
    from training.model import classification_head

    s, bins = ctx.splits, ctx.cfg.eval.ece_bins
    doms = [d for d in ("id", "ood") if d in probs_by_domain]
    labels = {"id": np.array([p.label for p in s.val_id]), "ood": np.array([p.label for p in s.val_ood])}
    t = fit_temperature(np.concatenate([probs_by_domain[d] for d in doms]), np.concatenate([labels[d] for d in doms]))
    fold_temperature(classification_head(ctx.model), t)
    report: dict[str, Any] = {"temperature": round(t, 4)}
    for d in doms:
        scaled = probs_from_logits(np.log(np.clip(probs_by_domain[d], 1e-12, 1.0)) / t)
        report[f"val_ece_{d}"] = {
            "before": compute_metrics(probs_by_domain[d], labels[d], n_bins=bins)["ece"],
            "after": compute_metrics(scaled, labels[d], n_bins=bins)["ece"],
        }
    ctx.results["calibration"] = report
    log.info("temperature scaling: %s", report)


def _plot_curve(path: Path, curve: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = [r["coef"] for r in curve]
    for dom in ("id", "ood"):
        if all(dom in r for r in curve):
            ax.plot(xs, [r[dom]["macro_f1"] for r in curve], "o-", label=f"{dom} val macro-F1")
    ax.plot(xs, [r["objective"] for r in curve], "k--", label="objective")
    ax.set_xlabel("interpolation coefficient (0 = stage 1, 1 = stage 2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_test(ctx: Context) -> dict[str, Any]:
    from training.evaluate import write_report

    cfg, s = ctx.cfg, ctx.splits
    with ctx.timed("test_eval"):
        groups = {}
        for name, pairs in (("id", s.test_id), ("ood", s.test_ood)):
            if pairs:
                groups[name] = (pairs, _predict(ctx, pairs, f"test {name}"))
        return write_report(ctx.run_dir / "eval", groups, f"{cfg.name}: test metrics", cfg.eval.ece_bins)


def machine() -> str:
    """CPU model and core count (and GPU, if any), for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            out += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return out


def run(
    cfg: TrainConfig, export: bool = True, progress: bool = True, stop_after_steps: int | None = None
) -> dict[str, Any]:
    """All stages; returns the summary also written to ``<run_dir>/summary.json``."""
    from training.export import export_artifact

    t0 = time.perf_counter()
    ctx = prepare(cfg, progress)
    stage1(ctx)
    added = dasa(ctx)
    if cfg.probe.enabled and cfg.probe.dasa_pairs:
        fit_head(ctx, added)
    states = stage2(ctx, added, stop_after_steps)
    stage3(ctx, states)
    test = evaluate_test(ctx)
    keep = ("n", "accuracy", "macro_f1", "f1_per_class", "ece", "qwk", "ndcg@10", "rmse_hd")
    metrics = {
        "id": {k: test["id"][k] for k in keep} if "id" in test else None,
        "ood": {k: test["ood"][k] for k in keep} if "ood" in test else None,
        "id_split": f"{cfg.data.id_files} {cfg.data.test_split}",
        "ood_split": f"{cfg.data.ood_files} {cfg.data.test_split}",
        "probe_val": ctx.results.get("probe_val"),
        "ood_auroc": ctx.results.get("ood_auroc"),
        "selection": ctx.results.get("selection"),
        "stage2": ctx.results.get("stage2"),
        "interpolation": ctx.results.get("interpolation"),
        "calibration": ctx.results.get("calibration"),
    }
    ctx.timings["total"] = round(time.perf_counter() - t0, 1)
    metrics["timings_s"] = dict(ctx.timings)
    metrics["machine"] = machine()
    fp = data_fingerprint(cfg, ctx.splits)
    if export:
        export_artifact(
            ctx.model,
            ctx.tok,
            cfg.output_path,
            cfg.name,
            cfg.base_ref(),
            cfg.max_length,
            cfg.for_manifest(),
            fp,
            metrics,
            head_only=cfg.finetune.method == "none",
            num_layers=cfg.num_layers,
        )
        log.info("wrote artifact %s", cfg.output_path)
    summary = {
        "name": cfg.name,
        "artifact": str(cfg.output_path) if export else None,
        "data_fingerprint": fp,
        **metrics,
    }
    (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary | {"_context": ctx}
