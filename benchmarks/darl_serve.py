"""``darl serve`` with the torch engine's module defaults overridden, for tuning runs only.

    DARL_BENCH_TORCH_COMPILE=1 DARL_BENCH_PREFIX_REUSE=1 python -m benchmarks.darl_serve

The engine's optional speed-ups (``service.engine_torch.COMPILE``,
``PREFIX_REUSE``, ``SUB_BATCH_TOKENS``) are module constants, not settings;
this wrapper sets them from ``DARL_BENCH_*`` variables and then runs the
ordinary ``darl serve``, so a variant is measured over HTTP exactly as it would
serve if it were the default. Production never runs this module.
"""

from __future__ import annotations

import os
import sys

OVERRIDES = {
    "DARL_BENCH_TORCH_COMPILE": ("COMPILE", lambda v: v.lower() in ("1", "true", "yes")),
    "DARL_BENCH_PREFIX_REUSE": ("PREFIX_REUSE", lambda v: v.lower() in ("1", "true", "yes")),
    "DARL_BENCH_SUB_BATCH_TOKENS": ("SUB_BATCH_TOKENS", int),
}


def apply_overrides(env: dict[str, str]) -> dict[str, object]:
    import service.engine_torch as et

    applied = {}
    for var, (attr, conv) in OVERRIDES.items():
        if var in env:
            setattr(et, attr, conv(env[var]))
            applied[attr] = getattr(et, attr)
    return applied


def main() -> int:
    apply_overrides(dict(os.environ))
    from darl.cli import main as darl_main

    return darl_main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
