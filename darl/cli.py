"""darl: the relevance service and DaRL training command line.

Each part registers its own sub-commands (``register(sub)``): ``darl base-model``
(``darl.base_cmd``), ``darl serve`` and ``darl score`` (``service.cli``), ``darl train``,
``select``, ``eval``, ``probe-depth`` and ``experiment`` (``training.cli``). Those modules
import nothing heavy; each command imports what it runs inside its function, so
``darl --help`` loads no torch, transformers or FastAPI, and ``serve`` runs no training
code. The service images ship without the training package; there its commands are absent.

Errors a user can fix end the command with one ``error: ...`` line and exit code 2
(``user_error``); Ctrl-C ends it with 130. ``-v`` adds the traceback. Anything else is
a bug and keeps Python's traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from darl import base_cmd
from service import cli as service_cli

try:
    from training import cli as training_cli
except ModuleNotFoundError as e:  # the service images ship without the training package (.dockerignore)
    if e.name != "training":
        raise
    training_cli = None

# Each group's commands and the extra (pip install 'darl-relevance[EXTRA]') their libraries come with.
GROUPS = ((base_cmd, "serve"), (service_cli, "serve"), *([(training_cli, "train")] if training_cli else []))
OWN_PACKAGES = {"darl", "relevance_core", "service", "training", "benchmarks", "tests"}
USER_ERROR = 2
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darl",
        description=__doc__.splitlines()[0],
        epilog=None if training_cli else "The training commands are not here: this install has no training package.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, extra in GROUPS:
        before = set(sub.choices)
        module.register(sub)
        for name in set(sub.choices) - before:
            command = sub.choices[name]
            command.set_defaults(extra=extra)
            if "-v" not in command._option_string_actions:  # `darl train -v` as well as `darl -v train`
                command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as -v")
    return parser


def user_error(e: BaseException, extra: str | None = None) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug (it keeps its traceback).

    User errors: a missing file (``FileNotFoundError``), an artifact that is missing, tampered with
    or incompatible (``ArtifactError``), a training config that does not load (``ConfigError``), a
    ``DARL_*`` setting or other pydantic-validated input that does not validate (``ValidationError``),
    and a library of an extra that is not installed (``ModuleNotFoundError`` outside this project).
    """
    if isinstance(e, ModuleNotFoundError):
        if not e.name or e.name.split(".")[0] in OWN_PACKAGES:
            return None
        hint = f"pip install 'darl-relevance[{extra}]'" if extra else "install the extra it belongs to"
        return f"{e.name} is not installed; this command needs it: {hint}"
    if isinstance(e, FileNotFoundError):
        return f"{e.strerror}: {e.filename}" if e.filename else str(e)
    from pydantic import ValidationError

    from relevance_core.manifest import ArtifactError

    if isinstance(e, ArtifactError) or (training_cli and isinstance(e, _config_error())):
        return str(e)
    if isinstance(e, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or e.title}: {err['msg']}" for err in e.errors())
        return f"invalid {e.title}: {problems}"
    return None


def _config_error() -> type[Exception]:
    from training.config import ConfigError

    return ConfigError


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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        message = user_error(e, args.extra)
        if message is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print("error: " + "; ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
