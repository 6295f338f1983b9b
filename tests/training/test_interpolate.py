"""WiSE interpolation: endpoints reproduce the two models; LoRA delta scales linearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _tiny_lora(base: Path):
    from training.model import attach_lora, load_classifier, trainable_state

    torch.manual_seed(0)
    model, tok = load_classifier(base)
    model = attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    s1 = trainable_state(model)
    with torch.no_grad():  # a "trained" stage 2: non-zero B and a moved head
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    return model, tok, s1, trainable_state(model)


def _logits(model, tok):
    from training.features import encode

    seqs = [
        tok("Query: drill\nItem: cordless drill\nRelevance:")["input_ids"],
        tok("Query: lamp\nItem: garden hose\nRelevance:")["input_ids"],
    ]
    return encode(model, seqs, tok.pad_token_id, 8, "float32", progress=False)[1]


def test_endpoints_and_linear_delta(tiny_base_dir: Path) -> None:
    from training.interpolate import interpolate_state, pick_coefficient
    from training.model import load_classifier, load_trainable_state
    from training.probe import set_head

    model, tok, s1, s2 = _tiny_lora(tiny_base_dir)
    stage2 = _logits(model, tok)

    load_trainable_state(model, interpolate_state(s1, s2, 1.0))
    np.testing.assert_allclose(_logits(model, tok), stage2, atol=1e-6)

    # coef 0 = the frozen base with the stage-1 head (adapter is a zero delta).
    load_trainable_state(model, interpolate_state(s1, s2, 0.0))
    plain, _ = load_classifier(tiny_base_dir)
    head_key = next(k for k in s1 if k.endswith("score.weight"))
    set_head(plain, s1[head_key].numpy())
    np.testing.assert_allclose(_logits(model, tok), _logits(plain, tok), atol=1e-5)

    # Merged weights at c are W0 + c·ΔW: check on one LoRA layer.
    half = interpolate_state(s1, s2, 0.5)
    b_key = next(k for k in s2 if "lora_B" in k)
    a_key = b_key.replace("lora_B", "lora_A")
    torch.testing.assert_close(half[b_key] @ half[a_key], 0.5 * (s2[b_key] @ s2[a_key]))
    torch.testing.assert_close(half[head_key], 0.5 * (s1[head_key] + s2[head_key]))

    best, curve = pick_coefficient([0.0, 0.5, 1.0], lambda c: (-((c - 0.5) ** 2), {"c": c}))
    assert best == 0.5 and [r["coef"] for r in curve] == [0.0, 0.5, 1.0]
    with pytest.raises(KeyError):
        interpolate_state(s1, {}, 0.5)


def test_top_layers_adapts_only_the_last_layers_and_keeps_backward_above_them(tiny_base_dir: Path) -> None:
    from training.model import attach_lora, load_classifier

    model, tok = load_classifier(tiny_base_dir)
    n = model.config.num_hidden_layers
    model = attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "down_proj"], top_layers=1)
    lora = [name for name, _ in model.named_parameters() if "lora_" in name]
    assert lora and all(f"layers.{n - 1}." in name for name in lora)
    ids = torch.as_tensor([tok("Query: drill\nItem: cordless drill\nRelevance:")["input_ids"]])
    model(input_ids=ids).logits.sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(p.grad is None for name, p in model.named_parameters() if "layers.0." in name)
    with pytest.raises(ValueError, match="top_layers"):
        attach_lora(load_classifier(tiny_base_dir)[0], 4, 8, 0.0, ["q_proj"], top_layers=n + 1)
