"""The torch engine: ``transformers`` forward passes on CPU or GPU.

Inference runs on one dedicated worker thread, off the event loop. Each batch
is sorted by length and cut into sub-batches of similar lengths, so padding
costs little; bf16 is used where the hardware has fast bf16 (on this project's
CPU, AVX512-BF16 ran ~4x fp32).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.postprocess import probs_from_logits
from service.engine import Engine, TokenIds, cuda_available, resolve_dtype
from service.errors import EngineError
from service.settings import Settings

log = logging.getLogger(__name__)

# Padded tokens per forward pass. Larger sub-batches gain little on CPU and cost memory.
SUB_BATCH_TOKENS = 4096


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, checkpoint_dir: Path, settings: Settings) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.settings = settings
        self.device = "cuda" if cuda_available() else "cpu"
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self._model: Any = None
        self._pad_id = 0
        self._executor: ThreadPoolExecutor | None = None
        self._failure: str | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-engine")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        t0 = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(
            self.checkpoint_dir, dtype=getattr(torch, self.dtype)
        )
        model.to(self.device).eval()
        pad = model.config.pad_token_id
        if pad is None:
            raise EngineError(f"{self.checkpoint_dir} has no pad_token_id in its config")
        self._pad_id = int(pad)
        self._model = model
        log.info(
            "torch engine loaded %s on %s (%s, %d threads) in %.1fs",
            self.checkpoint_dir,
            self.device,
            self.dtype,
            torch.get_num_threads(),
            time.perf_counter() - t0,
        )

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._model = None

    async def health(self) -> None:
        if self._failure is not None:
            raise EngineError(f"torch engine failed: {self._failure}")
        if self._model is None or self._executor is None:
            raise EngineError("torch engine is not started")

    async def score(self, batch: Sequence[TokenIds]) -> np.ndarray:
        if self._executor is None or self._model is None:
            raise EngineError("torch engine is not started")
        if not batch:
            return np.zeros((0, 3), dtype=np.float32)
        loop = asyncio.get_running_loop()
        logits = await loop.run_in_executor(self._executor, self._forward, list(batch))
        return probs_from_logits(logits)

    def _forward(self, batch: list[TokenIds]) -> np.ndarray:
        import torch

        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        out = np.empty((len(batch), 3), dtype=np.float32)
        with torch.inference_mode():
            for chunk in _length_chunks(order, batch, SUB_BATCH_TOKENS):
                width = len(batch[chunk[-1]])
                ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    n = len(batch[i])
                    ids[row, :n] = torch.as_tensor(batch[i], dtype=torch.long)
                    mask[row, :n] = 1
                logits = self._model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                out[chunk] = logits.float().cpu().numpy()
        return out


def _length_chunks(order: list[int], batch: Sequence[TokenIds], max_tokens: int) -> list[list[int]]:
    """Split length-sorted indices so that rows × longest row ≤ ``max_tokens``."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = len(batch[i])  # sorted ascending: the newest is the longest
        if current and (len(current) + 1) * longest > max_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks
