"""Helpers for the deployment tests: repo paths, tools, a Dockerfile reader."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent

# The service's Prometheus metrics as the alerts and dashboards may use them
# (exposition names). Cross-checked against service.metrics in test_alerts.py.
COUNTERS = {"darl_requests_total", "darl_failures_total", "darl_pairs_total"}
GAUGES = {
    "darl_queue_depth_pairs",
    "darl_queue_capacity_pairs",
    "darl_model_info",
    "darl_engine_ready",
}
HISTOGRAMS = {
    "darl_request_duration_seconds",
    "darl_queue_wait_seconds",
    "darl_inference_duration_seconds",
    "darl_batch_pairs",
    "darl_batch_tokens",
}
KNOWN_METRICS = COUNTERS | GAUGES | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
# Series Prometheus itself adds to every scrape target.
PROMETHEUS_BUILTIN = {"up"}


def missing_tool(message: str) -> None:
    """Skip on a developer machine without the tool; fail in CI, where it must exist."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (install the dev extra: pip install -e '.[dev]')")
    pytest.skip(message)


def which(name: str) -> str | None:
    """A tool from this virtualenv first, then PATH."""
    return shutil.which(name, path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class ImageConfig:
    """What `docker build --target` would record for the final stage."""

    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    user: str | None
    healthcheck: str | None
    workdir: str | None
    stopsignal: str | None
    exposed: list[str]


def read_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Logical instructions: continuations joined, comment lines dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comments inside a continuation are removed
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        text = " ".join(p for p in buf if p)
        buf = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def read_stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in read_instructions(path):
        if ins.keyword == "FROM":
            parts = ins.args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=parts[0], index=len(stages)))
        elif not stages:
            if ins.keyword == "ARG":
                key, _, default = ins.args.partition("=")
                global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _expand(value: str, scope: dict[str, str]) -> str:
    return _VAR.sub(lambda m: scope.get(m.group(1) or m.group(2), m.group(0)), value)


def _parse_env(args: str, scope: dict[str, str]) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value with spaces`
        return {tokens[0]: _expand(" ".join(tokens[1:]), scope)}
    out = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        assert sep, f"bad ENV token {tok!r}"
        out[key] = _expand(value, scope | out)
    return out


def _exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return ["/bin/sh", "-c", args]  # shell form
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def image_config(target: str, path: Path = DOCKERFILE) -> ImageConfig:
    """Resolve ENV/ENTRYPOINT/CMD/USER/... of ``target`` through its parent stages."""
    global_args, stages = read_stages(path)
    by_name = {s.name: s for s in stages}
    assert target in by_name, f"no stage {target!r} in {path.name}; stages: {list(by_name)}"
    chain = []
    stage = by_name[target]
    while True:
        chain.append(stage)
        parent = _expand(stage.base, global_args)
        if parent not in by_name:
            break
        stage = by_name[parent]
    cfg = ImageConfig({}, [], [], None, None, None, None, [])
    for stage in reversed(chain):
        args: dict[str, str] = {}
        for ins in stage.instructions:
            scope = global_args | args | cfg.env
            if ins.keyword == "ARG":
                key, sep, default = ins.args.partition("=")
                key = key.strip()
                args[key] = default.strip().strip('"') if sep else global_args.get(key, "")
            elif ins.keyword == "ENV":
                cfg.env.update(_parse_env(ins.args, scope))
            elif ins.keyword == "ENTRYPOINT":
                cfg.entrypoint = _exec_form(ins.args)
                cfg.cmd = []  # docker resets an inherited CMD when ENTRYPOINT is set
            elif ins.keyword == "CMD":
                cfg.cmd = _exec_form(ins.args)
            elif ins.keyword == "USER":
                cfg.user = _expand(ins.args, scope)
            elif ins.keyword == "HEALTHCHECK":
                cfg.healthcheck = ins.args
            elif ins.keyword == "WORKDIR":
                cfg.workdir = _expand(ins.args, scope)
            elif ins.keyword == "STOPSIGNAL":
                cfg.stopsignal = ins.args
            elif ins.keyword == "EXPOSE":
                cfg.exposed += ins.args.split()
    return cfg


INIT_WRAPPERS = ("tini", "/usr/bin/tini", "/sbin/tini", "dumb-init", "/usr/bin/dumb-init")


def strip_init(argv: list[str]) -> list[str]:
    """The service command under the image's init (tini forwards signals, reaps children)."""
    if argv and argv[0] in INIT_WRAPPERS:
        rest = argv[1:]
        return rest[rest.index("--") + 1 :] if "--" in rest else rest
    return argv
