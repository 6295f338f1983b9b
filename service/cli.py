"""``darl serve``: run the scoring service with uvicorn."""

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
