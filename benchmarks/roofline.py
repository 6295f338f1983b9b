"""The bf16 roofline: matmul peak measured here, and the FLOPs a pair costs.

Peak: the best of several timed ``size``×``size`` bf16 matmuls with torch on all
cores (``python -m benchmarks.roofline`` prints it as JSON; the harness runs it
in a subprocess before any server starts, so nothing else competes).

Work per pair: 2 × non-embedding parameters × tokens of the pair (the matmul
FLOPs of a decoder forward; attention score FLOPs, ~2·L·layers·hidden per token,
are left out: under 3 % at these ~25-token prompts). Padding and any prefix
reuse do not change it: it is the work the pair needs, not what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def matmul_peak(size: int = 2048, iters: int = 10, dtype: str = "bfloat16", threads: int | None = None) -> dict:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    dt = getattr(torch, dtype)
    a = torch.randn(size, size).to(dt)
    b = torch.randn(size, size).to(dt)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    flops = 2 * size**3
    best = min(times)
    med = sorted(times)[len(times) // 2]
    return {
        "size": size,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "iters": iters,
        "tflops_best": flops / best / 1e12,
        "tflops_median": flops / med / 1e12,
    }


def measure_peak_subprocess(size: int = 2048, iters: int = 10) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.roofline", "--size", str(size), "--iters", str(iters)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def non_embedding_params(checkpoint_dir: Path) -> int:
    """Parameters of every tensor in the checkpoint except the token embeddings (and a tied/untied LM head)."""
    from safetensors import safe_open

    total = 0
    files = sorted(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors in {checkpoint_dir}")
    for f in files:
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is not a dict
                if "embed_tokens" in name or name.startswith("lm_head"):
                    continue
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def flops_per_pair(params: int, tokens: float) -> float:
    return 2.0 * params * tokens


def roofline_fraction(pairs_per_s: float, mean_tokens: float, params: int, peak_tflops: float) -> float:
    return pairs_per_s * flops_per_pair(params, mean_tokens) / (peak_tflops * 1e12)


def main() -> None:
    ap = argparse.ArgumentParser(description="bf16 matmul peak of this machine (JSON)")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    print(json.dumps(matmul_peak(args.size, args.iters, args.dtype)))


if __name__ == "__main__":
    main()
