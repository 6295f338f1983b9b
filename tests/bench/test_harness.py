"""Light tests of the serving-benchmark harness: workload, load loops, statistics, report.

No server, model or network: the load loops run against a fake ``send``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path

import pytest

from benchmarks import host, loadgen, report, roofline, stats, studies, tables
from benchmarks.driver import Profile, closed_cells
from benchmarks.servers import infinity_checkpoint, parse_server
from benchmarks.workload import Catalog, load_catalog, make_calls, own_fraction, read_rows


def _catalog() -> Catalog:
    rows = [
        {"query": f"q{q}", "item_title": f"title {q}-{i}", "pair_id": f"p{q}-{i}"} for q in range(5) for i in range(3)
    ]
    rows.append({"query": "q0", "item_title": "title 0-0", "pair_id": "dup"})  # duplicate (query, title): dropped
    return load_catalog(rows)


def test_catalog_groups_rows_by_query_and_drops_duplicates() -> None:
    cat = _catalog()
    assert sorted(cat.groups) == [f"q{q}" for q in range(5)]
    assert [it.id for it in cat.groups["q0"]] == ["p0-0", "p0-1", "p0-2"]
    assert len(cat.items) == 15


def test_calls_keep_own_items_first_and_fill_from_other_queries() -> None:
    cat = _catalog()
    calls = make_calls(cat, n=10, count=4, seed=1)
    for call in calls:
        assert call.n == 10 and call.own == 3
        assert [it.id for it in call.items[:3]] == [it.id for it in cat.groups[call.query]]
        assert len({it.id for it in call.items}) == 10  # ids unique within a call
        assert all(not it.id.startswith(call.query.replace("q", "p") + "-") for it in call.items[3:])
    assert own_fraction(calls) == pytest.approx(0.3)
    assert make_calls(cat, 10, 4, seed=1) == calls  # seeded
    body = json.loads(calls[0].darl_body())
    assert body["query"] == calls[0].query and len(body["items"]) == 10 and "description" not in body["items"][0]


def test_calls_smaller_than_a_group_take_only_own_items() -> None:
    calls = make_calls(_catalog(), n=2, count=3)
    assert all(c.own == 2 and c.n == 2 for c in calls)


def test_calls_on_a_tiny_catalog_repeat_titles_but_keep_ids_unique() -> None:
    cat = load_catalog(
        [{"query": "a", "item_title": "x", "pair_id": "1"}, {"query": "b", "item_title": "y", "pair_id": "2"}]
    )
    (call,) = make_calls(cat, n=5, count=1)
    assert call.n == 5 and len({it.id for it in call.items}) == 5


def test_read_rows_filters_the_split(tmp_path: Path) -> None:
    import gzip

    p = tmp_path / "d.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("pair_id,query,item_title,item_description,label,raw_relevance,source,split\n")
        f.write("a,q,t,,strong,3,hd,train\nb,q,u,,weak,2,hd,test\n")
    assert [r["pair_id"] for r in read_rows(p, ["test"])] == ["b"]
    assert len(list(read_rows(p))) == 2


def test_percentile_matches_linear_interpolation() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert loadgen.percentile(xs, 50) == pytest.approx(50.5)
    assert loadgen.percentile(xs, 99) == pytest.approx(99.01)
    assert loadgen.percentile([], 50) is None
    assert loadgen.percentile([3.0], 99) == 3.0


def _fake_server(service_s: float, capacity: int = 1):
    """A server that handles ``capacity`` calls at a time, each taking ``service_s``."""
    sem = asyncio.Semaphore(capacity)
    calls = []

    async def send(body: bytes) -> tuple[int, bytes]:
        calls.append(body)
        async with sem:
            await asyncio.sleep(service_s)
        return (500 if body == b"bad" else 200), b"{}"

    return send, calls


async def test_closed_loop_measures_after_the_warm_up_round() -> None:
    send, calls = _fake_server(0.01, capacity=1)
    marks = []
    w = await loadgen.closed_loop(
        send, [b"a"], n=10, concurrency=2, measure_requests=10, max_seconds=5,
        on_anchor=lambda: marks.append("anchor"), on_end=lambda: marks.append("end"),
    )  # fmt: skip
    assert marks == ["anchor", "end"]
    assert w.requests == 10 and w.pairs == 100 and w.errors == 0
    assert len(calls) >= 12  # warm-up round (2) + 10 measured (+ the one still in flight)
    # a serial server: ~100 calls/s → ~1000 pairs/s, latency ≈ 2 service times at concurrency 2
    assert 500 < w.pairs_per_s < 1100
    assert 0.015 < loadgen.percentile(w.latencies, 50) < 0.05
    assert not w.truncated_by_time


async def test_closed_loop_stops_at_its_time_bound_and_counts_errors() -> None:
    send, _ = _fake_server(0.02, capacity=4)
    w = await loadgen.closed_loop(send, [b"a", b"bad"], n=1, concurrency=1, measure_requests=10_000, max_seconds=0.2)
    assert w.truncated_by_time
    assert 0.15 < w.seconds < 0.4
    assert w.errors > 0 and w.error_statuses == {"500": w.errors}
    assert w.requests + w.errors >= 5


async def test_open_loop_sends_on_schedule_and_measures_from_the_scheduled_time() -> None:
    send, calls = _fake_server(0.05, capacity=1)
    w = await loadgen.open_loop(send, [b"a"], n=5, rate=200.0, count=10, max_seconds=5, seed=3)
    assert len(calls) == 10 and w.requests == 10 and w.pairs == 50
    # arrivals (~every 5 ms) outrun the serial 50 ms server: latencies grow with queueing
    assert max(w.latencies) > 0.3
    assert w.summary()["p99"] == pytest.approx(loadgen.percentile(w.latencies, 99))


def test_poisson_schedule_is_seeded_and_has_the_right_rate() -> None:
    s = loadgen.poisson_schedule(10.0, 2000, seed=1)
    assert s == loadgen.poisson_schedule(10.0, 2000, seed=1)
    assert s[0] == 0 and all(b >= a for a, b in itertools.pairwise(s))
    assert (len(s) - 1) / s[-1] == pytest.approx(10.0, rel=0.1)
    with pytest.raises(ValueError):
        loadgen.poisson_schedule(0, 1, 0)


def _window(mode: str, n: int, c=None, frac=None, pps=100.0, lat=(0.1, 0.2), rep=0, cpu=1.0, errors=0) -> dict:
    w = loadgen.Window(mode=mode, n=n, concurrency=c, rate=1.0 if mode == "open" else None, seconds=1.0)
    w.pairs, w.requests, w.latencies, w.errors = int(pps), int(pps) // n, list(lat), errors
    d = w.summary()
    d.update(rep=rep, server_cpu_s_per_1k=cpu, client_cpu_s_per_1k=0.1)
    if frac is not None:
        d["fraction"] = frac
    return d


def test_aggregate_takes_medians_over_repetitions() -> None:
    ws = [
        _window("closed", 10, 4, pps=p, lat=(x, x), rep=i)
        for i, (p, x) in enumerate([(100, 0.1), (300, 0.3), (200, 0.2)])
    ]
    a = stats.aggregate(ws)
    assert a["reps"] == 3 and a["pairs_per_s"] == 200 and a["p50"] == pytest.approx(0.2)
    assert a["pairs_per_s_runs"] == [100.0, 300.0, 200.0]
    assert a["samples"] == 6
    assert stats.capacity(ws, 10) == 300 and stats.capacity(ws, 50) is None
    assert stats.group_cells([*ws, _window("open", 10, frac=0.5)]).keys() == {("closed", 10, 4), ("open", 10, 0.5)}
    assert stats.ratio(3.0, 2.0) == 1.5 and stats.ratio(None, 1.0) is None and stats.ratio(1.0, 0) is None


def test_roofline_fraction_and_parameter_count(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file(
        {
            "model.embed_tokens.weight": torch.zeros(100, 8),
            "model.layers.0.mlp.w": torch.zeros(8, 16),
            "score.weight": torch.zeros(3, 8),
        },
        str(tmp_path / "model.safetensors"),
    )
    assert roofline.non_embedding_params(tmp_path) == 8 * 16 + 3 * 8
    # 1e6 params × 2 × 50 tokens = 1e8 FLOP/pair; 100 pairs/s = 1e10 FLOP/s = 1 % of 1 TFLOP/s
    assert roofline.roofline_fraction(100, 50, 1_000_000, 1.0) == pytest.approx(0.01)


def test_server_names_carry_settings() -> None:
    assert parse_server("darl-torch") == ("darl-torch", {})
    assert parse_server("darl-torch@DARL_TORCH_THREADS=1;DARL_MAX_WAIT_MS=5") == (
        "darl-torch",
        {"DARL_TORCH_THREADS": "1", "DARL_MAX_WAIT_MS": "5"},
    )
    assert parse_server("vllm-serve-allcores:vllm-serve@VLLM_CPU_OMP_THREADS_BIND=all") == (
        "vllm-serve",
        {"VLLM_CPU_OMP_THREADS_BIND": "all"},
    )
    assert parse_server("fast:darl-torch@DARL_TORCH_THREADS=1") == ("darl-torch", {"DARL_TORCH_THREADS": "1"})
    with pytest.raises(ValueError):
        parse_server("darl-torch@oops")


def test_closed_cells_skip_rounds_that_do_not_fit() -> None:
    prof = Profile(ns=[10, 200], concurrencies=[1, 4, 16], max_inflight_pairs=1000)
    assert closed_cells(prof, prof.ns) == [(10, 1), (10, 4), (10, 16), (200, 1), (200, 4)]


def test_infinity_checkpoint_adds_rope_theta_and_links_weights(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 1e5}, "dtype": "float32"}))
    (src / "model.safetensors").write_bytes(b"x")
    out = infinity_checkpoint(src, tmp_path / "view")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == 1e5 and cfg["torch_dtype"] == "float32"
    assert (out / "model.safetensors").is_symlink()
    assert json.loads((src / "config.json").read_text()).get("rope_theta") is None  # source untouched


def _run_json(tmp_path: Path) -> Path:
    def server(name, ours, scale):
        ws = []
        for rep in range(3):
            for n, c in [(10, 1), (10, 4), (100, 1), (100, 4)]:
                ws.append(
                    _window("closed", n, c, pps=scale * c * 10 + rep, lat=(0.05 * n / 10, 0.06 * n / 10), rep=rep)
                )
            for frac in (0.5, 0.8):
                ws.append(_window("open", 100, frac=frac, pps=scale * 10, lat=(0.6, 0.9), rep=rep))
        return {
            "name": name,
            "kind": "darl" if ours else "naive",
            "label": name,
            "ours": ours,
            "settings": {},
            "start_s": 3.0,
            "windows": ws,
        }

    run = {
        "date": "2026-01-01 00:00 UTC",
        "command": "python -m benchmarks.run",
        "elapsed_min": 1.0,
        "machine": {"cpu": "cpu", "cores": 2, "flags": "avx512_bf16", "mem_gib": 24, "os": "linux"},
        "versions": {"torch": "2.13.0"},
        "load_at_start": 0.1,
        "load_at_end": 0.2,
        "busy_at_start": None,
        "model": {"name": "m", "artifact": "a", "max_length": 64, "non_embedding_params": 100_000_000},
        "roofline": {
            "size": 2048,
            "threads": 2,
            "iters": 10,
            "tflops_best": 1.0,
            "tflops_median": 0.9,
            "foreign_cpu_share": 0.0,
        },
        "profile": {
            "concurrencies": [1, 4],
            "max_inflight_pairs": 1000,
            "pairs_target": 100,
            "max_seconds": 3,
            "open_requests": 5,
            "open_n": 100,
            "open_fractions": [0.5, 0.8],
            "open_max_seconds": 30.0,
            "reps": 3,
        },
        "workload": {
            "data": "homedepot.csv.gz",
            "split": "test",
            "catalog": {"queries": 10, "items": 60},
            "per_n": {
                "10": {"mean_tokens": 25.0, "own_fraction": 0.5, "queries": 5, "calls": 8},
                "100": {"mean_tokens": 25.0, "own_fraction": 0.06, "queries": 5, "calls": 8},
            },
        },
        "servers": [
            server("darl-torch", True, 20),
            server("naive", False, 10),
            {"name": "infinity", "kind": "infinity", "label": "inf", "ours": False, "unavailable": "not installed"},
        ],
    }
    p = tmp_path / "serving.json"
    p.write_text(json.dumps(run))
    return p


def test_report_renders_tables_ratios_targets_and_a_plot(tmp_path: Path) -> None:
    js = _run_json(tmp_path)
    md, png = tmp_path / "b.md", tmp_path / "b.png"
    report.write(js, md, png)
    text = md.read_text()
    assert png.stat().st_size > 1000
    assert "## Targets" in text and "not run: not installed" in text
    # ratio darl/naive at N=10, c=4: (20·4·10+1)/(10·4·10+1) medians = 801/401
    assert f"{801 / 401:.2f}×" in text
    # 801 pairs/s × 2 × 1e8 × 25 / 1e12 = 4.0 → 400 % of the fake roofline
    assert "400 %" in text
    targets = text.split("## Targets")[1].split("\n## ")[0]
    assert "1. **≥ 1.5× the best peer" in targets and "met in 4 of 4 cells" in targets
    assert "3. **p99 of a 100-item call at 50 % of peak ≤ 2× unloaded (darl-torch)" in targets
    rows = stats.latency_target(json.loads(js.read_text()))
    darl = next(r for r in rows if r["server"] == "darl-torch")
    assert darl["unloaded_p50"] == pytest.approx(0.55)  # c=1 latencies (0.5, 0.6)
    assert darl["factor"] == pytest.approx((0.6 + 0.3 * 0.99) / 0.55)  # open-loop p99 of (0.6, 0.9)


def test_host_steal_is_reported_where_a_run_recorded_it(tmp_path: Path) -> None:
    run = json.loads(_run_json(tmp_path).read_text())
    cells = stats.server_cells(run["servers"][0])
    assert cells[("closed", 10, 1)]["steal_share"] is None  # older runs: no column change
    for w in run["servers"][0]["windows"]:
        w["foreign_cpu_share"], w["steal_share"] = 0.01, 0.02 * w["rep"]
    a = stats.server_cells(run["servers"][0])[("closed", 10, 1)]
    assert a["steal_share"] == pytest.approx(0.04)  # the largest over the repetitions
    assert tables.contention(a) == "1 %; steal 4 %"
    tun = {
        "command": "python -m benchmarks.tune_engine",
        "date": "d",
        "elapsed_min": 1.0,
        "mean_tokens": {"N=10": 30.0},
        "batches": {"N=10": 3},
        "batch_pairs": 64,
        "reps": 3,
        "diff_against": "eager",
        "results": [
            {
                "variant": "eager",
                "pairs_per_s": {"N=10": 33.3},
                "runs": {"N=10": [32.2, 33.3, 34.2]},
                "start_s": 4.0,
                "max_abs_prob_diff": 0.0,
                "foreign_cpu_share_max": 0.006,
                "steal_share_max": 0.09,
            }
        ],
    }
    row = studies.engine_tuning_section(tun)[-1]
    assert "| 33.3 (32.2–34.2) |" in row and "1 %; steal 9 %" in row


def test_tuning_summary_compares_every_variant_with_the_first_server(tmp_path: Path) -> None:
    run = json.loads(_run_json(tmp_path).read_text())
    run["servers"] = run["servers"][:2]  # darl-torch (defaults), then a variant at half the pairs/s
    run["servers"][1]["settings"] = {"DARL_MAX_BATCH_PAIRS": "32"}
    rows = stats.tuning_summary(run)
    assert [r["server"] for r in rows] == ["darl-torch", "naive"]
    assert rows[0]["geomean"] == pytest.approx(1.0) and rows[0]["changed"] == {}
    # per cell (10c+rep)·10 vs (10c+rep)·20 medians: every ratio is (100c+1)/(200c+1)
    expected = [(100 * c + 1) / (200 * c + 1) for c in (1, 4, 1, 4)]
    assert rows[1]["geomean"] == pytest.approx(math.prod(expected) ** 0.25)
    assert rows[1]["changed"] == {"DARL_MAX_BATCH_PAIRS": "32"} and rows[1]["cells"] == 4
    text = "\n".join(studies.tuning_summary_section(run))
    assert "Highest closed-loop throughput: **darl-torch**" in text and "The reference is the best measured." in text
    run["servers"].reverse()  # now the slower one is the reference: the verdict must flip
    text = "\n".join(studies.tuning_summary_section(run))
    assert "Highest closed-loop throughput: **darl-torch**" in text and "best measured" not in text


def test_studies_next_to_the_run_are_rendered_with_their_summary(tmp_path: Path) -> None:
    js = _run_json(tmp_path)
    (tmp_path / "study_head_to_head.json").write_text(js.read_text())
    md, png = tmp_path / "b.md", tmp_path / "b.png"
    report.write(js, md, png)
    text = md.read_text()
    section = text.split("## Study: head_to_head")[1]
    assert "Highest closed-loop throughput: **darl-torch**" in section and "#### N = 10 items per call" in section


def test_probability_parsers_map_every_server_to_label_order(tmp_path: Path) -> None:
    from benchmarks import servers

    darl = json.dumps({"results": [{"probs": {"strong": 0.7, "weak": 0.2, "irrelevant": 0.1}}]}).encode()
    vllm = json.dumps({"data": [{"probs": [0.1, 0.2, 0.7]}]}).encode()
    inf = json.dumps({"data": [[{"label": "strong", "score": 0.7}, {"label": "irrelevant", "score": 0.1},
                                {"label": "weak", "score": 0.2}]]}).encode()  # fmt: skip
    assert servers.probs_darl(darl) == servers.probs_classify(vllm) == servers.probs_infinity(inf) == [[0.1, 0.2, 0.7]]
    spec = servers.darl_spec("d", tmp_path, "torch", "bfloat16", 1, None, {})
    assert spec.answer(darl, 1) == [[0.1, 0.2, 0.7]]
    with pytest.raises(AssertionError, match="bad answer to 2 items"):
        spec.answer(darl, 2)


def test_agreement_compares_every_server_with_this_service_on_the_first_call() -> None:
    run = {
        "servers": [
            {"name": "a", "ours": True, "windows": [{}], "first_call_probs": {"10": [[0.1, 0.2, 0.7]]}},
            {"name": "b", "ours": False, "windows": [{}], "first_call_probs": {"10": [[0.1, 0.25, 0.65]]}},
            {"name": "c", "ours": False, "windows": [{}], "first_call_probs": {"10": None}},
        ]
    }
    rows = stats.agreement(run)
    assert [r["server"] for r in rows] == ["b", "c"]
    assert rows[0]["max_abs_diff"] == pytest.approx(0.05) and rows[1]["max_abs_diff"] is None


def test_darl_variants_pass_engine_knobs_as_settings(tmp_path: Path) -> None:
    from benchmarks import servers
    from service.settings import Settings

    tuned = servers.darl_spec("d", tmp_path, "torch", "bfloat16", 1, None, {"DARL_TORCH_PREFIX_REUSE": "1"})
    assert tuned.argv[-1] == "serve" and tuned.env["DARL_TORCH_PREFIX_REUSE"] == "1"
    settings = Settings(_env_file=None, **{"torch_prefix_reuse": tuned.env["DARL_TORCH_PREFIX_REUSE"]})
    assert settings.torch_prefix_reuse is True


def test_studies_write_beside_the_main_run_never_over_it() -> None:
    from benchmarks.run import DEFAULT_JSON, DEFAULT_MD, output_json, parse_args

    full = parse_args([])
    assert (output_json(full), full.md) == (DEFAULT_JSON, DEFAULT_MD)
    assert output_json(parse_args(["--tuning"])) == DEFAULT_JSON.with_name("tuning.json")
    assert output_json(parse_args(["--study", "ab"])) == DEFAULT_JSON.with_name("study_ab.json")


def test_other_jobs_share_is_the_machine_busy_time_that_was_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.os, "cpu_count", lambda: 2)
    # 2 s on 2 cores = 4 core-seconds; the machine was busy 3 s, 1 s of it ours; 0.4 s stolen
    assert host.shares((10.0, 100.0, 5.0), (12.0, 103.0, 5.4), 1.0) == pytest.approx(
        {"foreign_cpu_share": 0.5, "steal_share": 0.1}
    )
    assert host.shares((1.0, 0.0, 0.0), (1.0, 1.0, 0.0), 0.0) == {"foreign_cpu_share": None, "steal_share": None}


def test_md1_simulation_matches_the_pollaczek_khinchine_mean() -> None:
    from benchmarks.queueing import md1_sojourn_quantiles, md1_sojourn_times

    for rho in (0.3, 0.5, 0.8):
        soj = md1_sojourn_times(rho, 200_000)
        expected = 1 + rho / (2 * (1 - rho))  # mean time in system of M/D/1, service time 1
        assert abs(sum(soj) / len(soj) - expected) / expected < 0.03
    q = md1_sojourn_quantiles(0.5, 100_000)
    assert q["p50"] <= q["p90"] <= q["p99"] and q["p50"] >= 1.0


def test_cpu_engines_section_renders_speed_quality_and_admission(tmp_path: Path) -> None:
    import json

    from benchmarks.studies import cpu_engines_section

    assert cpu_engines_section(tmp_path) == []  # nothing measured: no section
    speed = {"date": "d", "machine": "2 cores, avx2", "model": "m", "pairs": 8, "mean_tokens_per_pair": 30.0}
    speed |= {"batch": 64, "repeats": 3, "results": []}
    speed["results"] = [
        {"engine": "vllm-fp32", "pairs_per_s_median": 20.0, "pairs_per_s_runs": [19.0, 20.0, 21.0], "start_s": 90.0},
        {"engine": "torch-int8", "pairs_per_s_median": 40.0, "pairs_per_s_runs": [40.0], "start_s": 5.0},
    ]
    (tmp_path / "engines.json").write_text(json.dumps(speed))
    row = {"engine": "torch-int8", "domain": "id", "pairs": 9, "max_abs_dp_vs_ref": 0.2}
    row |= {"changed_labels_vs_ref": 0.005, "macro_f1": 0.48, "qwk": 0.34}
    (tmp_path / "engines-quality.json").write_text(
        json.dumps({"date": "d", "machine": "x", "reference": "torch-fp32", "rows": [row]})
    )
    text = "\n".join(cpu_engines_section(tmp_path))
    assert "| torch-int8 | 40.0 | 40.0 | 5.0 | 2.00× |" in text and "2 cores, avx2" in text
    assert "| torch-int8 | id | 9 | 0.2 | 0.50% | 0.48 | 0.34 |" in text


def test_resume_keeps_only_servers_with_every_repetition() -> None:
    from benchmarks.run import resume

    previous = {
        "date": "d",
        "command": "c",
        "roofline": {"tflops_best": 0.4},
        "profile": {"reps": 2},
        "servers": [
            {"name": "full", "windows": [{"rep": 0}, {"rep": 1}]},
            {"name": "cut", "windows": [{"rep": 0}]},  # cut by the time budget: measured again
            {"name": "absent", "unavailable": "not installed"},
        ],
    }
    run: dict = {"servers": []}
    assert resume(run, previous) == {"full", "absent"}
    assert run["resumed"] == {"from": "d", "command": "c", "servers": ["absent", "full"]}
    assert run["roofline_previous"] == {"tflops_best": 0.4}
