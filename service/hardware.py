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


def resolve_dtype(requested: str, device: str) -> str:
    """bf16 where the hardware makes it fast (CPU: measured; GPU: compute ≥ 8.0), else fp32 (fp16 on older GPUs)."""
    if requested != "auto":
        return requested
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    from relevance_core.precision import cpu_prefers_bf16

    return "bfloat16" if cpu_prefers_bf16() else "float32"
