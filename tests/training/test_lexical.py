"""The cheap baselines: lexical overlap features by hand, and both models on synthetic pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import Pair, load_pairs
from training.lexical import HAND_FEATURES, LexicalModel, PriorModel, pair_features, stem


def test_overlap_features_hand_case() -> None:
    f = dict(zip(HAND_FEATURES, pair_features("cordless drill 18v", "DeWalt 18V Cordless Drill Kit", ""), strict=True))
    assert f["q_words"] == 3 and f["title_words"] == 5 and f["desc_words"] == 0
    assert f["title_word_overlap"] == pytest.approx(1.0)
    # 16 distinct trigrams in "cordless drill 18v"; only "l 1" (across "drill 18v") is not in the title
    assert f["title_char3_containment"] == pytest.approx(15 / 16)
    assert f["last_word_in_title"] == 1.0 and f["first_word_in_title"] == 1.0
    assert f["first_match_position"] == pytest.approx(1 / 5)  # "18v" is the title's second word
    assert f["numbers_in_title"] == -1.0  # the query has no pure number
    g = dict(zip(HAND_FEATURES, pair_features("angle brackets", "Simpson angle bracket", ""), strict=True))
    assert g["title_word_overlap"] == pytest.approx(0.5) and g["title_stem_overlap"] == pytest.approx(1.0)
    h = dict(zip(HAND_FEATURES, pair_features("angle bracket", "Behr interior paint", ""), strict=True))
    assert h["title_word_overlap"] == 0.0 and h["title_char3_containment"] == 0.0
    assert stem("brackets") == stem("bracket") == "brack"


def test_lexical_model_beats_the_prior_on_overlap_labelled_data(data_root: Path) -> None:
    from sklearn.metrics import f1_score

    pairs = [p for p in load_pairs(data_root / "homedepot.csv.gz") if p.labeled]
    train = [p for p in pairs if p.split == "train"]
    test = [p for p in pairs if p.split == "test"]
    y = np.array([p.label for p in test])
    lex = LexicalModel(seed=0, max_iter=50).fit(train).predict_proba(test)
    prior_model = PriorModel().fit(train)
    prior = prior_model.predict_proba(test)
    assert lex.shape == (len(test), 3) and np.allclose(lex.sum(1), 1)
    counts = np.bincount([p.label for p in train], minlength=3)
    assert np.allclose(prior, counts / counts.sum())
    f1 = lambda p: f1_score(y, p.argmax(1), average="macro")  # noqa: E731
    assert f1(lex) > f1(prior) + 0.2


def test_prior_model_empty_input() -> None:
    model = PriorModel().fit([Pair("a", "q", "t", "", 2, None, "s", "train")])
    assert model.predict_proba([]).shape == (0, 3)
