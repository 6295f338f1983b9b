"""``auto`` dtype: bf16 only where it measured faster than float32 on the host."""

from __future__ import annotations

import pytest
import torch

from relevance_core import precision
from service.hardware import resolve_dtype
from training.features import resolve_dtype as training_dtype


@pytest.fixture(autouse=True)
def _fresh_measurement():
    precision.cpu_bf16_speedup.cache_clear()
    yield
    precision.cpu_bf16_speedup.cache_clear()


def _timings(monkeypatch: pytest.MonkeyPatch, native: bool, fp32_s: float, bf16_s: float) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(precision, "_gemm_seconds", lambda dtype, reps=5: bf16_s if dtype == torch.bfloat16 else fp32_s)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("native", "fp32_s", "bf16_s", "want"),
    [
        (True, 1.0, 0.25, "bfloat16"),  # AMX: bf16 4x faster
        (True, 1.0, 1.7, "float32"),  # AVX-512-BF16 without AMX, as measured here: bf16 slower
        (True, 1.0, 0.9, "float32"),  # 1.11x: inside the noise margin, float32 kept
        (False, 1.0, 0.1, "float32"),  # AVX2: bf16 emulated, never timed
    ],
)
def test_auto_follows_the_measured_speedup(
    monkeypatch: pytest.MonkeyPatch, native: bool, fp32_s: float, bf16_s: float, want: str
) -> None:
    _timings(monkeypatch, native, fp32_s, bf16_s)
    assert resolve_dtype("auto", "cpu") == want
    assert training_dtype("auto") == want
    assert resolve_dtype("float32", "cpu") == "float32" and training_dtype("bfloat16") == "bfloat16"


def test_speedup_is_measured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "_gemm_seconds", lambda dtype, reps=5: calls.append(dtype) or 1.0)
    precision.cpu_prefers_bf16()
    precision.cpu_prefers_bf16()
    assert len(calls) == 2  # one float32 and one bf16 timing, then cached


def test_real_measurement_is_a_positive_ratio() -> None:
    assert precision.cpu_bf16_speedup() > 0
