"""Temperature scaling: recovers a known temperature, folds into the head without changing argmax."""

from __future__ import annotations

import numpy as np
import torch

from training.calibration import fit_temperature, fold_temperature, nll


def test_fit_recovers_the_temperature_of_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(4000, 3))
    labels = np.array([rng.choice(3, p=np.exp(z) / np.exp(z).sum()) for z in true])
    over = 2.0 * true  # twice as confident as the labels warrant
    probs = np.exp(over) / np.exp(over).sum(axis=1, keepdims=True)
    t = fit_temperature(probs, labels)
    assert 1.8 < t < 2.2
    logp = np.log(probs)
    assert nll(logp, labels, t) < nll(logp, labels, 1.0)


def test_folding_divides_the_logits_and_keeps_the_argmax() -> None:
    head = torch.nn.Linear(5, 3, bias=True)
    x = torch.randn(7, 5)
    before = head(x).detach()
    fold_temperature(head, 2.5)
    after = head(x).detach()
    torch.testing.assert_close(after, before / 2.5)
    assert torch.equal(after.argmax(1), before.argmax(1))


def test_old_runs_keep_their_hash_when_a_new_switch_is_at_its_default() -> None:
    from training.config import TrainConfig
    from training.experiments import config_sha

    cfg = TrainConfig.model_validate({"name": "x"})
    on = TrainConfig.model_validate({"name": "x", "interpolate": {"temperature": True}})
    dump = cfg.for_manifest()
    dump["interpolate"].pop("temperature")
    dump["probe"].pop("dasa_pairs")
    dump["finetune"]["loss"].pop("pairwise_weight")
    dump.pop("run_dir")  # where a run writes is not part of its key (any checkout reuses it)
    dump.pop("output_dir")
    import hashlib
    import json

    legacy = hashlib.sha256(json.dumps({"kind": "darl", "config": dump}, sort_keys=True).encode()).hexdigest()[:16]
    assert config_sha({}, cfg) == legacy
    assert config_sha({}, on) != legacy
