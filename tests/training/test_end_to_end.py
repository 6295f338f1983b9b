"""One tiny-model run of every stage, exported and reloaded through the service loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from relevance_core.manifest import read_manifest
from tests.training.tiny import tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached-trunk"])
def test_pipeline_export_reload_parity(tmp_path: Path, data_root: Path, tiny_base_dir: Path, cached: bool) -> None:
    import torch

    from relevance_core.checkpoint import load_classifier
    from relevance_core.postprocess import probs_from_logits
    from relevance_core.prompt import PromptRenderer
    from service.artifacts import load_artifact
    from training.data import render_pairs
    from training.evaluate import predict
    from training.features import encode
    from training.pipeline import train

    # uncached, num_layers=1: the classifier keeps the first of the tiny base's two layers, in training and
    # serving alike. cached: both layers, the first frozen and cached (training.trunk), LoRA on the second,
    # foreign items as extra training pairs, the pairwise term over each query's items.
    # Each template once: v1 (title and description) uncached, v2 (title only, the default) cached.
    layers, template = (2, "darl-prompt-v2") if cached else (1, "darl-prompt-v1")
    cfg = tiny_config(tmp_path, data_root, tiny_base_dir, num_layers=layers, probe={"dasa_pairs": True})
    cfg = cfg.model_copy(update={"prompt_template": template})
    if cached:
        loss = cfg.finetune.loss.model_copy(update={"pairwise_weight": 0.5})
        finetune = cfg.finetune.model_copy(update={"cache_trunk": True, "foreign_per_query": 1, "loss": loss})
        cfg = cfg.model_copy(update={"finetune": finetune, "eval": cfg.eval.model_copy(update={"curve_points": 2})})
    trained = train(cfg, progress=False)
    summary = trained.summary
    assert summary["stage2"]["trunk_depth"] == (1 if cached else None)
    assert (summary["stage2"]["foreign_pairs"] > 0) == cached
    curve = summary["stage2"]["curve"]  # the learning curve: val metrics during stage 2
    assert len(curve) == (2 if cached else 0)
    if cached:
        assert curve[-1]["step"] == summary["stage2"]["steps"] and curve[0]["pairs_seen"] < curve[-1]["pairs_seen"]
        assert {"macro_f1", "qwk", "inversion_rate"} <= set(curve[-1]["ood"])
    assert (list(cfg.run_path.parent.rglob("trunk-train-*.states.npy")) != []) == cached
    history = json.loads((cfg.run_path / "stage2_history.json").read_text())
    assert all(("pairwise" in h) == cached for h in history)
    assert not cached or any(h["pairwise"] > 0 for h in history)  # batches held pairs of one query
    # Candidate-set ranking on the whole test sets: judged items plus 20 foreign ones per query.
    assert summary["id"]["cand_pairs"] > summary["id"]["n"] and 0 <= summary["id"]["inversion_rate"] <= 1
    assert summary["ood"]["cand_ndcg@10"] is not None
    # Every stage ran and left its record. The probe's val accuracy is that of stage 1, the c = 0 end of
    # the interpolation curve (the probed head over the frozen backbone, scored on the same val pairs).
    curve = summary["interpolation"]["curve"]
    assert summary["probe_val"]["id"]["accuracy"] == curve[0]["id"]["accuracy"] and curve[0]["coef"] == 0.0
    assert set(summary["ood_auroc"]) == {"mahalanobis", "knn", "combined"}
    assert summary["selection"]["selected"] <= 12
    assert summary["stage2"]["dasa_pairs"] == summary["selection"]["labelled"] > 0
    assert summary["probe_val"]["dasa_pairs"] == summary["selection"]["labelled"]  # the probe saw them too
    assert [r["coef"] for r in curve] == [0.0, 0.5, 1.0]
    assert all("id" in r and "ood" in r and np.isfinite(r["objective"]) for r in curve)
    assert summary["interpolation"]["coef"] == max(curve, key=lambda r: r["objective"])["coef"]
    # Temperature scaling ran on val and is folded into the head the export carries (checked by the parity below).
    assert 0.25 <= summary["calibration"]["temperature"] <= 8.0
    assert set(summary["calibration"]) == {"temperature", "val_ece_id", "val_ece_ood"}
    assert summary["id"]["n"] > 0 and summary["ood"]["n"] > 0
    for f in ("metrics.json", "report.md", "confusion_id.png", "reliability_ood.png", "id_vs_ood.png"):
        assert (cfg.run_path / "eval" / f).is_file()

    manifest = read_manifest(cfg.output_path)
    assert manifest.kind == "adapter" and manifest.max_length == 48 and manifest.num_layers == layers
    assert manifest.template_version == template == summary["prompt_template"]
    assert manifest.data_fingerprint and manifest.metrics["id"]["macro_f1"] == summary["id"]["macro_f1"]
    assert manifest.training_config["finetune"]["method"] == "lora"
    assert "adapter/adapter_model.safetensors" in manifest.files and "head.safetensors" in manifest.files
    assert json.loads((cfg.output_path / "adapter" / "adapter_config.json").read_text())["r"] == 4

    # Reload through the service's loader; its merged HF checkpoint must score like the training model.
    loaded = load_artifact(cfg.output_path, tmp_path / "cache")
    assert loaded.renderer().template_version == template
    from transformers import AutoModelForSequenceClassification

    served = AutoModelForSequenceClassification.from_pretrained(loaded.checkpoint_dir, dtype=torch.float32).eval()
    assert served.config.num_hidden_layers == layers == len(served.model.layers)
    pairs = trained.splits.test_id[:20] + trained.splits.test_ood[:20]
    assert any(p.description for p in pairs)  # the two templates render these differently
    seqs, _ = render_pairs(PromptRenderer(trained.tok, cfg.max_length, template), pairs)
    pad = trained.tok.pad_token_id
    _, train_logits = encode(trained.model, seqs, pad, 16, "float32", want_features=False, progress=False)
    _, served_logits = encode(served, seqs, pad, 16, "float32", want_features=False, progress=False)
    np.testing.assert_allclose(probs_from_logits(served_logits), probs_from_logits(train_logits), atol=1e-5)
    # The same loader in memory (what `darl eval` runs) agrees too, and its labels on the whole ID test set
    # give the test accuracy the run reported.
    model, tok, _ = load_classifier(cfg.output_path)
    np.testing.assert_allclose(
        predict(model, tok, pairs, 48, dtype="float32", progress=False, template=template),
        probs_from_logits(train_logits),
        atol=1e-5,
    )
    test_id = trained.splits.test_id
    probs = predict(model, tok, test_id, 48, dtype="float32", progress=False, template=template)
    accuracy = float(np.mean(probs.argmax(1) == np.array([p.label for p in test_id])))
    assert summary["id"]["accuracy"] == pytest.approx(accuracy) and summary["id"]["n"] == len(test_id)


@pytest.mark.slow
def test_resume_gives_same_weights(tmp_path: Path, data_root: Path, tiny_base_dir: Path) -> None:
    """Killing stage 2 and rerunning resumes from the checkpoint and ends identical."""
    import torch

    from training.pipeline import train

    full = train(tiny_config(tmp_path / "a", data_root, tiny_base_dir), export=False, progress=False)
    cfg_b = tiny_config(tmp_path / "b", data_root, tiny_base_dir)
    with pytest.raises(InterruptedError):
        train(cfg_b, export=False, progress=False, stop_after_steps=3)
    assert (cfg_b.run_path / "stage2" / "last.pt").is_file()
    resumed = train(cfg_b, export=False, progress=False)
    for (na, pa), (nb, pb) in zip(full.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert na == nb
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert full.summary["id"] == resumed.summary["id"] and full.summary["ood"] == resumed.summary["ood"]


@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_set_aside_not_resumed(
    tmp_path: Path, data_root: Path, tiny_base_dir: Path
) -> None:
    """A run killed mid stage 2, then rerun in the same directory with another config, starts over."""
    from training.pipeline import run

    with pytest.raises(InterruptedError):
        run(tiny_config(tmp_path, data_root, tiny_base_dir), export=False, progress=False, stop_after_steps=3)
    changed = tiny_config(tmp_path, data_root, tiny_base_dir, num_layers=1)  # other trainable weights
    summary = run(changed, export=False, progress=False)
    stage2 = changed.run_path / "stage2"
    assert (stage2 / "last.stale.pt").is_file()
    assert summary["stage2"]["steps"] == len(json.loads((changed.run_path / "stage2_history.json").read_text()))
    assert json.loads((changed.run_path / "stage2_history.json").read_text())[0]["step"] == 1
