"""SIGKILL a real `darl train` process mid stage 2, rerun it, and get the uninterrupted run's metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from darl.process import darl_command
from tests import REPO
from tests.training.tiny import tiny_config


def _write(cfg, path: Path) -> Path:
    raw = cfg.model_dump(mode="json")
    raw["finetune"].update({"max_train_pairs": 320, "checkpoint_every": 1})  # 20 steps, one checkpoint each
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*darl_command(), "train", "--config", str(config), "--no-export"],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_metrics(tmp_path: Path, data_root: Path, tiny_base_dir: Path) -> None:
    full_cfg = tiny_config(tmp_path / "full", data_root, tiny_base_dir)
    assert _train(_write(full_cfg, tmp_path / "full.yaml")).wait(timeout=600) == 0
    full = json.loads((full_cfg.run_path / "summary.json").read_text())

    cfg = tiny_config(tmp_path / "killed", data_root, tiny_base_dir)
    config = _write(cfg, tmp_path / "killed.yaml")
    proc = _train(config)
    ckpt = cfg.run_path / "stage2" / "last.pt"
    deadline = time.monotonic() + 600
    while not ckpt.exists():
        assert proc.poll() is None, "training ended before its first stage-2 checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (cfg.run_path / "summary.json").exists()

    rerun = subprocess.run(
        [*darl_command(), "train", "--config", str(config), "--no-export"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    m = re.search(r"resumed stage 2 from \S+ at step (\d+)/(\d+)", rerun.stderr)
    assert m and 0 < int(m.group(1)) < int(m.group(2)), "the rerun did not resume from the checkpoint"
    resumed = json.loads((cfg.run_path / "summary.json").read_text())
    assert resumed["id"] == full["id"] and resumed["ood"] == full["ood"]
