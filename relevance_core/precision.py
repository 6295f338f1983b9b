"""Which float type makes this host's matmuls fastest: measured once, not guessed from CPU flags.

CPU flags are not enough: AVX2-only CPUs emulate bf16 (far slower than float32), and on this
project's AVX-512-BF16 Xeons without AMX torch's bf16 GEMM measured 162 GFLOP/s against 269 for
float32 (2 cores, 2560×576×1536, the shape of a batch of 64 pairs in the 135M model's MLP), so
bf16 there is slower too. Only where the timing shows bf16 clearly ahead (AMX, some AVX-512-BF16
parts) does ``auto`` pick it. Used by the training autocast and by both serving engines.
"""

from __future__ import annotations

import functools
import time

# bf16 must beat float32 by this factor before ``auto`` takes it (timing noise on a busy host
# is ~10 %; a wrong bf16 pick also costs accuracy, a wrong float32 pick only speed).
MIN_BF16_SPEEDUP = 1.2
_SHAPE = (2560, 576, 1536)


def _gemm_seconds(dtype: object, reps: int = 5) -> float:
    """Best of ``reps`` timings of one GEMM of ``_SHAPE`` in ``dtype`` (best-of: robust to other load)."""
    import torch

    m, k, n = _SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # first call: kernel selection, weight packing
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_has_native_bf16() -> bool:
    """AVX-512-BF16 or AMX: without either, torch emulates bf16 and there is nothing to time."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """float32 time / bf16 time of the reference GEMM on this CPU (1.0 where bf16 is not native)."""
    import torch

    if not cpu_has_native_bf16():
        return 1.0
    return _gemm_seconds(torch.float32) / _gemm_seconds(torch.bfloat16)


def cpu_prefers_bf16() -> bool:
    """True where bf16 matmuls measured at least ``MIN_BF16_SPEEDUP`` × float32 on this CPU."""
    return cpu_bf16_speedup() >= MIN_BF16_SPEEDUP
