"""The identity of a training run (the machine it ran on: ``relevance_core.host.machine``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.data import Pair


def run_id(cfg: TrainConfig, added: Sequence[Pair]) -> str:
    """What a stage-2 checkpoint may be resumed by: the same config and the same DASA pairs."""
    import hashlib

    blob = json.dumps(cfg.for_manifest(), sort_keys=True) + "|" + ",".join(p.pair_id for p in added)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
