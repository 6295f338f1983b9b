"""``darl serve``: run the scoring service with uvicorn; ``darl score``: score a file offline, same model path."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model artifact over HTTP",
        description="Serve the artifact in DARL_MODEL_DIR (default model_artifacts/darl-smollm2). "
        "Every setting is a DARL_* environment variable; the flags below override them.",
    )
    p.add_argument("--host", help="bind address (DARL_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (DARL_PORT, default 8000)")
    p.add_argument("--model-dir", type=Path, help="artifact directory (DARL_MODEL_DIR)")
    p.add_argument("--engine", choices=["auto", "torch", "vllm"], help="engine (DARL_ENGINE)")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="verify the artifact and build its base/merged checkpoint in the cache, then exit "
        "(container builds run this so nothing is built at start)",
    )
    p.set_defaults(func=_run)
    _register_score(sub)


def _run(args: argparse.Namespace) -> int:
    from relevance_core.manifest import ArtifactError
    from service.settings import Settings

    overrides = {k: v for k in ("host", "port", "model_dir", "engine") if (v := getattr(args, k)) is not None}
    settings = Settings(**overrides)
    if args.prepare_only:
        from service.artifacts import load_artifact

        try:
            loaded = load_artifact(settings.model_dir, settings.cache_dir)
        except ArtifactError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(loaded.checkpoint_dir)
        return 0
    return serve(settings)


def serve(settings) -> int:
    from service.server import serve as run_server

    return run_server(settings)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _register_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a CSV, JSONL or Parquet file of (query, item) pairs offline",
        description="Score every row of --in (columns query, item_title, optionally item_description; all "
        "others kept) with the service's prompt, truncation, engine and post-processing, and write the rows "
        "with p_irrelevant, p_weak, p_strong, label_pred, score and truncated to --out (format by extension: "
        ".csv, .jsonl, .ndjson, optionally .gz, or .parquet). Written in chunks: run the same command again "
        "after an interruption and it resumes where it stopped. Bad rows are skipped and listed with their "
        "line numbers in <out>.errors.jsonl. DARL_* settings apply as for `darl serve`; flags override them.",
    )
    p.add_argument("--in", dest="input", type=Path, required=True, metavar="FILE", help="input file")
    p.add_argument("--out", dest="output", type=Path, required=True, metavar="FILE", help="output file")
    p.add_argument("--model", "--model-dir", dest="model_dir", type=Path, help="artifact directory (DARL_MODEL_DIR)")
    p.add_argument("--engine", choices=["auto", "torch", "vllm"], help="engine (DARL_ENGINE, default auto)")
    p.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16", "int8"], help="engine dtype (DARL_DTYPE, default auto)"
    )
    p.add_argument("--batch-pairs", type=_positive_int, help="pairs per engine call (DARL_MAX_BATCH_PAIRS, default 64)")
    p.add_argument("--threads", type=_positive_int, help="torch engine threads (DARL_TORCH_THREADS, default all cores)")
    p.add_argument("--split", help="score only the rows whose split column is this (e.g. test)")
    p.add_argument(
        "--chunk-rows",
        type=_positive_int,
        help="input rows per output part: what an interruption can lose (default 2000)",
    )
    p.add_argument(
        "--prefix",
        default="",
        help="prefix of the added columns, for an input that already has them (e.g. a scored file: --prefix new_)",
    )
    p.add_argument("--strict", action="store_true", help="reject the file at the first bad row (exit 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output or an unfinished run's parts")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from relevance_core.manifest import ArtifactError
    from service.batch_score import DEFAULT_CHUNK_ROWS, BatchError, ScoreJob, run
    from service.errors import EngineError
    from service.settings import Settings

    names = {"model_dir": "model_dir", "engine": "engine", "dtype": "dtype"}
    names |= {"batch_pairs": "max_batch_pairs", "threads": "torch_threads"}
    overrides = {field: v for arg, field in names.items() if (v := getattr(args, arg)) is not None}
    job = ScoreJob(
        input=args.input,
        output=args.output,
        split=args.split,
        chunk_rows=args.chunk_rows or DEFAULT_CHUNK_ROWS,
        prefix=args.prefix,
        strict=args.strict,
        overwrite=args.overwrite,
    )
    try:
        run(job, Settings(**overrides))
    except (BatchError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:  # a bad DARL_* variable
        print(f"error: invalid setting: {e}", file=sys.stderr)
        return 2
    except EngineError as e:
        print(f"error: {e.message}; rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
