"""Shared fixtures: tiny checkpoints and artifacts built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relevance_core.testing import make_random_head_artifact, make_tiny_base, real_base_dir


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache for merged checkpoints (the real base stays in the shared cache)."""
    return tmp_path_factory.mktemp("darl-cache")


@pytest.fixture(scope="session")
def base_dir() -> Path:
    """The real SmolLM2-135M-Instruct HF directory (built once by ``darl base-model``)."""
    return real_base_dir()


@pytest.fixture(scope="session")
def tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """A complete tiny fp32 classifier checkpoint as a ``full`` artifact."""
    return make_random_head_artifact(tmp_path_factory.mktemp("art") / "tiny-full", tiny_base, "full")


@pytest.fixture(scope="session", autouse=True)
def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@pytest.fixture
def engine():
    """The fake engine behind ``make_app`` (a test may set its speed, gates or failures)."""
    from tests.fakes import FakeEngine

    return FakeEngine()


@pytest.fixture
def make_app(tiny_artifact: Path, cache_dir: Path, engine):
    """The real app (renderer, batcher, routes) on the tiny artifact with ``engine``; settings as keywords."""
    from service.app import create_app
    from tests.apps import settings_for

    def _make(**kw):
        return create_app(settings_for(tiny_artifact, cache_dir, **kw), engine_factory=lambda s, a: engine)

    return _make
