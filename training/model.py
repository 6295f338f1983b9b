"""The trainable classifier: base checkpoint, LoRA adapter, which weights train.

Models are built only through ``relevance_core.checkpoint.build_classifier`` so
training and serving see the same architecture, config and pad id. LoRA is
added with PEFT *without* a task type, so PEFT does not wrap the score head in
``modules_to_save``: the head stays a plain module, trained directly and saved
with ``save_head`` next to the adapter, exactly the layout the loader expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relevance_core.checkpoint import build_classifier, head_module


def load_classifier(base_dir: str | Path, num_layers: int | None = None) -> tuple[Any, Any]:
    """fp32 classifier + tokenizer (autocast supplies bf16 compute where wanted)."""
    return build_classifier(base_dir, dtype="float32", num_layers=num_layers)


def pad_id(tok: Any) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def attach_lora(
    model: Any, r: int, alpha: int, dropout: float, target_modules: list[str], top_layers: int | None = None
) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter (B = 0, so it starts as a zero delta).

    ``top_layers``: adapt only the last k decoder layers, so backward stops below them (cheaper on CPU).
    """
    from peft import LoraConfig, get_peft_model

    layers = None
    if top_layers is not None:
        n = model.config.num_hidden_layers
        if top_layers > n:
            raise ValueError(f"lora.top_layers={top_layers} but the model has {n} layers")
        layers = list(range(n - top_layers, n))
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
        layers_to_transform=layers,
    )
    peft_model = get_peft_model(model, cfg)
    for p in head_module(peft_model).parameters():
        p.requires_grad_(True)
    return peft_model


def prepare_trainable(model: Any, method: str, lora_cfg: Any, top_layers: int | None = None) -> Any:
    """``lora``: adapter + head train; ``full``: the last ``top_layers`` decoder layers (all if None),
    the final norm and the head train; ``none``: head only."""
    if method == "lora":
        return attach_lora(
            model, lora_cfg.r, lora_cfg.alpha, lora_cfg.dropout, list(lora_cfg.target_modules), lora_cfg.top_layers
        )
    for p in model.parameters():
        p.requires_grad_(method == "full" and top_layers is None)
    if method == "full" and top_layers is not None:
        decoder = model.model
        for module in [*decoder.layers[len(decoder.layers) - top_layers :], decoder.norm]:
            for p in module.parameters():
                p.requires_grad_(True)
    for p in head_module(model).parameters():
        p.requires_grad_(True)
    return model


def classification_head(model: Any) -> Any:
    """``score`` of decoder classifiers; ``classifier`` of encoder ones (the MiniLM baseline)."""
    if getattr(model, "score", None) is None and getattr(model, "classifier", None) is not None:
        return model.classifier
    return head_module(model)


def is_head_param(model: Any, name: str) -> bool:
    head_ids = {id(p) for p in classification_head(model).parameters()}
    return id(dict(model.named_parameters())[name]) in head_ids


def trainable_state(model: Any) -> dict[str, Any]:
    """Detached copies of the trainable weights, by parameter name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise KeyError(f"state has weights the model lacks: {missing[:5]}")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def pad_id_of_model(model: Any) -> int:
    """The pad id the classifier was built with (``classifier_config_updates`` sets it)."""
    pad = model.config.pad_token_id
    return pad if pad is not None else model.config.eos_token_id
