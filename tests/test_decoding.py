"""The decoding study's fitted rules on hand-computed cases (training/decoding.py)."""

import numpy as np
import pytest

from training.decoding import grade_cuts, grade_values, label_offsets, rmse_with


def test_grade_values_are_the_class_means_for_one_hot_probabilities() -> None:
    p = np.eye(3)[[0, 0, 1, 2, 2]]
    raw = [1.0, 1.5, 2.0, 2.5, 3.0]
    data = {"val_id": (p, np.array([0, 0, 1, 2, 2]), raw)}
    values = grade_values(data)
    np.testing.assert_allclose(values, [1.25, 2.0, 2.75], atol=1e-9)
    # each pair is off by 0.25 except the weak one: sqrt(4 * 0.0625 / 5)
    assert rmse_with(p, raw, values) == pytest.approx(np.sqrt(0.05))
    assert rmse_with(p, raw, np.array([1.0, 2.0, 3.0])) == pytest.approx(np.sqrt(0.5 / 5))


def test_rmse_with_skips_pairs_without_a_raw_grade() -> None:
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert rmse_with(p, [None, 2.0], np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)


def test_label_offsets_and_grade_cuts() -> None:
    p = np.array([[0.4, 0.35, 0.25], [0.1, 0.3, 0.6]])
    assert label_offsets(p, np.zeros(3)).tolist() == [0, 2]
    assert label_offsets(p, np.array([-1.0, 0.0, 0.0])).tolist() == [1, 2]
    # expected grades 0.85 and 1.5 on the 0..2 scale
    assert grade_cuts(p, (0.9, 1.4)).tolist() == [0, 2]
