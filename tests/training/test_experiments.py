"""`darl experiment` on tiny data: variants run, rows come from their summaries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.training.conftest import tiny_train_dict


@pytest.mark.slow
def test_experiment_table(tmp_path: Path, data_root: Path, tiny_base_dir: Path) -> None:
    from training.experiments import run_experiments

    base = tiny_train_dict(data_root, tiny_base_dir)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "base_config": str(tmp_path / "base.yaml"),
        "runs_dir": str(tmp_path / "runs"),
        "variants": [
            {"name": "minilm", "set": {"kind": "cross_encoder", "finetune": {"lr": 1e-4}}},
            {
                "name": "sft",
                "seeds": [1, 2],
                "set": {"probe": {"enabled": False}, "dasa": {"enabled": False}, "interpolate": {"enabled": False}},
            },
            {"name": "full", "set": {}},
        ],
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "results.md"
    rows = run_experiments(tmp_path / "exp.yaml", out)
    assert [(r["variant"], r["seed"]) for r in rows] == [("minilm", 13), ("sft", 1), ("sft", 2), ("full", 13)]
    text = out.read_text()
    for r in rows:
        assert (tmp_path / "runs" / f"{r['variant']}-s{r['seed']}" / "summary.json").is_file()
        row = f"| {r['variant']} | {r['seed']} | {r['summary']['id']['n']} |"
        assert row in text
        assert f"{r['summary']['id']['macro_f1']:.3f}" in text
    # A finished run is reused, not retrained.
    again = run_experiments(tmp_path / "exp.yaml", out, only=["sft"])
    assert [r["summary"] for r in again] == [r["summary"] for r in rows]
    # Rewriting the table only: a deleted run shows up as not run.
    import shutil

    shutil.rmtree(tmp_path / "runs" / "full-s13")
    run_experiments(tmp_path / "exp.yaml", out, run=False)
    assert "Not run yet (no summary): `full-s13`." in out.read_text()
