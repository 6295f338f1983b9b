"""`darl experiment` on tiny data: variants run, rows come from their summaries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.training.tiny import tiny_train_dict


@pytest.mark.slow
def test_experiment_table(tmp_path: Path, data_root: Path, tiny_base_dir: Path) -> None:
    from training.experiments import run_experiments

    base = tiny_train_dict(data_root, tiny_base_dir)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "base_config": str(tmp_path / "base.yaml"),
        "runs_dir": str(tmp_path / "runs"),
        "summaries_dir": str(tmp_path / "summaries"),
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
        assert (tmp_path / "summaries" / f"{r['variant']}-s{r['seed']}.json").is_file()
        item_text = "title+description" if r["variant"] == "minilm" else "title (v2)"  # what the model read
        row = f"| {r['variant']} | {r['seed']} | {item_text} | {r['summary']['id']['n']} |"
        assert row in text
        assert f"{r['summary']['id']['macro_f1']:.3f}" in text
    # A finished run is reused, not retrained.
    again = run_experiments(tmp_path / "exp.yaml", out, only=["sft"])
    assert [r["summary"] for r in again] == [r["summary"] for r in rows]
    # ... but not after its config changed: it runs again and the old run is kept aside.
    spec["variants"][1]["seeds"] = [1]
    spec["variants"][1]["set"]["finetune"] = {"lr": 5e-4}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(spec))
    changed = run_experiments(tmp_path / "exp.yaml", out, only=["sft"])
    new_sft = next(r for r in changed if r["variant"] == "sft")["summary"]
    assert new_sft["config_sha"] != rows[1]["summary"]["config_sha"]
    assert (tmp_path / "runs" / f"sft-s1.stale-{rows[1]['summary']['config_sha']}" / "summary.json").is_file()
    # Rewriting the table only: a deleted run shows up as not run.
    import shutil

    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: the tracked summaries still give every row
    kept = run_experiments(tmp_path / "exp.yaml", out, run=False)
    assert {(r["variant"], r["seed"]) for r in kept} == {("minilm", 13), ("sft", 1), ("full", 13)}
    (tmp_path / "summaries" / "full-s13.json").unlink()
    run_experiments(tmp_path / "exp.yaml", out, run=False)
    assert "Not run yet (no summary): `full-s13`." in out.read_text()


def test_targets_are_computed_from_the_rows_means_over_seeds() -> None:
    from training.experiments import targets_section

    def row(variant: str, seed: int, id_f1: float, ood_f1: float, ece: float = 0.04, inv: float = 0.05) -> dict:
        split = {"macro_f1": ood_f1, "ece": ece, "inversion_rate": inv}
        summary = {"id": {"macro_f1": id_f1, "ece": ece, "rmse_hd": 0.5, "qwk": 0.5, "inversion_rate": inv}}
        return {"variant": variant, "seed": seed, "summary": {**summary, "ood": split}}

    rows = [
        row("sft", 1, 0.50, 0.30),
        row("sft", 2, 0.52, 0.32),
        row("full-darl", 1, 0.50, 0.40, ece=0.09, inv=0.01),
        row("full-darl", 2, 0.50, 0.38, ece=0.09, inv=0.02),
        row("minilm", 1, 0.55, 0.20),
    ]
    text = "\n".join(targets_section(rows, {"sft": "sft", "darl": "full-darl", "baseline": "minilm"}))
    assert "| ID RMSE of the expected grade, full-darl | 0.500 | ≤ 0.48 | no |" in text
    assert "| ID inversion rate, full-darl | 0.015 | ≤ 0.02 | yes |" in text
    assert "| OOD inversion rate, full-darl − minilm | -0.035 | < 0 | yes |" in text
    assert "| OOD kappa, full-darl | – | ≥ 0.45 | – |" in text  # no OOD kappa in these rows
    assert "| OOD macro-F1, full-darl − sft (points) | +8.0 | ≥ +5 | yes |" in text
    assert "| ID macro-F1, full-darl − sft (points) | -1.0 | ≥ −0.5 | no |" in text
    assert "| ID ECE, full-darl | 0.090 | ≤ 0.05 | no |" in text
    assert "| ID macro-F1, full-darl − minilm (points) | -5.0 | ≥ +3 | no |" in text
    assert "| OOD macro-F1, full-darl − minilm (points) | +19.0 | ≥ +3 | yes |" in text
    missing = "\n".join(targets_section(rows[:2], {}))
    assert "| OOD ECE, full-darl | – | ≤ 0.08 | – |" in missing


def test_findings_notes_are_included_verbatim(tmp_path: Path) -> None:
    from training.experiments import results_markdown

    text = results_markdown([], tmp_path / "exp.yaml", notes="The loss helped nowhere.\n")
    assert "### Findings\n\nThe loss helped nowhere.\n" in text
    assert "### Findings" not in results_markdown([], tmp_path / "exp.yaml")


def test_learning_curve_is_drawn_and_tabled(tmp_path: Path) -> None:
    from training.curves import plot_learning_curve

    curve = [
        {"step": s, "pairs_seen": 32 * s, "wall_s": 2.0 * s, "eval_s": 0.1 * s,
         "id": {"macro_f1": 0.3 + s / 100, "qwk": 0.2, "rmse_hd": 0.6, "inversion_rate": 0.1 / s},
         "ood": {"macro_f1": 0.25, "qwk": 0.1, "rmse_hd": None, "inversion_rate": 0.3}}
        for s in (1, 2, 4)
    ]  # fmt: skip
    png = plot_learning_curve(curve, tmp_path / "docs" / "learning-curve.png", "t")
    assert png is not None and png.stat().st_size > 1000
    assert plot_learning_curve([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_budget_line_reaches_a_target_where_the_hand_computed_line_does() -> None:
    from training.curves import line_in_log_pairs

    # kappa 0.30 at 10 pairs and 0.40 at 100: +0.1 per decade, 0.45 at 10**2.5 pairs
    slope, reach = line_in_log_pairs([(10, 0.30), (100, 0.40)], 0.45, "≥")
    assert slope == pytest.approx(0.1) and reach == pytest.approx(10**2.5)
    slope, reach = line_in_log_pairs([(10, 0.60), (1000, 0.50)], 0.48, "≤")  # RMSE: -0.05 per decade
    assert slope == pytest.approx(-0.05) and reach == pytest.approx(10**3.4)
    assert line_in_log_pairs([(10, 0.60), (100, 0.70)], 0.48, "≤")[1] is None  # moving away: never


def test_budget_section_tables_the_runs_by_pairs_seen_and_draws_the_curve(tmp_path: Path) -> None:
    from training.experiments import budget_section

    def row(variant: str, seed: int, pairs: int, kappa: float) -> dict:
        split = {"macro_f1": 0.4, "qwk": kappa, "rmse_hd": 0.85 - kappa, "inversion_rate": 0.03}
        stage2 = {"curve": [{"pairs_seen": pairs}]}
        summary = {"id": split, "ood": split, "stage2": stage2, "timings_s": {"stage2_finetune": pairs / 100}}
        return {"variant": variant, "seed": seed, "summary": summary}

    rows = [row("big", 1, 1000, 0.38), row("big", 2, 1000, 0.42), row("small", 1, 100, 0.30), row("sft", 1, 5, 0.1)]
    text = "\n".join(budget_section(rows, ["big", "small", "absent"], tmp_path))
    assert text.index("| small | 100 | 1 | 0.400 | 0.300 |") < text.index("| big | 1000 | 10 | 0.400 | 0.400 |")
    # ID kappa: 0.30 at 100, 0.40 (mean of seeds) at 1000 → 0.45 at 10**3.5 pairs, 3.2 × the largest run
    assert "| ID kappa ≥ 0.45 | +0.100 | 3,162 | 3.2 |" in text
    assert "| ID RMSE of the expected grade ≤ 0.48 | -0.100 | 501 | 0.5 |" in text  # already met at 1000
    assert (tmp_path / "budget-curve.png").stat().st_size > 1000
    assert budget_section(rows, ["big"], tmp_path) == []  # one point is no curve


def test_a_finished_run_is_keyed_by_what_it_computes_not_where_it_was_written(tmp_path: Path) -> None:
    """The reuse key ignores the checkout's paths (a clone elsewhere reuses the runs) and a switch added
    later at its default, but not a changed setting."""
    from training.config import TrainConfig
    from training.experiments import config_sha

    a = TrainConfig(name="x", run_dir=str(tmp_path / "a" / "runs" / "x"), output_dir=str(tmp_path / "a" / "out"))
    b = a.model_copy(update={"run_dir": str(tmp_path / "b" / "runs" / "x"), "output_dir": "elsewhere"})
    assert config_sha({}, a) == config_sha({}, b)
    loss = a.finetune.loss.model_copy(update={"pairwise_weight": 1.0})
    changed = a.model_copy(update={"finetune": a.finetune.model_copy(update={"loss": loss})})
    assert config_sha({}, changed) != config_sha({}, a)
    assert config_sha({"kind": "lexical"}, a) != config_sha({}, a)
