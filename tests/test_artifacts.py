"""The service's artifact loader: verification and adapter merging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relevance_core.checkpoint import ADAPTER_DIR, HEAD_FILE, build_classifier, save_head
from relevance_core.manifest import ArtifactError, Manifest, staging_dir_for, write_artifact
from relevance_core.testing import tiny_base_ref
from service.artifacts import load_artifact


def lora_artifact(dest: Path, base: Path):
    """A LoRA adapter with non-zero updates + a trained-looking head, and the live PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = build_classifier(base)
    torch.manual_seed(3)
    with torch.no_grad():
        model.score.weight.normal_(0, 0.5)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)  # default init is zero: make the adapter matter
    staging = staging_dir_for(dest)
    peft_model.save_pretrained(staging / ADAPTER_DIR)
    save_head(peft_model.base_model.model, staging / HEAD_FILE)
    write_artifact(staging, dest, Manifest(name="lora", kind="adapter", base_model=tiny_base_ref(base)))
    return peft_model.eval()


def test_adapter_artifact_merges_to_the_same_model(tmp_path: Path, tiny_base: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    peft_model = lora_artifact(tmp_path / "art", tiny_base)
    loaded = load_artifact(tmp_path / "art", tmp_path / "cache")
    assert loaded.checkpoint_dir.is_relative_to(tmp_path / "cache")
    merged = AutoModelForSequenceClassification.from_pretrained(loaded.checkpoint_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[22731, 42, 7256, 36573, 198, 12659, 42, 33523, 198, 29919, 8169, 42]])
    with torch.inference_mode():
        want = peft_model(input_ids=ids).logits.numpy()
        got = merged(input_ids=ids).logits.numpy()
        base_only, _ = build_classifier(tiny_base)
        unmerged = base_only(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want - unmerged).max() > 1e-2, "adapter had no effect; the test would be vacuous"
    # A second load reuses the merge (same content hash, same directory).
    assert load_artifact(tmp_path / "art", tmp_path / "cache").checkpoint_dir == loaded.checkpoint_dir


def test_missing_artifact_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="make artifact"):
        load_artifact(tmp_path / "nope", tmp_path / "cache")


def test_tampered_adapter_is_refused_before_loading(tmp_path: Path, tiny_base: Path) -> None:
    lora_artifact(tmp_path / "art", tiny_base)
    weights = next((tmp_path / "art" / ADAPTER_DIR).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(tmp_path / "art", tmp_path / "cache")
    assert not (tmp_path / "cache" / "merged").exists() or not any((tmp_path / "cache" / "merged").iterdir())


def test_num_layers_keeps_the_first_layers_of_the_base(tmp_path: Path, tiny_base: Path) -> None:
    """A shallower classifier is the base's first k layers (same weights), and the depth is part of the version."""
    import torch

    full, _ = build_classifier(tiny_base)
    short, _ = build_classifier(tiny_base, num_layers=1)
    assert short.config.num_hidden_layers == 1 == len(short.model.layers)
    torch.testing.assert_close(short.model.layers[0].state_dict(), full.model.layers[0].state_dict())
    with pytest.raises(ArtifactError, match="num_layers=3"):
        build_classifier(tiny_base, num_layers=3)
    ref = tiny_base_ref(tiny_base)
    deep = Manifest(name="x", kind="adapter", base_model=ref, files={"head.safetensors": "0" * 64})
    assert deep.model_copy(update={"num_layers": 1}).version != deep.version
