"""The torch engine: ``transformers`` forward passes on CPU or GPU.

Inference runs on one dedicated worker thread, off the event loop. Each batch
is sorted by length and cut into sub-batches of similar lengths, so padding
costs little; bf16 is used where the hardware has fast bf16 (on this project's
CPU, AVX512-BF16 ran ~4x fp32).

Two optional speed-ups, each measured by ``benchmarks/tune_engine.py`` (numbers
in docs/benchmarks.md) before being made a default:

- ``compile``: ``torch.compile`` (inductor, dynamic shapes) of the backbone and
  head, which fuses the element-wise work (RMSNorm, RoPE, SiLU) that eager bf16
  spends much of a small model's time on. Compiled on the warm-up, before ready.
- ``prefix_reuse``: pairs of one request share the query prefix of the prompt;
  its keys and values are computed once per group of pairs and reused, so only
  each pair's own tokens run through the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.labels import LABELS
from relevance_core.postprocess import probs_from_logits
from service.engine import Engine, TokenIds
from service.errors import EngineError
from service.hardware import cuda_available, resolve_dtype
from service.settings import Settings

log = logging.getLogger(__name__)

# Warm-up rounds over a few shapes at start (see TorchEngine._warm_up_kernels).
WARM_UP_ROUNDS = 3
# Padded tokens per forward pass unless DARL_TORCH_SUB_BATCH_TOKENS says otherwise: on CPU 1024 ran
# the eager bf16 forward faster than 2048 or 4096 on this project's 2-core CPU (docs/benchmarks.md,
# engine tuning and the torch_sub_batch study); the CUDA value is the earlier default, not measured
# here (no GPU was lent to this task).
SUB_BATCH_TOKENS = 1024
SUB_BATCH_TOKENS_CUDA = 4096
# A group shares its prefix only if it is at least this many tokens (shorter is not worth a pass).
MIN_SHARED_PREFIX = 4


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation (CPU, opt-in ``DARL_DTYPE=int8``): the decoder's linear layers get int8
    weights, per output channel, and int8 activations quantised per batch; embeddings, norms and the
    classification head stay fp32.

    Measured by ``benchmarks/engines.py`` on a 2-core AVX2 CPU (docs/benchmarks.md, "CPU engines"): 1.6x
    the fp32 pairs/s, but it changes most labels of ``darl-smollm2`` on the test sets, so it is not an
    ``auto`` choice; run ``python -m benchmarks.engines --quality`` on an artifact before serving it this way."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    backbone = getattr(model, model.base_model_prefix)
    layers = {name for name, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)}
    spec = {f"{model.base_model_prefix}.{name}": per_channel_dynamic_qconfig for name in layers}
    return quantize_dynamic(model, spec, dtype=torch.qint8)


class TorchEngine(Engine):
    name = "torch"

    def __init__(
        self,
        checkpoint_dir: Path,
        settings: Settings,
        *,
        sub_batch_tokens: int | None = None,
        compile: bool | None = None,
        prefix_reuse: bool | None = None,
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.settings = settings
        self.device = "cuda" if cuda_available() else "cpu"
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.sub_batch_tokens = (
            sub_batch_tokens
            or settings.torch_sub_batch_tokens
            or (SUB_BATCH_TOKENS_CUDA if self.device == "cuda" else SUB_BATCH_TOKENS)
        )
        self.compile = settings.torch_compile if compile is None else compile
        self.prefix_reuse = settings.torch_prefix_reuse if prefix_reuse is None else prefix_reuse
        self._model: Any = None
        self._backbone: Any = None
        self._head: Any = None
        self._plain: Any = None
        self._shared_backbone: Any = None
        self._pad_id = 0
        self._executor: ThreadPoolExecutor | None = None
        self._failure: str | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-engine")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        t0 = time.perf_counter()
        weights = torch.float32 if self.dtype == "int8" else getattr(torch, self.dtype)
        model = AutoModelForSequenceClassification.from_pretrained(self.checkpoint_dir, dtype=weights)
        model.to(self.device).eval()
        if self.dtype == "int8":
            log.warning("DARL_DTYPE=int8: check this artifact's labels with `python -m benchmarks.engines --quality`")
            model = quantize_int8(model)
        pad = model.config.pad_token_id
        if pad is None:
            raise EngineError(f"{self.checkpoint_dir} has no pad_token_id in its config")
        self._pad_id = int(pad)
        self._model = model
        # Backbone + head called directly (last-token pooling here): the head runs on one
        # row per pair, and the backbone can take a shared prefix's cache.
        self._backbone = getattr(model, model.base_model_prefix, None)
        self._head = getattr(model, "score", None)
        if self._backbone is None or self._head is None:
            self.compile = self.prefix_reuse = False
        self._plain = self._plain_logits
        self._shared_backbone = self._backbone
        if self.compile:
            self._plain = torch.compile(self._plain_logits, dynamic=True)
            if self.prefix_reuse:
                self._shared_backbone = torch.compile(self._backbone, dynamic=True)
            with torch.inference_mode():  # compile now (two shapes: dynamic from the start), not on a request
                for rows, width in ((2, 8), (3, 13)):
                    ids = torch.full((rows, width), 1, dtype=torch.long, device=self.device)
                    self._plain(ids, torch.ones_like(ids), torch.full((rows,), width - 1, device=self.device))
                    if self.prefix_reuse:  # two groups of `rows` pairs sharing 6 tokens
                        fake = [(1,) * 6 + (g + 2,) * (width - 6 + k) for g in range(2) for k in range(rows)]
                        out = np.empty((len(fake), len(LABELS)))
                        self._forward_shared(fake, _prefix_groups(fake, MIN_SHARED_PREFIX), out)
        self._warm_up_kernels()
        log.info(
            "torch engine loaded %s on %s (%s, %d threads, compile=%s, prefix_reuse=%s) in %.1fs",
            self.checkpoint_dir,
            self.device,
            self.dtype,
            torch.get_num_threads(),
            self.compile,
            self.prefix_reuse,
            time.perf_counter() - t0,
        )

    def _warm_up_kernels(self) -> None:
        """Run a few forward passes of typical shapes before reporting ready.

        Measured on this project's CPU: the first passes of a freshly loaded bf16
        model took 9 s, 6 s, 3 s for 20 pairs, and 0.5 s from the fourth pass on
        (first touches of weights and kernel set-up). Paying that at start keeps
        it off the first requests, which otherwise miss their deadline.
        """
        filler = self._pad_id + 1
        for _ in range(WARM_UP_ROUNDS):
            for rows, width in ((1, 12), (16, 24), (48, 40)):
                self._forward([(filler,) * (width - (r % 3)) for r in range(rows)])

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._model = self._backbone = self._head = self._plain = self._shared_backbone = None

    async def health(self) -> None:
        if self._failure is not None:
            raise EngineError(f"torch engine failed: {self._failure}")
        if self._model is None or self._executor is None:
            raise EngineError("torch engine is not started")

    async def score(self, batch: Sequence[TokenIds]) -> np.ndarray:
        if self._executor is None or self._model is None:
            raise EngineError("torch engine is not started")
        if not batch:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        loop = asyncio.get_running_loop()
        logits = await loop.run_in_executor(self._executor, self._forward, list(batch))
        return probs_from_logits(logits)

    # -- compute (worker thread) ----------------------------------------------
    def _plain_logits(self, ids: Any, mask: Any, last: Any) -> Any:
        """Logits of right-padded rows; ``last`` = index of each row's last real token."""
        import torch

        if self._head is None:
            return self._model(input_ids=ids, attention_mask=mask).logits
        hidden = self._backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return self._head(hidden[torch.arange(ids.shape[0], device=ids.device), last])

    def _forward(self, batch: list[TokenIds]) -> np.ndarray:
        import torch

        out = np.empty((len(batch), len(LABELS)), dtype=np.float32)
        plain: list[int] = list(range(len(batch)))
        with torch.inference_mode():
            if self.prefix_reuse:
                groups = _prefix_groups(batch, MIN_SHARED_PREFIX)
                shared = [g for g in groups if g[0] > 0]
                plain = [i for p, members in groups if p == 0 for i in members]
                if shared:
                    self._forward_shared(batch, shared, out)
            order = sorted(plain, key=lambda i: len(batch[i]))
            for chunk in _length_chunks(order, batch, self.sub_batch_tokens):
                out[chunk] = self._run_plain([batch[i] for i in chunk])
        return out

    def _run_plain(self, rows: list[TokenIds]) -> np.ndarray:
        import torch

        n_real = len(rows)
        if self.compile and n_real == 1:
            rows = [rows[0], rows[0]]  # a batch of 1 would be a shape of its own to compile
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[k, : len(r)] = 1
        last = torch.as_tensor([len(r) - 1 for r in rows], dtype=torch.long)
        logits = self._plain(ids.to(self.device), mask.to(self.device), last.to(self.device))
        return logits[:n_real].float().cpu().numpy()

    def _forward_shared(self, batch: list[TokenIds], groups: list[tuple[int, list[int]]], out: np.ndarray) -> None:
        """Groups that share a prefix: one pass over the prefixes, then each pair's own tokens."""
        import torch
        from transformers import DynamicCache

        dev = self.device
        # 1. every group's prefix, right-padded, in one pass
        plen = [p for p, _ in groups]
        width = max(plen)
        pids = torch.full((len(groups), width), self._pad_id, dtype=torch.long)
        pmask = torch.zeros((len(groups), width), dtype=torch.long)
        for g, (p, members) in enumerate(groups):
            pids[g, :p] = torch.as_tensor(batch[members[0]][:p], dtype=torch.long)
            pmask[g, :p] = 1
        pids, pmask = pids.to(dev), pmask.to(dev)
        cache = self._shared_backbone(input_ids=pids, attention_mask=pmask, use_cache=True).past_key_values
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        # 2. the pairs' own tokens over their group's cached prefix, sorted by length, in sub-batches
        rows = [(i, g) for g, (_, members) in enumerate(groups) for i in members]
        rows.sort(key=lambda r: len(batch[r[0]]) - plen[r[1]])
        suffix_len = {i: len(batch[i]) - plen[g] for i, g in rows}
        chunk: list[tuple[int, int]] = []
        chunks = []
        for r in rows:
            if chunk and (len(chunk) + 1) * (suffix_len[r[0]] + width) > self.sub_batch_tokens:
                chunks.append(chunk)
                chunk = []
            chunk.append(r)
        if chunk:
            chunks.append(chunk)
        for chunk in chunks:
            idx = [i for i, _ in chunk]
            gidx = torch.as_tensor([g for _, g in chunk], dtype=torch.long, device=dev)
            sw = max(suffix_len[i] for i in idx)
            sids = torch.full((len(chunk), sw), self._pad_id, dtype=torch.long)
            smask = torch.zeros((len(chunk), sw), dtype=torch.long)
            for k, (i, g) in enumerate(chunk):
                own = batch[i][plen[g] :]
                sids[k, : len(own)] = torch.as_tensor(own, dtype=torch.long)
                smask[k, : len(own)] = 1
            starts = torch.as_tensor([plen[g] for _, g in chunk], dtype=torch.long)
            pos = (starts[:, None] + torch.arange(sw)[None, :]).to(dev)
            mask = torch.cat([pmask.index_select(0, gidx), smask.to(dev)], dim=1)
            past = DynamicCache(ddp_cache_data=[(k.index_select(0, gidx), v.index_select(0, gidx)) for k, v in kv])
            hidden = self._shared_backbone(
                input_ids=sids.to(dev), attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True
            ).last_hidden_state
            last = torch.as_tensor([suffix_len[i] - 1 for i in idx], dtype=torch.long, device=dev)
            logits = self._head(hidden[torch.arange(len(idx), device=dev), last])
            out[idx] = logits.float().cpu().numpy()


def _prefix_groups(batch: Sequence[TokenIds], min_prefix: int) -> list[tuple[int, list[int]]]:
    """Group pairs that share a token prefix of at least ``min_prefix`` tokens.

    Returns ``(shared prefix length, member indices)``; length 0 for pairs that share
    nothing worth reusing (and for lone pairs). Every member keeps at least its last
    token out of the prefix: that is the token the head reads.
    """
    order = sorted(range(len(batch)), key=lambda i: tuple(batch[i]))
    groups: list[tuple[int, list[int]]] = []
    members: list[int] = []
    common = 0

    def flush() -> None:
        if len(members) > 1 and common >= min_prefix:
            groups.append((common, list(members)))
        else:
            groups.extend((0, [i]) for i in members)

    for i in order:
        if members:
            prev = batch[members[-1]]
            cur = batch[i]
            lcp = 0
            limit = min(len(prev), len(cur)) - 1  # keep at least the last token of each pair
            while lcp < limit and prev[lcp] == cur[lcp]:
                lcp += 1
            shared = min(common, lcp) if len(members) > 1 else lcp
            if shared >= min_prefix:
                members.append(i)
                common = shared
                continue
            flush()
        members = [i]
        common = len(batch[i]) - 1
    if members:
        flush()
    return groups


def _length_chunks(order: list[int], batch: Sequence[TokenIds], max_tokens: int) -> list[list[int]]:
    """Split length-sorted indices so that rows × longest row ≤ ``max_tokens``."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = len(batch[i])  # sorted ascending: the newest is the longest
        if current and (len(current) + 1) * longest > max_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks
