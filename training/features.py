"""Forward passes over rendered pairs: head-input features and logits.

The feature of a pair is the hidden state the classification head reads (the
last token's, after the final norm), captured with a forward hook on the head so
it works for any ``*ForSequenceClassification`` model, PEFT-wrapped or not.
Batches are length-sorted (little padding) and right-padded; HF pools the last
non-pad token, and rendered prompts never contain the pad id.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.checkpoint import head_module


def resolve_dtype(dtype: str) -> str:
    """``auto``: bf16 on CUDA and on CPUs where bf16 matmuls measured faster than float32, else float32.

    Neither AVX2 (bf16 emulated) nor the AVX-512-BF16 Xeons without AMX measured here gain from bf16
    (``relevance_core.precision``); the run's summary records the CPU flags.
    """
    if dtype != "auto":
        return dtype
    import torch

    from relevance_core.precision import cpu_prefers_bf16

    if torch.cuda.is_available():
        return "bfloat16"
    return "bfloat16" if cpu_prefers_bf16() else "float32"


def autocast(dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU/GPU (≈4x faster than fp32 on AMX CPUs); a no-op for fp32."""
    import torch

    dtype = resolve_dtype(dtype)
    if dtype == "float32":
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=getattr(torch, dtype))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (longest first, so memory peaks early)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded ``input_ids`` and ``attention_mask`` tensors."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@contextlib.contextmanager
def capture_head_input(model: Any) -> Iterator[list[Any]]:
    """Collect the head's input ``[B, T, H]`` of every forward inside the block."""
    store: list[Any] = []
    handle = head_module(model).register_forward_hook(lambda _m, args, _out: store.append(args[0]))
    try:
        yield store
    finally:
        handle.remove()


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


def encode(
    model: Any,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    dtype: str = "bfloat16",
    want_features: bool = True,
    desc: str = "encode",
    progress: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """``(features [N, H] fp32 or None, logits [N, 3] fp32)`` in input order."""
    import torch
    from tqdm.auto import tqdm

    n = len(seqs)
    logits_out = np.zeros((n, model.config.num_labels), dtype=np.float32)
    feats_out: np.ndarray | None = None
    device = model_device(model)
    was_training = model.training
    model.eval()
    bar = tqdm(total=n, desc=desc, unit="pair", disable=not progress or n == 0, dynamic_ncols=True)
    try:
        hook = capture_head_input(model) if want_features else contextlib.nullcontext([])
        with torch.inference_mode(), autocast(dtype), hook as store:
            for idx in length_sorted_batches([len(s) for s in seqs], batch_size):
                ids, mask = collate([seqs[i] for i in idx], pad_id)
                ids, mask = ids.to(device), mask.to(device)
                store.clear()
                logits = model(input_ids=ids, attention_mask=mask).logits
                logits_out[idx] = logits.float().cpu().numpy()
                if want_features:
                    last = mask.sum(1) - 1
                    h = store[-1][torch.arange(len(idx), device=device), last].float().cpu().numpy()
                    if feats_out is None:
                        feats_out = np.zeros((n, h.shape[1]), dtype=np.float32)
                    feats_out[idx] = h
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return feats_out, logits_out


def seqs_key(seqs: Sequence[Sequence[int]], extra: str) -> str:
    """Content key of a feature cache: the token ids and the model/settings identity."""
    h = hashlib.sha256(extra.encode())
    for s in seqs:
        h.update(np.asarray(s, dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def cached_features(
    cache_dir: Path,
    name: str,
    model: Any,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
    dtype: str,
    identity: str,
) -> np.ndarray:
    """Features of ``seqs``, computed once and stored as ``<name>-<key>.npy``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{name}-{seqs_key(seqs, identity + dtype)}.npy"
    if path.is_file():
        return np.load(path)
    feats, _ = encode(model, seqs, pad_id, batch_size, dtype, desc=f"features {name}")
    assert feats is not None or len(seqs) == 0
    if feats is None:
        feats = np.zeros((0, model.config.hidden_size), dtype=np.float32)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats
