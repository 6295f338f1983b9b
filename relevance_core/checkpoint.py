"""How a classifier checkpoint is built and how an artifact stores its weights.

Training and serving both construct the model through ``build_classifier``,
read/write the head through ``save_head``/``load_head`` and turn an artifact into
a model through ``load_classifier`` (training's ``darl eval`` in memory, the
service's merged checkpoint on disk), so the artifact layout has exactly one
definition. ``torch``/``transformers``/``peft`` are imported lazily.

Artifact layout (see ``relevance_core.manifest``)::

    manifest.json
    head.safetensors       # kind="adapter": the score head (weight [3, hidden], bias optional)
    adapter/               # kind="adapter", optional: PEFT LoRA adapter of the backbone
    model/                 # kind="full": a complete HF *ForSequenceClassification checkpoint
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relevance_core.labels import LABEL2ID, LABELS
from relevance_core.manifest import ArtifactError, Manifest, verify_artifact

HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"
FULL_DIR = "model"


def classifier_config_updates(pad_token_id: int | None) -> dict[str, Any]:
    """Config fields every classifier carries: the label contract and the pad id.

    The pad id matters: HF and vLLM pool the last token that is not padding, and
    ``PromptRenderer`` guarantees rendered prompts never contain it.
    """
    return {
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": dict(LABEL2ID),
        "pad_token_id": pad_token_id,
        "problem_type": "single_label_classification",
    }


def depth_updates(config: Any, num_layers: int | None) -> dict[str, Any]:
    """Config fields that keep only the first ``num_layers`` decoder layers (``None``: all).

    The head then reads the final norm of layer ``num_layers``'s last token: a shallower,
    faster classifier that is still a plain ``*ForSequenceClassification`` checkpoint
    (transformers and vLLM load it as is). Middle layers of small LMs probe better than
    the last one for this task (docs/depth-probe.md, `darl probe-depth`).
    """
    if num_layers is None:
        return {}
    total = config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ArtifactError(f"num_layers={num_layers} but the base model has {total} layers")
    out: dict[str, Any] = {"num_hidden_layers": num_layers}
    if isinstance(getattr(config, "layer_types", None), list):  # Qwen2-style per-layer attention kinds
        out["layer_types"] = list(config.layer_types[:num_layers])
    return out


def build_classifier(base_dir: str | Path, dtype: str = "float32", num_layers: int | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)``: an HF ``*ForSequenceClassification`` over a causal-LM dir.

    ``num_layers`` keeps the first k decoder layers of the base (see ``depth_updates``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    config = AutoConfig.from_pretrained(base_dir, **classifier_config_updates(pad))
    for key, value in depth_updates(config, num_layers).items():
        setattr(config, key, value)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, config=config, dtype=getattr(torch, dtype))
    return model, tok


def head_module(model: Any) -> Any:
    """The classification head (``score`` on Llama/Qwen/Mistral-style classifiers)."""
    head = getattr(model, "score", None)
    if head is None:
        raise ArtifactError(f"{type(model).__name__} has no `score` head")
    return head


def save_head(model: Any, path: str | Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous() for k, v in head_module(model).state_dict().items()}
    save_file(state, str(path))


def load_head(model: Any, path: str | Path) -> None:
    from safetensors.torch import load_file

    head = head_module(model)
    state = load_file(str(path))
    missing, unexpected = head.load_state_dict({k: v.to(head.weight.dtype) for k, v in state.items()}, strict=False)
    if unexpected or [k for k in missing if k != "bias"]:
        raise ArtifactError(f"{Path(path).name} does not fit the head: missing={missing} unexpected={unexpected}")


def check_layout(artifact_dir: str | Path, manifest: Manifest) -> None:
    """The files ``manifest.kind`` needs are there (their hashes are ``verify_artifact``'s job)."""
    artifact_dir = Path(artifact_dir)
    if manifest.kind == "full":
        if not (artifact_dir / FULL_DIR / "config.json").is_file():
            raise ArtifactError(f"full artifact {manifest.name!r} has no {FULL_DIR}/config.json")
        return
    if manifest.base_model is None:
        raise ArtifactError(f"adapter artifact {manifest.name!r} names no base_model")
    if not (artifact_dir / HEAD_FILE).is_file():
        raise ArtifactError(f"adapter artifact {manifest.name!r} has no {HEAD_FILE}")


def load_classifier(
    artifact_dir: str | Path, cache_dir: str | Path | None = None, verified: Manifest | None = None
) -> tuple[Any, Any, Manifest]:
    """``(model, tokenizer, manifest)`` of an artifact, in memory, in eval mode.

    Verifies the artifact (unless the caller already did: ``verified``), then: ``full`` →
    its checkpoint; ``adapter`` → the base (its first ``num_layers`` layers) → the LoRA
    adapter merged into it, if any → the head. The base is built in ``cache_dir`` if needed.
    """
    from relevance_core.base_model import ensure_base_model

    artifact_dir = Path(artifact_dir)
    manifest = verified or verify_artifact(artifact_dir)
    check_layout(artifact_dir, manifest)
    if manifest.kind == "full":
        model, tok = build_classifier(artifact_dir / FULL_DIR)
    else:
        base_dir = ensure_base_model(manifest.base_model, cache_dir)
        model, tok = build_classifier(base_dir, num_layers=manifest.num_layers)
        if (artifact_dir / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(artifact_dir / ADAPTER_DIR)).merge_and_unload()
        load_head(model, artifact_dir / HEAD_FILE)
    model.eval()
    return model, tok, manifest
