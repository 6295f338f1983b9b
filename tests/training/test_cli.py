"""`darl select --export/--import` round trip and `darl eval` on tiny models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from relevance_core.testing import make_random_head_artifact
from tests.training.tiny import tiny_train_dict


def _config(tmp: Path, data_root: Path, base: Path) -> Path:
    cfg = tiny_train_dict(
        data_root,
        base,
        name="tiny-cli",
        run_dir=str(tmp / "run"),
        output_dir=str(tmp / "artifact"),
        dasa={"budget": 10, "label_source": "import"},
        finetune={"max_train_pairs": 32},
    )
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_select_export_label_import_train(tmp_path: Path, data_root: Path, tiny_base_dir: Path, capsys) -> None:
    from darl.cli import main

    config = _config(tmp_path, data_root, tiny_base_dir)
    export = tmp_path / "to_label.csv"
    assert main(["select", "--config", str(config), "--export", str(export)]) == 0
    with open(export, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 0 < len(rows) <= 10 and all(r["label"] == "" for r in rows)
    assert json.loads(capsys.readouterr().out)["selection"]["selected"] == len(rows)
    # An annotator fills in the labels.
    labelled = tmp_path / "labelled.csv"
    with open(labelled, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "label": "weak"} for r in rows)
    assert main(["select", "--config", str(config), "--import", str(labelled)]) == 0
    assert (tmp_path / "run" / "imported_labels.csv").is_file()
    assert main(["train", "--config", str(config), "--set", "interpolate.enabled=false"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stage2"]["dasa_pairs"] == len(rows) == summary["selection"]["labelled"]
    assert (tmp_path / "artifact" / "manifest.json").is_file()


def test_eval_command(tmp_path: Path, data_root: Path, tiny_base_dir: Path) -> None:
    from darl.cli import main

    art = make_random_head_artifact(tmp_path / "art", tiny_base_dir, kind="adapter")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(art),
                "--data",
                str(data_root / "homedepot.csv.gz"),
                "--data",
                str(data_root / "crowdflower.csv.gz"),
                "--split",
                "test",
                "--out",
                str(out),
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["groups"]) == {"homedepot", "crowdflower"}
    hd = metrics["groups"]["homedepot"]
    assert {"accuracy", "macro_f1", "f1_per_class", "ece", "ndcg@10", "rmse_hd", "qwk"} <= set(hd)
    assert hd["rmse_hd"] is not None and metrics["groups"]["crowdflower"]["rmse_hd"] is None
    for f in ("report.md", "confusion_homedepot.png", "reliability_crowdflower.png", "id_vs_ood.png"):
        assert (out / f).is_file()
    assert metrics["template"] == "darl-prompt-v2"  # the artifact's own
    # --template scores with the other template: CrowdFlower items have descriptions, so its scores move.
    args = ["eval", "--model", str(art), "--data", str(data_root / "crowdflower.csv.gz"), "--split", "test"]
    assert main([*args, "--out", str(tmp_path / "v1"), "--dtype", "float32", "--template", "darl-prompt-v1"]) == 0
    v1 = json.loads((tmp_path / "v1" / "metrics.json").read_text())
    assert v1["template"] == "darl-prompt-v1"
    assert v1["groups"]["crowdflower"] != metrics["groups"]["crowdflower"]
