"""bf16 vs float32 GEMM throughput on this CPU: what ``DARL_DTYPE=auto`` / ``autocast: auto`` decide on.

``python -m benchmarks.precision`` prints the CPU flags, GFLOP/s of each dtype on the reference
shape and on the 135M model's other layer shapes, and the resulting choice.
"""

from __future__ import annotations

from relevance_core import precision

SHAPES = [(2560, 576, 1536), (2560, 1536, 576), (2560, 576, 576), (64, 576, 576)]


def main() -> None:
    import torch

    from relevance_core.host import cpu_flags, cpu_model

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2")))
    print(f"{cpu_model()}, {torch.get_num_threads()} threads; flags: {' '.join(flags)}")
    for shape in SHAPES:
        m, k, n = shape
        flop = 2 * m * k * n
        precision._SHAPE = shape
        fp32 = flop / precision._gemm_seconds(torch.float32) / 1e9
        bf16 = flop / precision._gemm_seconds(torch.bfloat16) / 1e9
        print(f"{m}x{k}x{n}: float32 {fp32:.0f} GFLOP/s, bfloat16 {bf16:.0f} GFLOP/s, ratio {bf16 / fp32:.2f}")
    precision._SHAPE = SHAPES[0]
    speedup = precision.cpu_bf16_speedup()
    choice = "bfloat16" if precision.cpu_prefers_bf16() else "float32"
    print(f"auto: bf16/fp32 speed-up {speedup:.2f} (needs {precision.MIN_BF16_SPEEDUP}) -> {choice}")


if __name__ == "__main__":
    main()
