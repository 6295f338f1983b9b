"""Where a result came from: the machine it ran on and the identity of a training run."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.data import Pair


def cpu_flags() -> list[str]:
    """The CPU features that decide the fast path (AVX-512 kinds, AMX, AVX2), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    return []


def machine() -> str:
    """CPU model and core count (and GPU, if any), for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = set(cpu_flags())
    kinds = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512-BF16"), ("avx2", "AVX2"))
    kind = next((name for flag, name in kinds if flag in flags), "")
    out = f"{cpu}, {os.cpu_count()} cores" + (f", {kind}" if kind else "")
    try:
        import torch

        if torch.cuda.is_available():
            out += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return out


def run_id(cfg: TrainConfig, added: Sequence[Pair]) -> str:
    """What a stage-2 checkpoint may be resumed by: the same config and the same DASA pairs."""
    import hashlib

    blob = json.dumps(cfg.for_manifest(), sort_keys=True) + "|" + ",".join(p.pair_id for p in added)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
