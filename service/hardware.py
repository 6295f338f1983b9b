"""What the host can do: GPU, vLLM, the CPU's vector extensions, and the dtype they make fast."""

from __future__ import annotations

import importlib.util


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def fast_cpu_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX); elsewhere torch emulates bf16, far slower than fp32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(requested: str, device: str) -> str:
    """bf16 where the hardware has fast bf16 (CPU AVX512-BF16/AMX, GPU compute ≥ 8.0), else fp32."""
    if requested != "auto":
        return requested
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if fast_cpu_bf16() else "float32"
