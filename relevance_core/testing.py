"""Artifacts with random weights, for tests and benchmarks of the real code paths.

Speed does not depend on the weights, and parity between loaders or engines only
needs the same weights on both sides, so neither needs a trained model:

- ``make_tiny_base``: a tiny randomly initialised Llama with the real base's tokenizer
  (prompts are rendered exactly as in production), fast enough for unit tests;
- ``make_random_head_artifact``: a classifier over any base (tiny or the real one)
  with a seeded random head, written as a ``full`` or ``adapter`` artifact through
  ``relevance_core.manifest.write_artifact`` like a trained one.

``torch``/``transformers`` are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

from relevance_core.base_model import DEFAULT_BASE, ensure_base_model
from relevance_core.checkpoint import FULL_DIR, HEAD_FILE, build_classifier, save_head
from relevance_core.manifest import BaseModelRef, Manifest, staging_dir_for, write_artifact

TINY_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,  # vLLM's CPU attention supports 64
    max_position_embeddings=512,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)


def real_base_dir() -> Path:
    """The default base model's HF directory (built once, then cached, by ``darl base-model``)."""
    return ensure_base_model(DEFAULT_BASE)


def make_tiny_base(dest: Path, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM with the real tokenizer, saved as an HF dir (kept if already there)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (dest / "config.json").is_file():
        return dest
    tok = AutoTokenizer.from_pretrained(real_base_dir())
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger random weights than the default init, so tiny-model logits are not all ~0
    # and parity tests compare non-trivial probabilities.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def tiny_base_ref(base_dir: Path) -> BaseModelRef:
    """A manifest's reference to a local base directory."""
    return BaseModelRef(name="tiny-llama", source="path", path=str(base_dir))


def make_random_head_artifact(
    dest: Path, base_dir: Path, kind: str = "full", seed: int = 0, name: str = "tiny"
) -> Path:
    """``base_dir`` with a seeded random head as an artifact: ``full`` (the whole checkpoint) or
    ``adapter`` (the head alone, over ``base_dir`` by path)."""
    import torch

    model, tok = build_classifier(base_dir)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.5)
    staging = staging_dir_for(dest)
    if kind == "full":
        model.save_pretrained(staging / FULL_DIR)
        tok.save_pretrained(staging / FULL_DIR)
        manifest = Manifest(name=name, kind="full")
    else:
        save_head(model, staging / HEAD_FILE)
        manifest = Manifest(name=name, kind="adapter", base_model=tiny_base_ref(base_dir))
    write_artifact(staging, dest, manifest)
    return dest
