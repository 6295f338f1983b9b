"""One server process on loopback: start it in its own session, wait until it is ready, stop it.

Each server runs in its own session (process group) so that it and every
process it spawns (vLLM's engine cores) are stopped together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from benchmarks.host import tree_cpu
from benchmarks.servers import ServerSpec
from benchmarks.workload import REPO


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
