"""DaRL loss terms: values and gradients on hand-made cases."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training.losses import darl_loss  # noqa: E402


def test_ce_only_matches_torch() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    loss, parts = darl_loss(logits, y)
    expected = torch.nn.functional.cross_entropy(logits, y)
    assert loss.item() == pytest.approx(expected.item())
    assert parts["ce"] == pytest.approx(expected.item())


def test_uniform_prediction_terms() -> None:
    logits = torch.zeros(1, 3)
    y = torch.tensor([2])
    _, parts = darl_loss(logits, y, confidence_penalty=1.0, ordinal_weight=1.0)
    assert parts["ce"] == pytest.approx(math.log(3))
    assert parts["neg_entropy"] == pytest.approx(-math.log(3))  # Σ p log p of uniform
    # E[g] = 1, target 2 → ((1 - 2) / 2)² = 0.25
    assert parts["ordinal"] == pytest.approx(0.25)
    loss, _ = darl_loss(logits, y, confidence_penalty=0.5, ordinal_weight=2.0)
    assert loss.item() == pytest.approx(math.log(3) - 0.5 * math.log(3) + 2 * 0.25)


def test_emd2_value() -> None:
    # p = one-hot on grade 0, target 2: CDF_p = [1,1,1], CDF_y = [0,0,1] → 1 + 1 + 0 = 2
    logits = torch.tensor([[100.0, -100.0, -100.0]])
    _, parts = darl_loss(logits, torch.tensor([2]), ordinal_weight=1.0, ordinal_form="emd2")
    assert parts["ordinal"] == pytest.approx(2.0, abs=1e-6)
    # a near-miss costs less than a far miss
    _, near = darl_loss(torch.tensor([[-100.0, 100.0, -100.0]]), torch.tensor([2]), ordinal_form="emd2")
    assert near["ordinal"] == pytest.approx(1.0, abs=1e-6)


def test_ordinal_gradient_matches_hand_derivation() -> None:
    """d/dz of ((E[g]-y)/2)² = 2·(E[g]-y)/4 · p_k (g_k − E[g])."""
    z = torch.tensor([[0.3, -0.2, 0.5]], requires_grad=True)
    y = torch.tensor([0])
    loss, _ = darl_loss(z, y, ordinal_weight=1.0)
    ce_grad = torch.softmax(z, -1) - torch.nn.functional.one_hot(y, 3)
    loss.backward()
    p = torch.softmax(z.detach(), -1)[0]
    g = torch.arange(3.0)
    eg = (p * g).sum()
    ord_grad = 2 * (eg - 0) / 4 * p * (g - eg)
    torch.testing.assert_close(z.grad[0], (ce_grad[0] + ord_grad).float(), atol=1e-6, rtol=1e-5)


def test_confidence_penalty_gradient_and_direction() -> None:
    """d/dz Σ p log p = p ⊙ (log p + H), and the penalty lowers the top probability."""
    z = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    y = torch.tensor([0])
    base, _ = darl_loss(z, y)
    pen, _ = darl_loss(z, y, confidence_penalty=1.0)
    (pen - base).backward()
    p = torch.softmax(z.detach(), -1)[0]
    logp = p.log()
    ent = -(p * logp).sum()
    torch.testing.assert_close(z.grad[0], p * (logp + ent), atol=1e-6, rtol=1e-5)
    assert z.grad[0, 0] > 0  # gradient descent pushes the confident logit down


def test_balanced_class_weights() -> None:
    from training.losses import balanced_class_weights

    w = balanced_class_weights([0, 1, 1, 2, 2, 2], 3)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, 2 / 3]))
    z = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    loss, _ = darl_loss(z, y, class_weights=w)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(z, y, weight=w).item())


def test_label_smoothing_and_bad_form() -> None:
    z = torch.tensor([[1.0, 0.0, 0.0]])
    y = torch.tensor([0])
    smooth, _ = darl_loss(z, y, label_smoothing=0.1)
    assert smooth.item() == pytest.approx(torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1).item())
    with pytest.raises(ValueError):
        darl_loss(z, y, ordinal_form="nope")


def test_soft_targets_put_the_label_thresholds_at_the_grade_midpoints() -> None:
    from training.losses import soft_target

    assert soft_target(2, 3.0, "homedepot") == pytest.approx([0, 0, 1])
    assert soft_target(0, 1.0, "homedepot") == pytest.approx([1, 0, 0])
    # 5/3 (the irrelevant/weak threshold) -> grade 0.5: half irrelevant, half weak
    assert soft_target(0, 5 / 3, "homedepot") == pytest.approx([0.5, 0.5, 0])
    assert soft_target(2, 2.5, "homedepot") == pytest.approx([0, 0.5, 0.5])
    # 2.33 (weak): grade 0.5 + (2.33 - 1.667) / 0.833 = 1.3 -> 70 % weak, 30 % strong; argmax = the hard label
    assert soft_target(1, 7 / 3, "homedepot") == pytest.approx([0, 0.7, 0.3])
    assert soft_target(1, 3.0, "crowdflower") == [0.0, 1.0, 0.0]  # one-hot off Home Depot
    assert soft_target(0, None, "homedepot") == [1.0, 0.0, 0.0]


def test_one_hot_targets_give_the_hard_label_loss() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    w = torch.tensor([1.0, 2.0, 3.0])
    kw = {"confidence_penalty": 0.1, "ordinal_weight": 0.5, "class_weights": w}
    hard, _ = darl_loss(logits, y, **kw)
    soft, _ = darl_loss(logits, y, targets=torch.nn.functional.one_hot(y, 3).float(), **kw)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)


def test_soft_target_ce_and_ordinal_hand_case() -> None:
    logits = torch.zeros(1, 3)  # uniform: E[g] = 1
    t = torch.tensor([[0.0, 0.7, 0.3]])  # E[target] = 1.3
    _, parts = darl_loss(logits, torch.tensor([1]), ordinal_weight=1.0, targets=t)
    assert parts["ce"] == pytest.approx(math.log(3))
    assert parts["ordinal"] == pytest.approx(((1 - 1.3) / 2) ** 2)


def test_pairwise_loss_hand_case() -> None:
    """Expected grades 2·p_strong + p_weak; only same-query pairs with different grades count."""
    from training.losses import pairwise_loss

    big = 30.0  # logits that make each prediction one-hot
    logits = torch.tensor([[0, 0, big], [big, 0, 0], [0, big, 0], [big, 0, 0]])  # E[g] = 2, 0, 1, 0
    grades = torch.tensor([2.0, 0.0, 0.0, 2.0])
    groups = torch.tensor([0, 0, 1, 1])
    # query 0: (item 0 above item 1) scores 2 − 0 → softplus(−10); query 1: item 3 (grade 2) scores 0
    # against item 2's 1 → softplus(5): the inverted pair carries the loss.
    want = (math.log1p(math.exp(-10.0)) + math.log1p(math.exp(5.0))) / 2
    assert pairwise_loss(logits, grades, groups, scale=5.0).item() == pytest.approx(want, rel=1e-4)
    # no pair of one query with different grades: zero, with a gradient path
    flat = pairwise_loss(logits.requires_grad_(), torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 2]))
    assert flat.item() == 0.0
    flat.backward()


def test_grouped_batch_order_keeps_a_query_together() -> None:
    from training.finetune import grouped_batch_order

    groups = [g for g in range(20) for _ in range(4)]  # 20 queries × 4 items, batches of 8
    batches = grouped_batch_order(groups, 8, 1.0, seed=3)
    assert sorted(int(i) for b in batches for i in b) == list(range(80))  # each item once per epoch
    for b in batches:
        counts = {}
        for i in b:
            counts[groups[i]] = counts.get(groups[i], 0) + 1
        assert sorted(counts.values()) == [4, 4]  # two whole queries per batch
    assert [list(b) for b in batches] == [list(b) for b in grouped_batch_order(groups, 8, 1.0, seed=3)]
    assert [list(b) for b in batches] != [list(b) for b in grouped_batch_order(groups, 8, 1.0, seed=4)]
