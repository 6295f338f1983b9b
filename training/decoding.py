"""Decoding study: how a probability vector becomes a label, measured (issue 12's decoding lever).

The served label is the argmax of the probabilities. Rules fitted on validation pairs could decode
better: per-class offsets on the log-probabilities (servable as a head bias), two thresholds on the
expected grade (the Kaggle CrowdFlower winners' CDF-style decoding), or offsets fitted by likelihood
(a prior correction of the balanced class weights, folded into the probabilities); and for the
score, per-grade values that the expected grade weighs (least squares on Home Depot raw grades; the
label is untouched). Each is fitted on
the validation pairs of both domains and scored on the whole test sets::

    python -m training.decoding pairs --config configs/darl-smollm2.yaml --out /tmp/dec/pairs.csv
    darl score --model model_artifacts/darl-smollm2 --in /tmp/dec/pairs.csv --out /tmp/dec/scored.csv --engine torch
    python -m training.decoding report --scored /tmp/dec/scored.csv --out docs/decoding.md \
        --model model_artifacts/darl-smollm2
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from relevance_core.labels import LABELS
from training.metrics import compute_metrics

SETS = ("val_id", "val_ood", "test_id", "test_ood")
OFFSETS = np.round(np.arange(-2.0, 2.001, 0.1), 2)  # grid of log-probability offsets (strong = 0)
CUTS = np.round(np.arange(0.0, 2.001, 0.02), 3)  # grid of expected-grade thresholds (0..2 scale)
Data = dict[str, tuple[np.ndarray, np.ndarray, list[float | None]]]


def write_pairs(config: Path, out: Path, val_per_domain: int = 2000) -> None:
    """Validation (``val_per_domain`` per domain: more than training uses, to fit rules) and test pairs."""
    from training.config import load_config
    from training.data import load_splits

    s = load_splits(load_config(config, {"data": {"max_val_per_domain": val_per_domain}}))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "query", "item_title", "item_description", "label", "raw_relevance"])
        for name in SETS:
            for p in getattr(s, name):
                w.writerow([name, p.query, p.title, p.description, p.label, p.raw_relevance])


def read_scored(path: Path) -> Data:
    """``darl score`` output → per set: probabilities, labels, Home Depot raw grades."""
    rows: dict[str, list[dict[str, str]]] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["set"], []).append(r)
    out: Data = {}
    for name, rs in rows.items():
        p = np.array([[float(r[f"p_{label}"]) for label in LABELS] for r in rs])
        raw = [float(r["raw_relevance"]) if r["raw_relevance"] not in ("", "None") else None for r in rs]
        out[name] = (p, np.array([int(r["label"]) for r in rs]), raw)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import cohen_kappa_score, f1_score

    if metric == "macro_f1":
        return float(f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0))
    return float(cohen_kappa_score(y, pred, labels=[0, 1, 2], weights="quadratic"))


def _best(candidates: list, decode: Callable, metric: str, data: Data) -> object:
    """The candidate whose decoding maximises the mean of ID and OOD validation ``metric``."""

    def value(c: object) -> float:
        return float(np.mean([_score(metric, data[n][1], decode(data[n][0], c)) for n in ("val_id", "val_ood")]))

    return max(candidates, key=value)


def label_offsets(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.log(p + 1e-12) + b).argmax(1)


def grade_cuts(p: np.ndarray, cuts: tuple[float, float]) -> np.ndarray:
    return np.digitize(p @ np.arange(len(LABELS)), cuts)


def likelihood_offsets(data: Data) -> np.ndarray:
    """Offsets that minimise validation cross-entropy (both domains weighted alike)."""
    import torch

    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    sets = [(torch.tensor(np.log(data[n][0] + 1e-12)), torch.tensor(data[n][1])) for n in ("val_id", "val_ood")]
    opt = torch.optim.LBFGS([b], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        full = torch.cat([b, torch.zeros(1, dtype=torch.float64)])
        loss = sum(torch.nn.functional.cross_entropy(lp + full, y) for lp, y in sets) / len(sets)
        loss.backward()
        return loss

    opt.step(closure)
    return np.array([*b.detach().numpy(), 0.0])


def grade_values(data: Data) -> np.ndarray:
    """Per-grade values on Home Depot's 1–3 scale that minimise validation RMSE of ``p @ values``: the
    expected grade with each label standing for the raw grades it covers, not for 1, 2 and 3."""
    p, _, raw = data["val_id"]
    keep = np.array([r is not None for r in raw])
    values, *_ = np.linalg.lstsq(p[keep], np.array([r for r in raw if r is not None]), rcond=None)
    return values


def rmse_with(p: np.ndarray, raw: list[float | None], values: np.ndarray) -> float:
    keep = np.array([r is not None for r in raw])
    target = np.array([r for r in raw if r is not None])
    return float(np.sqrt(np.mean((p[keep] @ values - target) ** 2)))


def study(data: Data) -> list[tuple[str, str, dict[str, dict]]]:
    """(rule, fitted parameters, test metrics per domain) for every decoding rule."""
    offsets = [np.array([a, b, 0.0]) for a, b in itertools.product(OFFSETS, OFFSETS)]
    cuts = [(a, b) for a, b in itertools.product(CUTS, CUTS) if a < b]
    rules: list[tuple[str, str, Callable | None, Callable | None]] = [("argmax (served)", "–", None, None)]
    values = grade_values(data)
    for metric in ("macro_f1", "qwk"):
        b = _best(offsets, label_offsets, metric, data)
        rules.append(
            (
                f"label offsets, fitted for {metric}",
                f"{b[0]:+.1f}, {b[1]:+.1f}",
                lambda p, b=b: label_offsets(p, b),
                None,
            )
        )
        c = _best(cuts, grade_cuts, metric, data)
        rules.append(
            (f"grade thresholds, fitted for {metric}", f"{c[0]:.2f}, {c[1]:.2f}", lambda p, c=c: grade_cuts(p, c), None)
        )
    nll = likelihood_offsets(data)
    rules.append(
        (
            "likelihood offsets folded into p",
            f"{nll[0]:+.2f}, {nll[1]:+.2f}",
            None,
            lambda p: _softmax(np.log(p + 1e-12) + nll),
        )
    )
    rules.append(("grade values, fitted for rmse (score only)", ", ".join(f"{v:.2f}" for v in values), None, None))
    out = []
    for name, params, decide, transform in rules:
        per_domain = {}
        for n in ("test_id", "test_ood"):
            p, y, raw = data[n]
            q = transform(p) if transform else p
            m = compute_metrics(q, y, raw_relevance=raw if n == "test_id" else None)
            if decide is not None:
                pred = decide(p)
                m.update(
                    accuracy=float((pred == y).mean()), macro_f1=_score("macro_f1", y, pred), qwk=_score("qwk", y, pred)
                )
            if name.startswith("grade values") and n == "test_id":
                m["rmse_hd"] = rmse_with(p, raw, values)
            per_domain[n] = m
        out.append((name, params, per_domain))
    return out


def markdown(results: list[tuple[str, str, dict[str, dict]]], data: Data, scored: Path, scored_by: str = "") -> str:
    from relevance_core.host import machine

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    sizes = ", ".join(f"{n} {len(data[n][1])}" for n in SETS)
    lines = [
        "# Decoding study",
        "",
        f"Generated by `python -m training.decoding report --scored {scored.name}` on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} ({machine()}); the commands are in "
        "`training/decoding.py`. Rules fitted on validation (mean of ID and OOD), scored on the whole test "
        f"sets ({sizes}). ID = Home Depot, OOD = CrowdFlower.{scored_by}",
        "",
        "| rule | fitted | ID acc | ID macro-F1 | ID kappa | ID RMSE | ID ECE "
        "| OOD acc | OOD macro-F1 | OOD kappa | OOD ECE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, params, m in results:
        i, o = m["test_id"], m["test_ood"]
        cells = [
            i["accuracy"],
            i["macro_f1"],
            i["qwk"],
            i["rmse_hd"],
            i["ece"],
            o["accuracy"],
            o["macro_f1"],
            o["qwk"],
            o["ece"],
        ]
        lines.append(f"| {name} | {params} | " + " | ".join(f(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.decoding", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs", help="write the validation and test pairs to score")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("report", help="fit the rules on the scored validation pairs, score them on test")
    p.add_argument("--scored", type=Path, required=True, help="`darl score` output of the `pairs` file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, help="the artifact that `darl score` ran, named in the page")
    p.add_argument("--dtype", default="auto", help="the precision `darl score` ran in (its log says; auto: as here)")
    args = parser.parse_args(argv)
    if args.cmd == "pairs":
        write_pairs(args.config, args.out)
        return
    data = read_scored(args.scored)
    scored_by = ""
    if args.model:
        from relevance_core.manifest import read_manifest
        from relevance_core.precision import cpu_prefers_bf16

        m = read_manifest(args.model)
        dtype = args.dtype if args.dtype != "auto" else "bfloat16" if cpu_prefers_bf16() else "float32"
        scored_by = f" Probabilities of `{m.name}` (version {m.version}) from `darl score --engine torch` in {dtype}."
    args.out.write_text(markdown(study(data), data, args.scored, scored_by))


if __name__ == "__main__":
    main()
