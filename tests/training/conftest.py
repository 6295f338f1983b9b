"""Fixtures for the training tests: a tiny base model and small synthetic data files."""

from __future__ import annotations

from pathlib import Path

import pytest

from relevance_core.testing import make_tiny_base
from tests.training.tiny import synthetic_rows, write_csv_gz


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("training-tiny") / "base")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """homedepot.csv.gz and crowdflower.csv.gz look-alikes (a few hundred pairs)."""
    root = tmp_path_factory.mktemp("data")
    hd_splits = ["train"] * 6 + ["pool", "val", "test", "test"]
    write_csv_gz(root / "homedepot.csv.gz", synthetic_rows("homedepot", 60, hd_splits, 0))
    write_csv_gz(root / "crowdflower.csv.gz", synthetic_rows("crowdflower", 24, ["pool", "val", "test"], 7))
    return root
