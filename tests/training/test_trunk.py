"""The cached-trunk path gives the full model's logits, and training on it gives the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _model(base: Path, num_layers: int | None = None):
    import torch

    from training.model import load_classifier

    model, tok = load_classifier(base, num_layers)
    torch.manual_seed(0)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.5)
    return model.eval(), tok


def _seqs(tok, n: int = 12) -> list[tuple[int, ...]]:
    from relevance_core.prompt import PromptRenderer

    r = PromptRenderer(tok, 40)
    items = [(f"cordless drill kit {i} " + "extra words " * (i % 5), None) for i in range(n)]
    return [x.token_ids for x in r.render_many("cordless drill", items)]


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_top_from_cached_trunk_equals_the_full_forward(tiny_base_dir: Path, tmp_path: Path, depth: int) -> None:
    import torch

    from training.features import collate
    from training.trunk import build_trunk_cache, predict_top

    model, tok = _model(tiny_base_dir)
    seqs = _seqs(tok)
    assert len({len(s) for s in seqs}) > 2  # right padding is exercised
    ids, mask = collate(seqs, tok.pad_token_id)
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
    cache = build_trunk_cache(tmp_path, "t", model, seqs, depth, "tiny", batch_size=5, progress=False, dtype="float32")
    got, feats = predict_top(model, cache, depth, batch_size=4, want_features=True, progress=False, dtype="float32")
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-5)
    assert feats.shape == (len(seqs), model.config.hidden_size)
    again = build_trunk_cache(tmp_path, "t", model, seqs, depth, "tiny", progress=False, dtype="float32")
    assert np.array_equal(np.asarray(again.states), np.asarray(cache.states))  # read back, not recomputed
    bf16 = build_trunk_cache(tmp_path, "t", model, seqs, depth, "tiny", progress=False, dtype="bfloat16")
    assert len(list(tmp_path.glob("trunk-t-*.states.npy"))) == 2  # bf16 states have their own key
    if depth:  # computed in bf16 (depth 0 is the embedding lookup: no arithmetic to round)
        assert not np.array_equal(np.asarray(bf16.states), np.asarray(cache.states))


def test_last_token_layer_matches_the_hf_layer_exactly(tiny_base_dir: Path) -> None:
    import torch

    from training.features import collate
    from training.trunk import top_logits, trunk_states

    model, tok = _model(tiny_base_dir)
    ids, mask = collate(_seqs(tok), tok.pad_token_id)
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask).logits
        h = trunk_states(model, ids, 1)  # fp32, no cache: only the last-token shortcut differs
        got = top_logits(model, h, mask.sum(1), 1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_training_on_the_cached_trunk_gives_the_uncached_weights(tiny_base_dir: Path, tmp_path: Path) -> None:
    """Full fine-tuning of the top layer: the frozen layer below gets no gradient either way."""
    import torch

    from training.config import FinetuneConfig
    from training.finetune import finetune
    from training.model import prepare_trainable, trainable_state
    from training.trunk import build_trunk_cache

    seqs_tok = _model(tiny_base_dir)[1]
    seqs = _seqs(seqs_tok, 16)
    labels = [i % 3 for i in range(16)]
    fc = FinetuneConfig(
        method="full", top_layers=1, epochs=2, batch_size=4, grad_accum=1, lr=1e-3, head_lr=1e-3, autocast="float32"
    )
    out = []
    for cached in (False, True):
        model, tok = _model(tiny_base_dir)
        model = prepare_trainable(model, "full", fc.lora, fc.top_layers)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith(("model.layers.1.", "model.norm", "score")) for n in trainable)
        inputs = seqs
        if cached:
            with torch.no_grad():
                inputs = build_trunk_cache(tmp_path, "c", model, seqs, 1, "tiny", progress=False, dtype="float32")
        finetune(model, inputs, labels, fc, tok.pad_token_id, seed=0, progress=False, trunk_depth=1 if cached else None)
        out.append(trainable_state(model))
    assert out[0].keys() == out[1].keys()
    for name in out[0]:
        torch.testing.assert_close(out[1][name], out[0][name], atol=2e-3, rtol=1e-2)
