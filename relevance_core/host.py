"""The machine a result was measured on: CPU model, cores, vector extensions, memory, GPU.

One description for training summaries (``machine()``, a line) and benchmark reports
(``host_info()``, its fields). Only the standard library at import; torch is asked about
a GPU only where it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

_CPUINFO = Path("/proc/cpuinfo")
# The fastest kind of matmul support the CPU flags name, best first (what `machine()` shows).
_KINDS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512-BF16"), ("avx2", "AVX2"))


def _cpuinfo() -> str:
    try:
        return _CPUINFO.read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo, else what ``platform`` knows."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide the fast path (AVX-512 kinds, AMX, AVX2, FMA), sorted."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in set(flags) if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return []


def memory_gib() -> float | None:
    """Physical memory in GiB (None where the OS does not say)."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, OSError, ValueError):
        return None


def gpu_name() -> str | None:
    """The first CUDA device's name, or None (no torch, or no GPU)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def host_info() -> dict[str, Any]:
    """The machine as fields: ``cpu``, ``cores``, ``flags`` (space-separated), ``mem_gib``, ``os``, ``gpu``."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": " ".join(cpu_flags()) or "no AVX2",
        "mem_gib": memory_gib(),
        "os": platform.platform(),
        "gpu": gpu_name(),
    }


def machine(info: dict[str, Any] | None = None) -> str:
    """One line for a results table: CPU model, cores, its best matmul extension, and the GPU if any."""
    info = info or host_info()
    flags = set(info["flags"].split())
    kind = next((name for flag, name in _KINDS if flag in flags), "")
    out = f"{info['cpu']}, {info['cores']} cores" + (f", {kind}" if kind else "")
    return out + (f", {info['gpu']}" if info.get("gpu") else "")
