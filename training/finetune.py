"""Stage 2: fine-tuning (LoRA or full) with the DaRL loss, resumable.

The batch order is a pure function of the seed (shuffle, then sort by length
within chunks of 50 batches to cut padding, then shuffle those batches), so a
run killed mid-way and restarted replays the same order: the checkpoint stores
the trainable weights, optimizer, scheduler, RNG state and the optimizer step,
and resuming skips the micro-batches already consumed. With the same seed the
final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.features import autocast, collate, model_device
from training.losses import balanced_class_weights, loss_from_config, pairwise_loss
from training.model import is_head_param, load_trainable_state, trainable_state

log = logging.getLogger(__name__)
CKPT_NAME = "last.pt"
_CHUNK = 50


def batch_order(lengths: Sequence[int], batch_size: int, epochs: float, seed: int) -> list[np.ndarray]:
    """Micro-batches of indices for ``epochs`` passes (the last pass may be partial)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    n = len(lengths)
    per_epoch = math.ceil(n / batch_size)
    wanted = max(1, math.ceil(epochs * per_epoch))
    out: list[np.ndarray] = []
    while len(out) < wanted:
        perm = rng.permutation(n)
        batches: list[np.ndarray] = []
        for start in range(0, n, batch_size * _CHUNK):
            chunk = perm[start : start + batch_size * _CHUNK]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            group = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            batches.extend(group[j] for j in rng.permutation(len(group)))
        out.extend(batches)
    return out[:wanted]


def grouped_batch_order(groups: Sequence[int], batch_size: int, epochs: float, seed: int) -> list[np.ndarray]:
    """Like ``batch_order``, but a group's (a query's) items stay together: groups are shuffled,
    laid end to end and cut into batches, so a pairwise loss finds pairs of one query in a batch."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    per_epoch = math.ceil(len(groups) / batch_size)
    wanted = max(1, math.ceil(epochs * per_epoch))
    out: list[np.ndarray] = []
    while len(out) < wanted:
        flat = np.concatenate([members[j] for j in rng.permutation(len(members))])
        out.extend(flat[i : i + batch_size] for i in range(0, len(flat), batch_size))
    return out[:wanted]


def _save(path: Path, payload: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def finetune(
    model: Any,
    seqs: Sequence[Sequence[int]] | Any,
    labels: Sequence[int],
    cfg: Any,
    pad_id: int,
    seed: int,
    ckpt_dir: Path | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
    run_id: str = "",
    trunk_depth: int | None = None,
    on_step: Callable[[int, int], dict[str, Any] | None] | None = None,
    targets: np.ndarray | None = None,
    groups: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train ``model``'s trainable weights in place; returns the loss history.

    ``seqs``: token ids per pair, or (with ``trunk_depth``) a ``training.trunk`` cache of the
    frozen trunk's states, so that each step runs only the layers from ``trunk_depth`` up.
    ``targets``: optional soft targets ``[N, K]`` (``loss.soft_targets``), else one-hot ``labels``.
    ``groups``: the query of each pair (ids); with ``loss.pairwise_weight`` > 0 batches keep a query's
    items together and the pairwise term is added.
    ``on_step(step, total_steps)``: called after every optimizer step (the learning curve's hook: it
    evaluates when it wants to and returns a record, kept in the history, or None).
    ``cfg`` is a ``FinetuneConfig``. ``stop_after_steps`` ends the call after that
    many optimizer steps *of this call* (after checkpointing), which simulates a
    kill in tests; calling again resumes. ``run_id`` identifies the run (its config):
    a checkpoint left by a different run in the same directory is set aside, never resumed.
    """
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    device = model_device(model)
    labels_arr = np.asarray(labels, dtype=np.int64)
    class_weights = None
    if getattr(cfg.loss, "class_weight", "none") == "balanced":
        class_weights = balanced_class_weights(labels_arr, model.config.num_labels).to(device)
    pairwise = getattr(cfg.loss, "pairwise_weight", 0.0)
    if pairwise and groups is None:
        raise ValueError("loss.pairwise_weight needs the query of each pair (groups)")
    group_arr = np.asarray(groups) if pairwise else None
    grades = (targets @ np.arange(targets.shape[1])) if targets is not None else labels_arr.astype(np.float32)
    if group_arr is not None:
        batches = grouped_batch_order(group_arr, cfg.batch_size, cfg.epochs, seed)
    else:
        lengths = seqs.lengths if trunk_depth is not None else [len(s) for s in seqs]
        batches = batch_order(lengths, cfg.batch_size, cfg.epochs, seed)

    def forward(idx: np.ndarray) -> Any:
        if trunk_depth is not None:
            from training.trunk import top_logits

            h, lens = seqs.batch(idx, device)
            return top_logits(model, h, lens, trunk_depth)
        ids, mask = collate([seqs[i] for i in idx], pad_id)
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits

    total_steps = math.ceil(len(batches) / cfg.grad_accum)
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if is_head_param(model, name) else body).append(p)
    groups = [{"params": body, "lr": cfg.lr}] if body else []
    groups.append({"params": head, "lr": cfg.head_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    step, history = 0, []
    ckpt = ckpt_dir / CKPT_NAME if ckpt_dir else None
    state = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt is not None and ckpt.is_file() else None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if state is not None and (
        state.get("run_id", "") != run_id or state["total_steps"] != total_steps or set(state["trainable"]) != trainable
    ):
        stale = ckpt.with_name(f"{ckpt.stem}.stale{ckpt.suffix}")
        log.warning(
            "%s belongs to a different run (config or trainable weights changed): moved to %s; "
            "stage 2 starts from scratch",
            ckpt,
            stale.name,
        )
        ckpt.replace(stale)
        state = None
    if state is not None:
        load_trainable_state(model, state["trainable"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, history = state["step"], state["history"]
        log.info("resumed stage 2 from %s at step %d/%d", ckpt, step, total_steps)
    if step >= total_steps:
        return {"history": history, "steps": total_steps, "pairs": 0, "seconds": 0.0}
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:
        if ckpt is not None:
            _save(
                ckpt,
                {
                    "step": step,
                    "total_steps": total_steps,
                    "history": history,
                    "run_id": run_id,
                    "trainable": trainable_state(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                },
            )

    model.train()
    done_this_call, pairs, t0 = 0, 0, time.perf_counter()
    remaining = batches[step * cfg.grad_accum :]
    bar = tqdm(
        total=sum(len(b) for b in remaining), desc="stage 2", unit="pair", disable=not progress, dynamic_ncols=True
    )
    try:
        for s in range(step, total_steps):
            micro = batches[s * cfg.grad_accum : (s + 1) * cfg.grad_accum]
            n_step = sum(len(b) for b in micro)
            opt.zero_grad(set_to_none=True)
            step_loss, parts_sum = 0.0, {}
            for idx in micro:
                y = torch.as_tensor(labels_arr[idx], device=device)
                with autocast(cfg.autocast):
                    logits = forward(idx)
                soft = torch.as_tensor(targets[idx], device=device) if targets is not None else None
                loss, parts = loss_from_config(logits, y, cfg.loss, class_weights, soft)
                if group_arr is not None:
                    rank = pairwise_loss(
                        logits,
                        torch.as_tensor(grades[idx], device=device),
                        torch.as_tensor(group_arr[idx], device=device),
                    )
                    loss = loss + pairwise * rank
                    parts["pairwise"] = rank.item()
                weight = len(idx) / n_step  # exact mean over the step's pairs
                (loss * weight).backward()
                step_loss += loss.item() * weight
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v * weight
                bar.update(len(idx))
                pairs += len(idx)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm)
            opt.step()
            sched.step()
            step = s + 1
            history.append({"step": step, "loss": step_loss, **parts_sum})
            if on_step is not None and (record := on_step(step, total_steps)) is not None:
                history[-1]["eval"] = record
                model.train()
            bar.set_postfix(loss=f"{step_loss:.4f}", step=f"{step}/{total_steps}")
            done_this_call += 1
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                checkpoint()
            if stop_after_steps is not None and done_this_call >= stop_after_steps:
                checkpoint()
                break
    finally:
        bar.close()
        model.eval()
    seconds = time.perf_counter() - t0
    return {
        "history": history,
        "steps": step,
        "total_steps": total_steps,
        "pairs": pairs,
        "seconds": seconds,
        "pairs_per_s": pairs / seconds if seconds else None,
    }
