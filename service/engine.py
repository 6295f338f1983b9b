"""The engine interface.

An engine turns batches of pre-tokenized prompts into fp32 probabilities. The
batcher owns batching and deadlines; an engine only computes. Which engine
serves is ``service.engine_factory``'s choice.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

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
        """Probabilities, shape ``(len(batch), len(LABELS))``, fp32, in input order."""
