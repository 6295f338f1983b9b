"""Load a model artifact into a plain HF checkpoint both engines can read.

A ``full`` artifact already is one. An ``adapter`` artifact (LoRA adapter +
head over a referenced base) is loaded by ``relevance_core.checkpoint.load_classifier``
(as training's ``darl eval`` loads it) and saved once into ``<cache>/merged/<version>``;
the directory name is the artifact's content hash, so a changed artifact never
reuses a stale merge. Hashes, template version and labels are verified before
anything is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from relevance_core.base_model import cache_root, file_lock
from relevance_core.checkpoint import FULL_DIR, check_layout, load_classifier
from relevance_core.manifest import ArtifactError, Manifest, verify_artifact
from relevance_core.prompt import PromptRenderer

log = logging.getLogger(__name__)

_COMPLETE = ".complete"


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified artifact and the HF checkpoint directory that serves it."""

    artifact_dir: Path
    manifest: Manifest
    checkpoint_dir: Path

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def renderer(self) -> PromptRenderer:
        """The prompt renderer of this checkpoint's tokenizer (loads the tokenizer: call it off the event loop)."""
        from transformers import AutoTokenizer

        return PromptRenderer(
            AutoTokenizer.from_pretrained(self.checkpoint_dir), self.manifest.max_length, self.manifest.template_version
        )


def load_artifact(
    artifact_dir: str | Path, cache_dir: str | Path | None = None, verified: Manifest | None = None
) -> LoadedArtifact:
    """Verify ``artifact_dir`` (unless the caller already did: ``verified``) and return the checkpoint to serve."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.exists():
        raise ArtifactError(
            f"model artifact {artifact_dir} does not exist. Build the default one with "
            "`make artifact` (runs `darl train --config configs/darl-smollm2.yaml`), or point "
            "DARL_MODEL_DIR at an artifact directory"
        )
    manifest = verified or verify_artifact(artifact_dir)
    check_layout(artifact_dir, manifest)
    if manifest.kind == "full":
        return LoadedArtifact(artifact_dir, manifest, artifact_dir / FULL_DIR)
    out = cache_root(cache_dir) / "merged" / f"{manifest.name}-{manifest.version}"
    if not (out / _COMPLETE).is_file():
        with file_lock(out.with_name(out.name + ".lock")):
            if not (out / _COMPLETE).is_file():
                _merge(artifact_dir, manifest, out, cache_dir)
    return LoadedArtifact(artifact_dir, manifest, out)


def _merge(artifact_dir: Path, manifest: Manifest, out: Path, cache_dir: str | Path | None) -> None:
    log.info("materializing %s over base %s", manifest.name, manifest.base_model.name)
    model, tok, _ = load_classifier(artifact_dir, cache_dir, verified=manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".merge-") as tmp:
        staging = Path(tmp) / "ckpt"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        (staging / _COMPLETE).write_text(json.dumps({"artifact": manifest.name, "version": manifest.version}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
