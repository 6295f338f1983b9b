"""Write a trained model as an artifact.

Artifacts are written only through ``relevance_core.manifest.write_artifact``
(staged, made readable to other users, hashed, then moved into place atomically)
and loaded back only through ``relevance_core.checkpoint.load_classifier``. LoRA runs give
``kind="adapter"``: ``adapter/`` (PEFT ``save_pretrained``) + ``head.safetensors``
(``save_head``), a few MB over a referenced base. Full fine-tuning gives
``kind="full"``: a complete HF checkpoint under ``model/``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from relevance_core.checkpoint import ADAPTER_DIR, FULL_DIR, HEAD_FILE, save_head
from relevance_core.manifest import BaseModelRef, Manifest, staging_dir_for, write_artifact
from relevance_core.prompt import TEMPLATE_VERSION


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def export_artifact(
    model: Any,
    tok: Any,
    dest: Path,
    name: str,
    base_ref: BaseModelRef,
    max_length: int,
    training_config: dict[str, Any],
    data_fingerprint: str | None,
    metrics: dict[str, Any],
    head_only: bool = False,
    num_layers: int | None = None,
    template_version: str = TEMPLATE_VERSION,
) -> Manifest:
    """Stage the weights, write the manifest and atomically publish ``dest``.

    ``head_only``: the backbone was never trained (no stage 2), so only the head is stored.
    """
    staging = staging_dir_for(dest)
    if is_peft(model):
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = base_ref.name  # not a machine-local path
        model.save_pretrained(staging / ADAPTER_DIR, save_embedding_layers=False)
        save_head(model, staging / HEAD_FILE)
        kind = "adapter"
    elif head_only:
        save_head(model, staging / HEAD_FILE)  # stage 1 only: the probed head over the frozen base
        kind = "adapter"
    else:
        model.save_pretrained(staging / FULL_DIR)
        tok.save_pretrained(staging / FULL_DIR)
        kind = "full"
    manifest = Manifest(
        name=name,
        kind=kind,
        base_model=base_ref if kind == "adapter" else None,
        max_length=max_length,
        template_version=template_version,
        num_layers=num_layers if kind == "adapter" else None,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        training_config=training_config,
        data_fingerprint=data_fingerprint,
        metrics=metrics,
    )
    return write_artifact(staging, dest, manifest)
