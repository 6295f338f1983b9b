"""Decoding rules of the decoding study, on hand-computed cases."""

from __future__ import annotations

import numpy as np

from training.decoding import _best, grade_cuts, label_offsets, likelihood_offsets


def test_label_offsets_move_the_argmax() -> None:
    p = np.array([[0.40, 0.35, 0.25]])
    assert label_offsets(p, np.zeros(3)).tolist() == [0]
    # log 0.35 + 0.2 = -0.850 > log 0.40 = -0.916
    assert label_offsets(p, np.array([0.0, 0.2, 0.0])).tolist() == [1]


def test_grade_cuts_bucket_the_expected_grade() -> None:
    p = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0, 0.5], [0.7, 0.3, 0.0]], dtype=float)
    # expected grades 0, 1, 2, 1, 0.3
    assert grade_cuts(p, (0.5, 1.5)).tolist() == [0, 1, 2, 1, 0]
    assert grade_cuts(p, (0.2, 0.9)).tolist() == [0, 2, 2, 2, 1]


def test_best_offsets_fix_a_model_that_never_says_weak() -> None:
    # weak pairs get p = (0.45, 0.40, 0.15): argmax says irrelevant; an offset for weak of ≥ 0.12 fixes it
    p = np.array([[0.45, 0.40, 0.15]] * 4 + [[0.8, 0.1, 0.1]] * 4)
    y = np.array([1] * 4 + [0] * 4)
    data = {"val_id": (p, y, []), "val_ood": (p, y, [])}
    grid = [np.array([0.0, b, 0.0]) for b in (0.0, 0.5, 2.0)]
    best = _best(grid, label_offsets, "macro_f1", data)
    assert best.tolist() == [0.0, 0.5, 0.0]  # 2.0 would turn the irrelevant pairs weak too


def test_likelihood_offsets_lower_grades_the_labels_never_have() -> None:
    p = np.full((50, 3), 1 / 3)
    y = np.full(50, 2)
    data = {"val_id": (p, y, []), "val_ood": (p, y, [])}
    b = likelihood_offsets(data)
    assert b[2] == 0.0 and b[0] < -2 and b[1] < -2
