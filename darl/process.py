"""The ``darl`` command as a child process: how tests and benchmarks run the real server.

A server is configured only through its settings, the ``DARL_*`` environment of
the child (``service.settings``); nothing in this process is patched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def darl_command() -> list[str]:
    """argv of this interpreter's ``darl`` (the console script beside it, else ``python -m darl.cli``)."""
    exe = Path(sys.executable).with_name("darl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "darl.cli"]


@contextmanager
def running_server(
    env: dict[str, str],
    argv: Sequence[str] = ("serve",),
    ready_timeout: float = 180.0,
    cwd: str | Path | None = None,
    log: IO[str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``darl serve`` with ``env`` over this environment (on 127.0.0.1 and a free port unless
    ``env`` names them), wait for ``/readyz``, yield ``(url, process)``; SIGTERM it on the way out.

    Its output goes to ``log`` (an open file; a long run should give one) or to ``process.stdout``.
    """
    import httpx

    port = int(env.get("DARL_PORT") or free_port())
    full_env = {**os.environ, "DARL_HOST": "127.0.0.1", **env, "DARL_PORT": str(port)}
    proc = subprocess.Popen(
        [*darl_command(), *argv],
        env=full_env,
        cwd=cwd,
        stdout=log if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read() if proc.stdout is not None else f"(see {getattr(log, 'name', 'the log')})"
                raise RuntimeError(f"server exited with {proc.returncode}:\n{output}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready in {ready_timeout:.0f}s")
            time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
