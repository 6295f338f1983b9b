"""Run the real ``darl serve`` in a subprocess for end-to-end tests."""

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

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def darl_command() -> list[str]:
    exe = Path(sys.executable).with_name("darl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "darl.cli"]


@contextmanager
def running_server(
    env: dict[str, str], argv: Sequence[str] = ("serve",), ready_timeout: float = 180.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``darl serve`` with ``env`` (plus a free port), wait for /readyz, yield its URL."""
    port = int(env.get("DARL_PORT") or free_port())
    full_env = {**os.environ, "DARL_HOST": "127.0.0.1", **env, "DARL_PORT": str(port)}
    proc = subprocess.Popen(
        [*darl_command(), *argv], env=full_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server not ready in time")
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
