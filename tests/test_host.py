"""The one description of the machine (``relevance_core.host``) training summaries and benchmarks record."""

from __future__ import annotations

from pathlib import Path

import pytest

from relevance_core import host

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 {extra}
"""


@pytest.fixture
def cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def write(text: str) -> None:
        (tmp_path / "cpuinfo").write_text(text)

    monkeypatch.setattr(host, "_CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(host, "gpu_name", lambda: None)
    monkeypatch.setattr(host.os, "cpu_count", lambda: 8)
    return write


def test_flags_and_model_come_from_cpuinfo(cpuinfo) -> None:
    cpuinfo(CPUINFO.format(extra="avx512vl"))
    assert host.cpu_model() == "Intel(R) Xeon(R) Platinum 8480+"
    assert host.cpu_flags() == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "avx512vl", "fma"]
    info = host.host_info()
    assert (info["cores"], info["flags"]) == (8, "amx_bf16 amx_tile avx2 avx512_bf16 avx512f avx512vl fma")
    assert host.machine(info) == "Intel(R) Xeon(R) Platinum 8480+, 8 cores, AMX"


def test_the_line_names_the_best_matmul_extension_and_the_gpu(cpuinfo) -> None:
    cpuinfo("model name\t: AMD EPYC\nflags\t\t: sse2 avx2 fma\n")
    assert host.machine() == "AMD EPYC, 8 cores, AVX2"
    info = {**host.host_info(), "flags": "avx2 avx512_bf16", "gpu": "NVIDIA H100"}
    assert host.machine(info) == "AMD EPYC, 8 cores, AVX-512-BF16, NVIDIA H100"


def test_without_cpuinfo_it_still_describes_the_machine(cpuinfo) -> None:
    assert host.cpu_flags() == [] and host.cpu_model()  # no file: platform's answer
    assert host.host_info()["flags"] == "no AVX2"
    assert host.machine().endswith(", 8 cores")
