"""`darl probe-depth`: per-depth features equal those of a classifier cut to that depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.tiny import tiny_train_dict

torch = pytest.importorskip("torch")


def test_depth_features_match_a_classifier_built_with_that_depth(tiny_base_dir: Path) -> None:
    from training.depth import depth_features
    from training.features import encode
    from training.model import load_classifier

    full, tok = load_classifier(tiny_base_dir)
    seqs = [tok(t)["input_ids"] for t in ("Query: drill\nItem: cordless drill\nRelevance:", "Query: lamp\nRelevance:")]
    got = depth_features(full, seqs, tok.pad_token_id, [1, 2], 8, "float32", "t", progress=False)
    for k in (1, 2):
        cut, _ = load_classifier(tiny_base_dir, num_layers=k)
        want, _ = encode(cut, seqs, tok.pad_token_id, 8, "float32", progress=False)
        np.testing.assert_allclose(got[k], want, atol=1e-5)
    assert np.abs(got[1] - got[2]).max() > 1e-3  # the depths differ: the comparison above is not vacuous


def test_probe_depths_reports_every_depth(tmp_path: Path, data_root: Path, tiny_base_dir: Path) -> None:
    from training.config import TrainConfig
    from training.depth import depth_markdown, probe_depths

    cfg = TrainConfig.model_validate(tiny_train_dict(data_root, tiny_base_dir, name="d", root_dir=str(tmp_path)))
    result = probe_depths(cfg, [1, 2], progress=False)
    assert [r["num_layers"] for r in result["depths"]] == [1, 2]
    assert all(0 <= r["id"]["macro_f1"] <= 1 and 0 <= r["ood"]["macro_f1"] <= 1 for r in result["depths"])
    assert "| 2 |" in depth_markdown(result, "darl probe-depth", "here")
