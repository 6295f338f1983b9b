"""``darl train | select | eval | experiment``: the training package's commands.

Registered into the ``darl`` CLI by ``darl.cli``, which imports this module at start:
it imports nothing heavy, the handlers do, so ``darl --help`` stays fast. Errors a user
can fix (a missing file, a bad config: ``training.config.ConfigError``) are left to
``darl.cli``'s handler, which prints them in one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from relevance_core.prompt import TEMPLATES  # light: no tokenizer or torch

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run the DaRL stages end to end and export an artifact",
        description="Linear probe → DASA → fine-tune → WiSE interpolation → test eval → "
        "model_artifacts/<name>/. Rerunning after a kill reuses cached features and "
        "resumes fine-tuning from its last checkpoint.",
    )
    _config_args(p)
    p.add_argument("--no-export", action="store_true", help="train and evaluate, write no artifact")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "select",
        help="DASA selection: export pairs to label, or import labelled ones",
        description="Scores the unlabeled pool with the OOD detectors and selects the budget. "
        "--export writes the selected pairs as CSV with an empty label column; --import "
        "validates an annotated CSV and stores it in the run dir for `darl train` "
        "with dasa.label_source=import.",
    )
    _config_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--export", type=Path, metavar="CSV", help="write the selected pool pairs for labelling")
    g.add_argument("--import", dest="import_", type=Path, metavar="CSV", help="read labelled pairs back")
    p.set_defaults(func=_select)

    p = sub.add_parser("eval", help="evaluate an artifact on labelled data: metrics, report, plots")
    p.add_argument("--model", type=Path, required=True, help="artifact directory")
    p.add_argument("--data", type=Path, required=True, action="append", help="CSV/JSONL (repeatable)")
    p.add_argument("--split", help="only rows of this split (e.g. test)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--max-pairs", type=int, help="seeded subsample per source, for quick checks")
    p.add_argument(
        "--foreign-per-query",
        type=int,
        default=20,
        help="candidate-set ranking: items of other queries added per query as irrelevant (0 = off)",
    )
    p.add_argument("--candidate-seed", type=int, default=0, help="seed of the foreign-item draw")
    p.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="autocast dtype (auto: bf16 only where bf16 matmuls measured faster than float32 on this CPU)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--template",
        choices=sorted(TEMPLATES),
        help="render with this prompt template instead of the artifact's (a study: what the description does)",
    )
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "probe-depth",
        help="probe the head's features at each decoder depth (picks num_layers)",
        description="One forward pass over the config's train and val pairs; a linear probe per "
        "depth; writes a markdown table (and .json beside it).",
    )
    _config_args(p)
    p.add_argument("--depths", type=int, nargs="+", help="depths to probe (default: every 4th layer and the last)")
    p.add_argument("--out", type=Path, default=Path("docs/depth-probe.md"))
    p.set_defaults(func=_probe_depth)

    p = sub.add_parser("experiment", help="run the ablation table and write docs/results.md")
    p.add_argument("--config", type=Path, default=Path("configs/experiments.yaml"))
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    p.add_argument("--only", action="append", help="run only these variants (repeatable)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override of every variant's config")
    p.add_argument("--no-run", action="store_true", help="run nothing; rewrite the table from finished runs")
    p.set_defaults(func=_experiment)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="YAML config, e.g. configs/darl-smollm2.yaml")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set finetune.epochs=2 (repeatable)",
    )


def _load(args: argparse.Namespace):
    from training.config import load_config, parse_overrides

    return load_config(args.config, parse_overrides(args.set))


def _train(args: argparse.Namespace) -> int:
    cfg = _load(args)  # a bad config fails before the heavy imports
    from training.pipeline import run

    summary = run(cfg, export=not args.no_export)
    print(json.dumps({k: summary[k] for k in ("name", "artifact", "id", "ood", "timings_s")}, indent=2, default=float))
    return 0


def _probe_depth(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from relevance_core.host import machine
    from training.depth import probe_depths, write

    result = probe_depths(cfg, args.depths)
    command = f"darl probe-depth --config {args.config}" + (
        " --depths " + " ".join(map(str, args.depths)) if args.depths else ""
    )
    write(result, args.out, command, machine())
    best = max(result["depths"], key=lambda r: r["objective"])
    print(f"wrote {args.out}; best num_layers={best['num_layers']} (objective {best['objective']:.4f})")
    return 0


def _select(args: argparse.Namespace) -> int:
    import shutil

    cfg = _load(args)
    from training.pipeline import dasa, prepare, stage1
    from training.selection import import_labels

    if args.import_:
        from training.data import load_splits

        added = import_labels(args.import_, load_splits(cfg).pool)
        cfg.run_path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.import_, cfg.run_path / "imported_labels.csv")
        print(
            f"imported {len(added)} labelled pairs into {cfg.run_path / 'imported_labels.csv'}; "
            f"train with --set dasa.label_source=import"
        )
        return 0
    ctx = prepare(cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"enabled": False})}))
    stage1(ctx)
    dasa(ctx, labels_csv=args.export)
    args.export.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.run_dir / "selection.csv", args.export)
    metrics = ctx.results.metrics()
    print(
        json.dumps(
            {
                "export": str(args.export),
                "ood_auroc": metrics["ood_auroc"],
                "selection": metrics["selection"],
            },
            indent=2,
        )
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from relevance_core.checkpoint import load_classifier
    from training.data import load_pairs, subsample
    from training.evaluate import predict, with_candidates, write_report

    torch.set_num_threads(args.threads)
    model, tok, manifest = load_classifier(args.model)
    groups: dict[str, list] = {}
    for path in args.data:
        for p in load_pairs(path, on_error="skip", default_split=args.split or "test"):
            if (args.split is None or p.split == args.split) and p.labeled:
                groups.setdefault(p.source, []).append(p)
    if not groups:
        raise SystemExit("no labelled rows to evaluate (check --split)")
    scored = {}
    for i, (name, pairs) in enumerate(sorted(groups.items())):
        pairs = with_candidates(subsample(pairs, args.max_pairs, seed=i), args.foreign_per_query, args.candidate_seed)
        scored[name] = (
            pairs,
            predict(
                model,
                tok,
                pairs,
                manifest.max_length,
                args.batch_size,
                args.dtype,
                desc=name,
                template=args.template or manifest.template_version,
            ),
        )
    metrics = write_report(
        args.out,
        scored,
        f"{manifest.name} ({manifest.version})",
        extra={
            "model": manifest.name,
            "version": manifest.version,
            "data": [str(p) for p in args.data],
            "split": args.split,
            "template": args.template or manifest.template_version,
        },
    )
    from training.evaluate import markdown_table

    print(markdown_table(metrics))
    print(f"report: {args.out / 'report.md'}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from training.config import parse_overrides
    from training.experiments import run_experiments

    run_experiments(args.config, args.out, only=args.only, overrides=parse_overrides(args.set), run=not args.no_run)
    return 0
