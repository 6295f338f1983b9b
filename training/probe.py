"""Stage 1: linear probe, the head fitted on cached features of the frozen backbone.

LP-FT (Kumar et al. 2022): starting fine-tuning from a fitted head instead of a
random one distorts pretrained features less, which helps out of distribution.
Multinomial logistic regression, full-batch L-BFGS on the cached head-input
features. Llama/Qwen score heads have no bias, so none is fitted unless the head
has one; each feature dimension is rescaled by its RMS for conditioning and the
weights are mapped back, so the fitted head reads raw hidden states.
"""

from __future__ import annotations

import logging

import numpy as np

from relevance_core.labels import NUM_LABELS

log = logging.getLogger(__name__)


def fit_probe(
    feats: np.ndarray,
    labels: np.ndarray,
    l2: float = 1e-3,
    max_iter: int = 300,
    class_weight: str = "none",
    with_bias: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(weight [C, d], bias [C] or None)`` minimising weighted CE + l2·‖W‖² (scaled space)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(feats, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    scale = x.pow(2).mean(0).sqrt().clamp_min(1e-6)
    xs = x / scale
    weight = None
    if class_weight == "balanced":
        counts = torch.bincount(y, minlength=NUM_LABELS).float().clamp_min(1)
        weight = len(y) / (NUM_LABELS * counts)
    w = torch.zeros(NUM_LABELS, x.shape[1], requires_grad=True)
    b = torch.zeros(NUM_LABELS, requires_grad=with_bias)
    params = [w, b] if with_bias else [w]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w.T + b, y, weight=weight) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w.detach() / scale).numpy()
    return w_raw.astype(np.float32), (b.detach().numpy().astype(np.float32) if with_bias else None)


def select_probe(
    feats: np.ndarray,
    labels: np.ndarray,
    val: dict[str, tuple[np.ndarray, np.ndarray]],
    probe_cfg,
    objective_name: str,
    seed: int = 0,
) -> dict:
    """Fit one probe per l2 of ``probe_cfg`` and keep the best by ``objective_name`` on validation.

    ``val`` maps a domain (``"id"``/``"ood"``) to its ``(features, labels)``. Returns
    ``{"l2", "weight", "bias", "objective", "val": {domain: accuracy/macro_f1/ece}}``.
    """
    from relevance_core.postprocess import probs_from_logits
    from training.metrics import compute_metrics, objective

    grid = probe_cfg.l2 if isinstance(probe_cfg.l2, list) else [probe_cfg.l2]
    best: dict | None = None
    for l2 in grid:
        w, b = fit_probe(feats, labels, l2, probe_cfg.max_iter, probe_cfg.class_weight, seed=seed)
        scores = {}
        for dom, (x, y) in val.items():
            m = compute_metrics(probs_from_logits(head_logits(x, w, b)), y)
            scores[dom] = {k: m[k] for k in ("accuracy", "macro_f1", "ece")}
        score = objective(objective_name, scores.get("id"), scores.get("ood")) if scores else 0.0
        log.info("probe l2=%g val: %s", l2, scores)
        if best is None or score > best["objective"]:
            best = {"l2": l2, "weight": w, "bias": b, "objective": score, "val": scores}
    assert best is not None, "probe.l2 grid is empty"
    return best


def set_head(model, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
    """Write probe weights into the model's score head."""
    import torch

    from relevance_core.checkpoint import head_module

    head = head_module(model)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.copy_(torch.as_tensor(bias if bias is not None else np.zeros(len(weight)), dtype=head.bias.dtype))


def head_logits(feats: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    out = np.asarray(feats, dtype=np.float32) @ np.asarray(weight, dtype=np.float32).T
    return out + bias if bias is not None else out
