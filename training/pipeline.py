"""``darl train``: the DaRL stages end to end, each stage's output kept in the run dir.

data → stage 1 (cached features, linear probe) → DASA (OOD scores, selection,
labels) → stage 2 (LoRA/full fine-tune, resumable) → stage 3 (WiSE coefficient
on ID+OOD val) → test evaluation → artifact export. Re-running after a kill
reuses the cached features and resumes stage 2 from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relevance_core.host import machine
from training.config import TrainConfig
from training.data import (
    Pair,
    Splits,
    data_fingerprint,
    hide_labels,
    load_splits,
    render_seqs,
    subsample,
    write_pairs_csv,
)
from training.provenance import run_id
from training.ranking import training_foreign_pairs

if TYPE_CHECKING:
    from training.interpolate import Interpolation
    from training.selection import Selection

log = logging.getLogger(__name__)


@dataclass
class StageResults:
    """What each stage leaves for the later ones and for summary.json; None: the stage did not run."""

    feats: dict[str, np.ndarray] | None = None  # stage-1 features of train, val_id, val_ood
    probe_val: dict[str, Any] | None = None
    selection: Selection | None = None
    stage2: dict[str, Any] | None = None
    interpolation: Interpolation | None = None
    calibration: dict[str, Any] | None = None

    def metrics(self) -> dict[str, Any]:
        """The stages' records under their summary.json / manifest keys."""
        sel = self.selection
        return {
            "probe_val": self.probe_val,
            "ood_auroc": sel.ood_auroc if sel else None,
            "selection": sel.report if sel else None,
            "stage2": self.stage2,
            "interpolation": self.interpolation.report() if self.interpolation else None,
            "calibration": self.calibration,
        }


@dataclass
class Context:
    cfg: TrainConfig
    splits: Splits
    model: Any = None
    tok: Any = None
    base_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    results: StageResults = field(default_factory=StageResults)
    progress: bool = True
    trunk_depth: int | None = None  # frozen layers whose states are cached (finetune.cache_trunk)
    trunks: dict[str, Any] = field(default_factory=dict)

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
    if cfg.finetune.cache_trunk:
        n = ctx.model.config.num_hidden_layers
        ctx.trunk_depth = n - min(n, cfg.finetune.trainable_top() or n)
        log.info("trunk: the first %d of %d layers are frozen and cached", ctx.trunk_depth, n)
    return ctx


def _seqs(ctx: Context, pairs: list[Pair]) -> list[tuple[int, ...]]:
    return render_seqs(ctx.tok, ctx.cfg.max_length, pairs, ctx.cfg.prompt_template)


def _identity(ctx: Context) -> str:
    # The template needs no part here: cache keys hash the rendered token ids themselves.
    return f"{ctx.base_dir}|{ctx.cfg.base_ref().sha256}|{ctx.cfg.max_length}|layers={ctx.cfg.num_layers}"


def _cache_dir(ctx: Context) -> Path:
    return ctx.cfg.path(ctx.cfg.features.cache_dir) if ctx.cfg.features.cache_dir else ctx.run_dir / "features"


def _trunk(ctx: Context, name: str, pairs: list[Pair]) -> Any:
    """The frozen trunk's states of ``pairs`` (computed once, then read from the content-keyed cache)."""
    from training.trunk import build_trunk_cache

    if name not in ctx.trunks or len(ctx.trunks[name][0]) != len(pairs) or ctx.trunks[name][0] != pairs:
        cache = build_trunk_cache(
            _cache_dir(ctx),
            name,
            ctx.model,
            _seqs(ctx, pairs),
            ctx.trunk_depth,
            _identity(ctx),
            ctx.cfg.features.batch_size,
            ctx.progress,
            ctx.cfg.features.autocast,
        )
        ctx.trunks[name] = (list(pairs), cache)
    return ctx.trunks[name][1]


def _features(ctx: Context, name: str, pairs: list[Pair]) -> np.ndarray:
    from training.features import cached_features
    from training.model import pad_id

    if ctx.trunk_depth is not None:
        from training.trunk import predict_top

        _, feats = predict_top(
            ctx.model,
            _trunk(ctx, name, pairs),
            ctx.trunk_depth,
            ctx.cfg.eval.batch_size,
            True,
            f"features {name}",
            ctx.progress,
            ctx.cfg.features.autocast,
        )
        return feats
    return cached_features(
        _cache_dir(ctx),
        name,
        ctx.model,
        _seqs(ctx, pairs),
        pad_id(ctx.tok),
        ctx.cfg.features.batch_size,
        ctx.cfg.features.autocast,
        _identity(ctx),
    )


def _predict(ctx: Context, pairs: list[Pair], desc: str, name: str) -> np.ndarray:
    """Probabilities of the model as it stands (eval batch size and autocast of the config).

    ``name`` names the pairs' trunk cache (``val_id``, ``test_id``, ...) when the trunk is cached.
    """
    from relevance_core.postprocess import probs_from_logits
    from training.evaluate import merged, predict

    cfg = ctx.cfg
    if ctx.trunk_depth is not None:
        from training.trunk import predict_top

        trunk = _trunk(ctx, name, pairs)
        with merged(ctx.model):
            logits, _ = predict_top(
                ctx.model, trunk, ctx.trunk_depth, cfg.eval.batch_size, False, desc, ctx.progress, cfg.features.autocast
            )
        return probs_from_logits(logits)
    return predict(
        ctx.model,
        ctx.tok,
        pairs,
        cfg.max_length,
        cfg.eval.batch_size,
        cfg.features.autocast,
        desc=desc,
        progress=ctx.progress,
        template=cfg.prompt_template,
    )


def stage1(ctx: Context) -> None:
    """Features of train/val(/pool) once, then the probe on the frozen backbone.

    With ``probe.dasa_pairs`` the probe waits for DASA (``run`` calls ``fit_head`` after it).
    """
    cfg, s = ctx.cfg, ctx.splits
    if not (cfg.probe.enabled or (cfg.dasa.enabled and cfg.dasa.strategy == "dasa")):
        return
    with ctx.timed("stage1_features"):
        ctx.results.feats = {
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
        f = ctx.results.feats
        assert f is not None, "fit_head runs after stage1's features"
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
        ctx.results.probe_val = {"l2": best["l2"], "pairs": len(y), "dasa_pairs": len(added), **best["val"]}
        log.info("probe: picked l2=%g", best["l2"])


def dasa(ctx: Context, labels_csv: Path | None = None) -> list[Pair]:
    """Score the pool, select under the budget, return the newly labelled pairs (``training.selection``).

    With ``labels_csv`` (``darl select --export``) it stops after writing ``selection.csv``.
    """
    from training.selection import DasaFeatures, run_selection

    cfg, s, dc = ctx.cfg, ctx.splits, ctx.cfg.dasa
    if not dc.enabled or not s.pool:
        return []
    with ctx.timed("dasa"):
        feats = None
        f = ctx.results.feats
        if dc.strategy == "dasa" and f is not None:
            feats = DasaFeatures(f["train"], f["val_id"], _features(ctx, "pool", hide_labels(s.pool)))
        ctx.results.selection = run_selection(
            s.pool, s.train, dc, cfg.seed, s.ood_sources, ctx.run_dir, feats, export_only=labels_csv is not None
        )
    added = ctx.results.selection.added
    if added:  # the labelled pairs as training data for the baselines' rows (`data.extra_files`)
        write_pairs_csv([replace(p, split=cfg.data.train_split) for p in added], ctx.run_dir / "dasa_pairs.csv")
    return added


def stage2(ctx: Context, added: list[Pair], stop_after_steps: int | None = None) -> tuple[dict, dict] | None:
    """Fine-tune from the (probed) head; returns the (stage-1, stage-2) trainable states."""
    from training.finetune import finetune
    from training.model import pad_id, prepare_trainable, trainable_state

    cfg, fc = ctx.cfg, ctx.cfg.finetune
    if fc.method == "none":
        return None
    ctx.model = prepare_trainable(ctx.model, fc.method, fc.lora, fc.trainable_top())
    s1 = trainable_state(ctx.model)
    train = subsample(ctx.splits.train, fc.max_train_pairs, cfg.seed + 10)
    # foreign items for the train queries from other train queries, and for the DASA queries (mostly
    # the OOD domain) from other DASA queries: both domains learn that an unrelated item is irrelevant
    foreign = training_foreign_pairs(train, fc.foreign_per_query, cfg.seed + 11) + training_foreign_pairs(
        list(added), fc.foreign_per_query, cfg.seed + 12
    )
    pairs = train + list(added) + foreign
    with ctx.timed("stage2_finetune"):
        inputs: Any = _seqs(ctx, pairs)
        if ctx.trunk_depth is not None:
            from training.trunk import JoinedTrunk

            index = {p.pair_id: i for i, p in enumerate(ctx.splits.train)}
            parts = [(_trunk(ctx, "train", ctx.splits.train), [index[p.pair_id] for p in train])]
            for name, extra in (("selected", list(added)), ("train_foreign", foreign)):
                if extra:
                    parts.append((_trunk(ctx, name, extra), range(len(extra))))
            inputs = JoinedTrunk(parts)
        info = finetune(
            ctx.model,
            inputs,
            [p.label for p in pairs],
            fc,
            pad_id(ctx.tok),
            cfg.seed,
            ckpt_dir=ctx.run_dir / "stage2",
            stop_after_steps=stop_after_steps,
            progress=ctx.progress,
            run_id=run_id(cfg, added),
            trunk_depth=ctx.trunk_depth,
            on_step=_curve_hook(ctx, fc.batch_size * fc.grad_accum),
            targets=soft_targets(pairs) if fc.loss.soft_targets else None,
            groups=query_groups(pairs),
        )
    if info["steps"] < info.get("total_steps", info["steps"]):
        raise InterruptedError(f"stage 2 stopped at step {info['steps']}/{info['total_steps']}")
    hist = info["history"]
    ctx.results.stage2 = {
        "train_pairs": len(pairs),
        "dasa_pairs": len(added),
        "foreign_pairs": len(foreign),
        "trunk_depth": ctx.trunk_depth,
        "steps": info["steps"],
        "pairs_per_s": info.get("pairs_per_s"),
        "final_loss": hist[-1]["loss"] if hist else None,
        "first_loss": hist[0]["loss"] if hist else None,
        "curve": [{"step": h["step"], **h["eval"]} for h in hist if "eval" in h],
    }
    (ctx.run_dir / "stage2_history.json").write_text(json.dumps(hist) + "\n")
    return s1, trainable_state(ctx.model)


def soft_targets(pairs: list[Pair]) -> np.ndarray:
    from training.losses import soft_target

    return np.array([soft_target(p.label, p.raw_relevance, p.source) for p in pairs], dtype=np.float32)


def query_groups(pairs: list[Pair]) -> list[int]:
    """An integer id per pair: its query, so a foreign item groups with the query it was drawn for."""
    ids: dict[str, int] = {}
    return [ids.setdefault(p.query, len(ids)) for p in pairs]


def _curve_hook(ctx: Context, pairs_per_step: int) -> Any:
    """The learning curve: val macro-F1, kappa and inversion rate (ID, OOD) at ``eval.curve_points``
    evenly spaced steps of stage 2, with the pairs seen and the wall time so far."""
    from training.evaluate import metrics_for, with_candidates

    ec, s = ctx.cfg.eval, ctx.splits
    if ec.curve_points <= 0:
        return None
    sets = {
        name: with_candidates(pairs, ec.curve_foreign_per_query, ec.candidate_seed)
        for name, pairs in (("id", s.val_id), ("ood", s.val_ood))
        if pairs
    }
    t0, spent = time.perf_counter(), [0.0]

    def hook(step: int, total: int) -> dict[str, Any] | None:
        if step not in {max(1, round(total * i / ec.curve_points)) for i in range(1, ec.curve_points + 1)}:
            return None
        t = time.perf_counter()
        rec: dict[str, Any] = {"pairs_seen": step * pairs_per_step, "wall_s": round(t - t0, 1)}
        for name, pairs in sets.items():
            m = metrics_for(pairs, _predict(ctx, pairs, f"curve {name}", f"curve_val_{name}"), ec.ece_bins)
            rec[name] = {k: m[k] for k in ("macro_f1", "qwk", "rmse_hd", "inversion_rate")}
        spent[0] += time.perf_counter() - t
        rec["eval_s"] = round(spent[0], 1)
        log.info("curve: %s", rec)
        return rec

    return hook


def stage3(ctx: Context, states: tuple[dict, dict] | None) -> None:
    """Pick the interpolation coefficient on ID+OOD val and apply it (``training.interpolate``), then,
    with ``interpolate.temperature``, fold a temperature fitted on ID+OOD val into the head (``training.calibration``).
    """
    from training.interpolate import Interpolation, plot_curve, run_interpolation

    cfg = ctx.cfg
    if states is None:
        return
    s1, s2 = states
    if not cfg.interpolate.enabled:
        ctx.results.interpolation = Interpolation(coef=1.0, curve=[])
        return
    s, f = ctx.splits, ctx.results.feats
    # Stage 1 is the frozen backbone + probed head only under LoRA: then c = 0 needs no forward pass.
    stage1_feats = {"id": f["val_id"], "ood": f["val_ood"]} if f is not None and cfg.finetune.method == "lora" else None

    def predict(pairs: list[Pair], desc: str, name: str) -> np.ndarray:
        return _predict(ctx, pairs, desc, name)

    with ctx.timed("stage3_interpolate"):
        interp = run_interpolation(
            ctx.model,
            s1,
            s2,
            predict,
            {"id": s.val_id, "ood": s.val_ood},
            cfg.interpolate,
            cfg.eval.ece_bins,
            stage1_feats,
        )
    ctx.results.interpolation = interp
    curve = interp.curve
    log.info("interpolation: best coef %.2f (%s)", interp.coef, [(r["coef"], round(r["objective"], 4)) for r in curve])
    plot_curve(ctx.run_dir / "interpolation.png", curve)
    if cfg.interpolate.temperature and interp.val_probs:
        from training.calibration import calibrate
        from training.model import classification_head

        labels = {"id": np.array([p.label for p in s.val_id]), "ood": np.array([p.label for p in s.val_ood])}
        ctx.results.calibration = calibrate(classification_head(ctx.model), interp.val_probs, labels, cfg.eval.ece_bins)
        log.info("temperature scaling: %s", ctx.results.calibration)


def evaluate_test(ctx: Context) -> dict[str, Any]:
    from training.evaluate import with_candidates, write_report

    cfg, s = ctx.cfg, ctx.splits
    with ctx.timed("test_eval"):
        groups = {}
        for name, pairs in (("id", s.test_id), ("ood", s.test_ood)):
            if pairs:
                scored = with_candidates(pairs, cfg.eval.foreign_per_query, cfg.eval.candidate_seed)
                groups[name] = (scored, _predict(ctx, scored, f"test {name}", f"test_{name}"))
        return write_report(ctx.run_dir / "eval", groups, f"{cfg.name}: test metrics", cfg.eval.ece_bins)


@dataclass
class TrainedRun:
    """``train``'s outcome: the summary, and the trained model with its tokenizer and splits for in-process use."""

    summary: dict[str, Any]
    model: Any
    tok: Any
    splits: Splits


def train(
    cfg: TrainConfig, export: bool = True, progress: bool = True, stop_after_steps: int | None = None
) -> TrainedRun:
    """All stages; the summary is also written to ``<run_dir>/summary.json``."""
    from training.evaluate import summarize
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
    metrics = {
        **summarize(test),
        "id_split": f"{cfg.data.id_files} {cfg.data.test_split}",
        "ood_split": f"{cfg.data.ood_files} {cfg.data.test_split}",
        **ctx.results.metrics(),
    }
    ctx.timings["total"] = round(time.perf_counter() - t0, 1)
    metrics["timings_s"] = dict(ctx.timings)
    metrics["machine"] = machine()
    from training.features import resolve_dtype

    metrics["precision"] = resolve_dtype(cfg.finetune.autocast)  # what `auto` measured on this machine
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
            template_version=cfg.prompt_template,
        )
        log.info("wrote artifact %s", cfg.output_path)
    summary = {
        "name": cfg.name,
        "artifact": str(cfg.output_path) if export else None,
        "data_fingerprint": fp,
        "prompt_template": cfg.prompt_template,
        **metrics,
    }
    (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return TrainedRun(summary, ctx.model, ctx.tok, ctx.splits)


def run(
    cfg: TrainConfig, export: bool = True, progress: bool = True, stop_after_steps: int | None = None
) -> dict[str, Any]:
    """All stages; returns the summary also written to ``<run_dir>/summary.json`` (``train`` keeps the model too)."""
    return train(cfg, export, progress, stop_after_steps).summary
