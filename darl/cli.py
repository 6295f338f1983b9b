"""darl: the relevance service and DaRL training command line.

Each part registers its own sub-commands; the modules are imported lazily so
``darl --help`` stays fast and ``serve`` never imports the training package.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# (module, description) of each command group; each module has ``register(subparsers)``.
_GROUPS = ("darl.base_cmd", "service.cli", "training.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # an extra is not installed
            if e.name and name.startswith(e.name.split(".")[0]):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting starve the event loop, the tokenizer and
    # other processes on small hosts; measured here, 2 torch threads ran up to 5x slower
    # under load without this. Must be set before torch is imported; the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
