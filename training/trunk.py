"""Split forward: a frozen trunk computed once and cached, a trainable top run many times.

Stage 2 trains only the last ``top`` decoder layers (and the head), so the hidden
states after the first ``n - top`` layers never change: computing them once per
pair and reusing them lets the top layers see several epochs for the price of
their own forward/backward. The same cached states serve the probe features, the
DASA features, the interpolation grid and the test evaluation.

The trunk's output is stored per pair (fp32 on disk, memory-mapped, keyed by
content). ``top_logits`` runs the remaining layers on those states; the last
layer only needs its output at the last token (the one the head reads), so for
Llama/Qwen2-style layers it computes keys and values for every position but the
query, attention output and MLP for that one token: same logits as the full
model (tests/training/test_trunk.py), a fraction of the layer's cost.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def backbone(model: Any) -> Any:
    """The decoder (``model.model`` of a ``*ForSequenceClassification``), PEFT-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def _positions(h: Any) -> Any:
    import torch

    return torch.arange(h.shape[1], device=h.device).unsqueeze(0)


def run_layers(model: Any, h: Any, start: int, stop: int) -> Any:
    """Decoder layers ``start:stop`` on hidden states ``[B, T, D]`` (causal; right padding is harmless:
    a real token never attends to the padding after it)."""
    base = backbone(model)
    if start >= stop:
        return h
    pos = _positions(h)
    pe = base.rotary_emb(h, position_ids=pos)
    for layer in base.layers[start:stop]:
        h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
    return h


def trunk_states(model: Any, ids: Any, depth: int) -> Any:
    """Hidden states ``[B, T, D]`` after the first ``depth`` decoder layers."""
    return run_layers(model, backbone(model).embed_tokens(ids), 0, depth)


def _fast_last_layer_ok(layer: Any) -> bool:
    attn = getattr(layer, "self_attn", None)
    return (
        attn is not None
        and all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))
        and not hasattr(attn, "q_norm")
        and getattr(attn, "sliding_window", None) is None
        and hasattr(layer, "mlp")
    )


def _last_token_layer(layer: Any, h: Any, last: Any, pe: tuple[Any, Any]) -> Any:
    """One decoder layer's output at ``last`` only: ``[B, D]``."""
    import torch
    import torch.nn.functional as F

    mod = sys.modules[type(layer.self_attn).__module__]
    attn = layer.self_attn
    b, t, _ = h.shape
    hd = attn.head_dim
    rows = torch.arange(b, device=h.device)
    x = layer.input_layernorm(h)
    q = attn.q_proj(x[rows, last]).view(b, -1, 1, hd)  # [B, H, 1, hd]
    k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # [B, KV, T, hd]
    v = attn.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
    cos, sin = pe  # [1, T, hd]
    cq, sq = cos[0, last][:, None, None, :], sin[0, last][:, None, None, :]
    q = q * cq + mod.rotate_half(q) * sq
    k = k * cos[:, None] + mod.rotate_half(k) * sin[:, None]
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    keep = (torch.arange(t, device=h.device)[None, :] <= last[:, None])[:, None, None, :]  # [B, 1, 1, T]
    dropout = attn.attention_dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout, scale=attn.scaling)
    h_last = h[rows, last] + attn.o_proj(out.reshape(b, -1))
    return h_last + layer.mlp(layer.post_attention_layernorm(h_last))


def top_logits(model: Any, h: Any, lengths: Any, depth: int, want_features: bool = False) -> Any:
    """Logits ``[B, K]`` from trunk states ``h`` (layers ``depth:``, final norm, head).

    ``lengths``: real tokens per row (right padding). With ``want_features`` also returns the
    head's input ``[B, D]`` (the DASA / probe feature).
    """
    from relevance_core.checkpoint import head_module

    base = backbone(model)
    n = len(base.layers[: base.config.num_hidden_layers])
    last = lengths - 1
    if depth >= n:
        h_last = h[_rows(h), last]
    elif _fast_last_layer_ok(base.layers[n - 1]):
        h = run_layers(model, h, depth, n - 1)
        pe = base.rotary_emb(h, position_ids=_positions(h))
        h_last = _last_token_layer(base.layers[n - 1], h, last, pe)
    else:
        h_last = run_layers(model, h, depth, n)[_rows(h), last]
    feats = base.norm(h_last)
    logits = head_module(model)(feats)
    return (logits, feats) if want_features else logits


def _rows(h: Any) -> Any:
    import torch

    return torch.arange(h.shape[0], device=h.device)


class TrunkCache:
    """Trunk states of one set of sequences: ``[sum(len), D]`` fp32 plus offsets, memory-mapped."""

    def __init__(self, states: np.ndarray, offsets: np.ndarray) -> None:
        self.states, self.offsets = states, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, idx: Sequence[int], device: Any = "cpu") -> tuple[Any, Any]:
        """Right-padded fp32 ``[B, T, D]`` states and their lengths, for rows ``idx``."""
        import torch

        lens = self.lengths[np.asarray(idx)]
        out = np.zeros((len(idx), int(lens.max()), self.states.shape[1]), dtype=np.float32)
        for r, i in enumerate(idx):
            out[r, : lens[r]] = self.states[self.offsets[i] : self.offsets[i + 1]]
        return torch.from_numpy(out).to(device), torch.as_tensor(lens, device=device)


class JoinedTrunk:
    """Rows of several caches as one (e.g. a train subset + the DASA pairs + foreign negatives)."""

    def __init__(self, parts: Sequence[tuple[TrunkCache, Sequence[int]]]) -> None:
        self.rows = [(c, int(i)) for c, idx in parts for i in idx]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([c.offsets[i + 1] - c.offsets[i] for c, i in self.rows], dtype=np.int64)

    def batch(self, idx: Sequence[int], device: Any = "cpu") -> tuple[Any, Any]:
        import torch

        rows = [self.rows[i] for i in idx]
        lens = np.array([c.offsets[i + 1] - c.offsets[i] for c, i in rows])
        width = next(iter(rows))[0].states.shape[1]
        out = np.zeros((len(rows), int(lens.max()), width), dtype=np.float32)
        for r, (c, i) in enumerate(rows):
            out[r, : lens[r]] = c.states[c.offsets[i] : c.offsets[i + 1]]
        return torch.from_numpy(out).to(device), torch.as_tensor(lens, device=device)


def cache_key(seqs: Sequence[Sequence[int]], identity: str) -> str:
    h = hashlib.sha256(identity.encode())
    for s in seqs:
        h.update(np.asarray(s, dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def build_trunk_cache(
    cache_dir: Path,
    name: str,
    model: Any,
    seqs: Sequence[Sequence[int]],
    depth: int,
    identity: str,
    batch_size: int = 64,
    progress: bool = True,
    dtype: str = "auto",
) -> TrunkCache:
    """Trunk states of ``seqs`` after ``depth`` layers, computed once and stored as ``trunk-<name>-<key>``.

    ``identity`` names the weights (base, depth, max length) and the key adds the depth and the precision
    ``dtype`` resolves to: a change gives a new key, never stale states.
    """
    import torch
    from tqdm.auto import tqdm

    from training.features import autocast, collate, length_sorted_batches, model_device, resolve_dtype
    from training.model import pad_id_of_model

    cache_dir.mkdir(parents=True, exist_ok=True)
    # bf16 states differ from float32 ones: the key names the precision (float32 keys kept as they were)
    precision = "" if resolve_dtype(dtype) == "float32" else f"|dtype={resolve_dtype(dtype)}"
    stem = cache_dir / f"trunk-{name}-{cache_key(seqs, f'{identity}|depth={depth}{precision}')}"
    states_path, offsets_path = stem.with_suffix(".states.npy"), stem.with_suffix(".offsets.npy")
    if states_path.is_file() and offsets_path.is_file():
        return TrunkCache(np.load(states_path, mmap_mode="r"), np.load(offsets_path))
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hidden = backbone(model).config.hidden_size
    tmp = stem.with_suffix(".states.tmp.npy")
    states = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(int(offsets[-1]), hidden))
    device, pad = model_device(model), pad_id_of_model(model)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(seqs), desc=f"trunk {name}", unit="pair", disable=not progress or not seqs, dynamic_ncols=True)
    try:
        with torch.inference_mode(), autocast(dtype):
            for idx in length_sorted_batches(lengths, batch_size):
                ids, _ = collate([seqs[i] for i in idx], pad)
                h = trunk_states(model, ids.to(device), depth).float().cpu().numpy()
                for r, i in enumerate(idx):
                    states[offsets[i] : offsets[i + 1]] = h[r, : lengths[i]]
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    states.flush()
    del states
    np.save(offsets_path, offsets)
    tmp.replace(states_path)
    return TrunkCache(np.load(states_path, mmap_mode="r"), offsets)


def predict_top(
    model: Any,
    cache: TrunkCache,
    depth: int,
    batch_size: int = 64,
    want_features: bool = False,
    desc: str = "top",
    progress: bool = True,
    dtype: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(logits [N, K], features [N, D] or None)`` of every cached row, in input order."""
    import torch
    from tqdm.auto import tqdm

    from training.features import autocast, length_sorted_batches, model_device

    n = len(cache)
    logits_out = np.zeros((n, model.config.num_labels), dtype=np.float32)
    feats_out = np.zeros((n, backbone(model).config.hidden_size), dtype=np.float32) if want_features else None
    device = model_device(model)
    was_training = model.training
    model.eval()
    bar = tqdm(total=n, desc=desc, unit="pair", disable=not progress or n == 0, dynamic_ncols=True)
    try:
        with torch.inference_mode(), autocast(dtype):
            for idx in length_sorted_batches(cache.lengths, batch_size):
                h, lens = cache.batch(idx, device)
                out = top_logits(model, h, lens, depth, want_features)
                logits, feats = out if want_features else (out, None)
                logits_out[idx] = logits.float().cpu().numpy()
                if feats_out is not None:
                    feats_out[idx] = feats.float().cpu().numpy()
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return logits_out, feats_out
