"""``darl score``: offline batch scoring (service/batch_score.py).

The numbers are checked against the service's own runtime on the tiny artifact with the real torch
engine; resume is checked by SIGKILLing a real ``darl score`` process after its first part and running it
again. Row handling, errors and formats use the fake engine (fast; the numbers do not matter there).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from relevance_core.labels import LABELS
from service.batch_score import (
    BatchError,
    ScoreJob,
    StrictError,
    errors_path,
    length_batches,
    prediction_columns,
    run,
)
from service.errors import EngineError
from service.settings import Settings
from tests.fakes import FakeEngine

REPO = Path(__file__).resolve().parents[1]
PRED = prediction_columns()
HEADER = ["pair_id", "query", "item_title", "item_description", "label", "split", "note"]
QUERIES = ["angle bracket", "deck screws", "white paint", "x" * 1200]  # the last is over max_query_chars
TITLES = [
    "Simpson Strong-Tie 12-Gauge Angle",
    "BEHR Premium 1-gal. Deep Base Paint",
    "GRK Fasteners #9 x 3 in. Star Drive Deck Screw",
    "angle bracket " * 100,  # over the model's max length: token-truncated
]


def settings_for(artifact: Path, cache_dir: Path, **kw) -> Settings:
    return Settings(model_dir=artifact, cache_dir=cache_dir, engine="torch", dtype="float32", **kw)


def make_rows(n: int) -> list[list[str]]:
    """``n`` rows in the shared data schema plus an extra column with commas, quotes and newlines."""
    rows = []
    for i in range(n):
        rows.append(
            [
                f"p{i}",
                QUERIES[i % len(QUERIES)],
                TITLES[(i * 3) % len(TITLES)],
                "interior, satin" if i % 5 == 1 else "",
                LABELS[i % 3],
                "test" if i % 3 else "train",
                'a "quoted", note\nover two lines' if i % 7 == 2 else f"note {i}",
            ]
        )
    return rows


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def assert_same_rows(got: list[dict], want: list[dict], atol: float = 1e-6) -> None:
    """Row for row: the input columns and the label exactly, the floats within ``atol``."""
    assert len(got) == len(want)
    floats = {*PRED[: len(LABELS)], "score"}
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            if k in floats:
                assert abs(float(g[k]) - float(w[k])) <= atol, (k, g, w)
            else:
                assert g[k] == w[k], (k, g, w)


@pytest.fixture
def fake_factory():
    engine = FakeEngine()
    return engine, (lambda s, a: engine)


# -- the numbers: the service's ------------------------------------------------------------------


async def service_scores(settings: Settings, rows: list[list[str]]) -> list[dict]:
    """What ``Runtime.score`` (behind ``/v1/score``) returns for each row, one call per query."""
    from service.metrics import Metrics
    from service.runtime import Runtime
    from service.schemas import Item, ScoreRequest

    rt = Runtime(settings, Metrics())
    await rt.start()
    await rt.wait_ready()
    assert rt.ready, rt.failure
    out: dict[str, dict] = {}
    try:
        for query in dict.fromkeys(r[1] for r in rows):
            mine = [r for r in rows if r[1] == query]
            items = [Item(id=r[0], title=r[2], description=r[3] or None) for r in mine]
            call = await rt.score(ScoreRequest(query=query, items=items))
            for it in call.items:
                out[it.id] = {
                    "probs": [getattr(it.probs, k) for k in LABELS],
                    "label": it.label,
                    "score": it.score,
                    "truncated": it.truncated or call.query_truncated,
                }
    finally:
        await rt.stop()
    return [out[r[0]] for r in rows]


def test_csv_in_csv_and_jsonl_out_match_the_service(tmp_path: Path, tiny_artifact: Path, cache_dir: Path) -> None:
    import asyncio

    rows = make_rows(23)
    src = write_csv(tmp_path / "pairs.csv", rows)
    settings = settings_for(tiny_artifact, cache_dir)
    summary = run(ScoreJob(src, tmp_path / "scored.csv", chunk_rows=7), settings)
    assert (summary.rows_written, summary.pairs_scored, summary.bad_rows) == (23, 23, 0)
    assert summary.engine == "torch" and summary.pairs_per_s > 0

    got = read_csv(tmp_path / "scored.csv")
    assert list(got[0]) == HEADER + PRED
    for r, g in zip(rows, got, strict=True):  # every input column kept as it was, extra ones included
        assert [g[c] for c in HEADER] == r
        assert abs(sum(float(g[c]) for c in PRED[:3]) - 1.0) < 1e-6

    want = asyncio.run(service_scores(settings, rows))
    probs = np.array([[float(g[c]) for c in PRED[:3]] for g in got])
    assert probs.std() > 1e-3, "tiny model outputs are degenerate; the comparison would be vacuous"
    np.testing.assert_allclose(probs, [w["probs"] for w in want], atol=1e-5)
    np.testing.assert_allclose([float(g["score"]) for g in got], [w["score"] for w in want], atol=1e-5)
    assert [g["label_pred"] for g in got] == [w["label"] for w in want]
    assert [g["truncated"] == "True" for g in got] == [w["truncated"] for w in want]
    assert any(w["truncated"] for w in want) and not all(w["truncated"] for w in want)

    # JSONL out of the same input (gzipped, to cover that too): the same rows and numbers.
    run(ScoreJob(src, tmp_path / "scored.jsonl.gz", chunk_rows=7), settings)
    as_json = read_jsonl(tmp_path / "scored.jsonl.gz")
    assert_same_rows([{k: str(v) for k, v in r.items()} for r in as_json], got, atol=0.0)
    assert isinstance(as_json[0]["truncated"], bool) and isinstance(as_json[0]["score"], float)


# -- resume --------------------------------------------------------------------------------------


def darl_score(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.update(kw.pop("env", {}))
    cmd = [sys.executable, "-m", "darl.cli", "score", "--engine", "torch", "--dtype", "float32", "--threads", "1"]
    return subprocess.Popen([*cmd, *args], cwd=REPO, env=env, **kw)


def test_killed_run_resumes_where_it_stopped(tmp_path: Path, tiny_artifact: Path, cache_dir: Path) -> None:
    rows = make_rows(40)
    src = write_csv(tmp_path / "pairs.csv.gz", rows)
    out = tmp_path / "scored.csv"
    args = ["--model", str(tiny_artifact), "--in", str(src), "--out", str(out), "--chunk-rows", "5"]
    env = {"DARL_CACHE_DIR": str(cache_dir), "DARL_SCORE_CHUNK_DELAY_S": "0.5"}

    with open(tmp_path / "first.log", "w") as log1:
        proc = darl_score(args, env=env, stdout=log1, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        parts = out.with_name(out.name + ".parts")
        while not list(parts.glob("part-*")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no part written in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and parts.is_dir()

    with open(tmp_path / "second.log", "w") as log2:
        proc = darl_score(args, env={"DARL_CACHE_DIR": str(cache_dir)}, stdout=log2, stderr=subprocess.STDOUT)
        assert proc.wait(300) == 0, (tmp_path / "second.log").read_text()
    second = (tmp_path / "second.log").read_text()
    done = int(re.search(r"resuming: (\d+) input records already scored", second).group(1))
    assert 5 <= done < 40 and done % 5 == 0
    assert f"scored {40 - done} pairs" in second, second  # only the rest was scored
    assert not parts.exists()

    reference = tmp_path / "reference.csv"
    run(ScoreJob(src, reference, chunk_rows=5), settings_for(tiny_artifact, cache_dir))
    assert_same_rows(read_csv(out), read_csv(reference))


def test_interrupted_run_resumes_and_refuses_another_input(tmp_path: Path, tiny_artifact: Path, cache_dir: Path):
    """In-process: an engine failure after some parts, then a rerun (and a rerun on a changed input)."""
    src = write_csv(tmp_path / "pairs.csv", make_rows(30))
    settings = settings_for(tiny_artifact, cache_dir, max_batch_pairs=4)
    out = tmp_path / "scored.jsonl"

    class FailingEngine(FakeEngine):
        async def score(self, batch):
            if len(self.batches) == 4:  # chunk 1 (records 0-9) is 3 batches: fail inside chunk 2
                raise EngineError("engine died")
            return await super().score(batch)

    with pytest.raises(EngineError):
        run(ScoreJob(src, out, chunk_rows=10), settings, lambda s, a: FailingEngine())
    assert not out.exists()

    reference = tmp_path / "reference.jsonl"
    run(ScoreJob(src, reference, chunk_rows=10), settings, lambda s, a: FakeEngine())

    changed = write_csv(tmp_path / "changed.csv", make_rows(31))
    os.replace(changed, src)
    with pytest.raises(BatchError, match="different input file"):
        run(ScoreJob(src, out, chunk_rows=10), settings, lambda s, a: FakeEngine())
    write_csv(src, make_rows(30))  # the original bytes again

    # What a kill in the middle of writing chunk 2 would leave: a temporary file, its errors file.
    parts = out.with_name(out.name + ".parts")
    (parts / ".tmp-123-part-000000000010-000000000020.jsonl").write_text('{"half": ')
    (parts / "errors-000000000010.jsonl").write_text('{"line": 99}\n')
    engine = FakeEngine()
    summary = run(ScoreJob(src, out, chunk_rows=10), settings, lambda s, a: engine)
    assert summary.records_resumed == 10 and summary.pairs_scored == 20
    assert len(engine.scored_pairs) == 20
    assert read_jsonl(out) == read_jsonl(reference)
    assert not parts.exists() and not errors_path(out).exists()

    # A finished output is not overwritten unless asked; a changed model or option is refused on resume.
    with pytest.raises(BatchError, match="--overwrite"):
        run(ScoreJob(src, out), settings, lambda s, a: FakeEngine())
    assert run(ScoreJob(src, out, overwrite=True), settings, lambda s, a: FakeEngine()).pairs_scored == 30


def test_resume_refuses_other_options(tmp_path: Path, tiny_artifact: Path, cache_dir: Path) -> None:
    src = write_csv(tmp_path / "pairs.csv", make_rows(12))
    out = tmp_path / "scored.csv"
    settings = settings_for(tiny_artifact, cache_dir)

    class FailingEngine(FakeEngine):
        async def score(self, batch):
            if self.batches:
                raise EngineError("engine died")
            return await super().score(batch)

    with pytest.raises(EngineError):
        run(ScoreJob(src, out, chunk_rows=4), settings, lambda s, a: FailingEngine())
    with pytest.raises(BatchError, match="split"):
        run(ScoreJob(src, out, chunk_rows=4, split="test"), settings, lambda s, a: FakeEngine())
    with pytest.raises(BatchError, match="max_query_chars"):
        run(ScoreJob(src, out), settings_for(tiny_artifact, cache_dir, max_query_chars=50), lambda s, a: FakeEngine())
    summary = run(ScoreJob(src, out, split="test", overwrite=True), settings, lambda s, a: FakeEngine())
    assert summary.pairs_scored == 8 and summary.rows_filtered == 4 and summary.records_resumed == 0
    assert {r["split"] for r in read_csv(out)} == {"test"}


# -- bad rows ------------------------------------------------------------------------------------


BAD_CSV = (
    "query,item_title,note\n"  # line 1
    "angle bracket,Simpson Angle,ok\n"  # 2
    ',Simpson Angle,"blank\nquery"\n'  # 3-4: empty query (the record starts on line 3)
    "angle bracket,   ,blank title\n"  # 5
    "angle bracket,Simpson Angle,too,many,cells\n"  # 6
    "deck screws\n"  # 7: no title cell
    "\n"  # 8: blank line, not a record
    "deck screws,GRK Screw,ok\n"  # 9
)


def test_bad_rows_are_reported_with_line_numbers_and_skipped(
    tmp_path: Path, tiny_artifact: Path, cache_dir: Path, fake_factory, caplog
) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(BAD_CSV)
    out = tmp_path / "scored.csv"
    _, factory = fake_factory
    with caplog.at_level("WARNING"):
        summary = run(ScoreJob(src, out, chunk_rows=3), settings_for(tiny_artifact, cache_dir), factory)
    assert summary.rows_written == 2 and summary.bad_rows == 4
    assert [r["note"] for r in read_csv(out)] == ["ok", "ok"]
    errors = read_jsonl(errors_path(out))
    assert [(e["line"], e["field"]) for e in errors] == [(3, "query"), (5, "item_title"), (6, "*"), (7, "item_title")]
    assert [e["error"] for e in errors] == ["empty", "empty", "5 cells, the header has 3", "missing"]
    for line in (3, 5, 6, 7):
        assert f"{src}:{line}:" in caplog.text
    assert f"4 bad row(s) skipped, listed with their line numbers in {errors_path(out)}" in caplog.text


def test_jsonl_bad_lines_and_differing_keys(tmp_path: Path, tiny_artifact: Path, cache_dir: Path, fake_factory):
    src = tmp_path / "pairs.jsonl"
    lines = [
        {"query": "angle bracket", "item_title": "Simpson Angle", "a": 1},
        "{not json",
        {"query": "deck screws", "item_title": "GRK Screw", "b": [1, 2]},
        "",  # blank: not a record
        ["a list"],
        {"query": "deck screws", "item_title": 12345, "item_description": None},  # a number title is text
        {"query": "  ", "item_title": "x"},
    ]
    src.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "scored.csv"
    _, factory = fake_factory
    summary = run(ScoreJob(src, out, chunk_rows=2), settings_for(tiny_artifact, cache_dir), factory)
    assert summary.rows_written == 3 and summary.bad_rows == 3
    got = read_csv(out)  # parts with different keys merged under the union of the columns
    assert list(got[0]) == ["query", "item_title", "a", "b", "item_description", *PRED]
    assert [(r["a"], r["b"], r["item_title"]) for r in got] == [
        ("1", "", "Simpson Angle"),
        ("", "[1, 2]", "GRK Screw"),
        ("", "", "12345"),
    ]
    errors = read_jsonl(errors_path(out))
    assert [(e["line"], e["field"]) for e in errors] == [(2, "*"), (5, "*"), (7, "query")]
    assert errors[0]["error"].startswith("invalid JSON")


def test_strict_rejects_the_file_at_the_first_bad_row(tmp_path: Path, tiny_artifact: Path, capsys) -> None:
    from darl.cli import main

    src = tmp_path / "bad.csv"
    src.write_text(BAD_CSV)
    out = tmp_path / "scored.csv"
    rc = main(
        ["score", "--model", str(tiny_artifact), "--engine", "torch", "--in", str(src), "--out", str(out), "--strict"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"error: {src}:3: field 'query': empty (--strict") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists() and not out.with_name(out.name + ".parts").exists() and not errors_path(out).exists()


def test_strict_fails_on_a_query_too_long_for_the_model(tmp_path: Path, tiny_artifact: Path, cache_dir: Path):
    src = write_csv(
        tmp_path / "pairs.csv", [["p1", "q", "t", "", "", "", ""], ["p2", "long " * 200, "t", "", "", "", ""]]
    )
    settings = settings_for(tiny_artifact, cache_dir, auto_truncate=False)
    with pytest.raises(StrictError, match=r"pairs.csv:3: field 'query': query too long"):
        run(ScoreJob(src, tmp_path / "out.csv", strict=True), settings, lambda s, a: FakeEngine())
    summary = run(ScoreJob(src, tmp_path / "out.csv"), settings, lambda s, a: FakeEngine())
    assert summary.rows_written == 1 and summary.bad_rows == 1


# -- formats and user errors ---------------------------------------------------------------------


def test_parquet_round_trip(tmp_path: Path, tiny_artifact: Path, cache_dir: Path, fake_factory) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = make_rows(11)
    settings = settings_for(tiny_artifact, cache_dir)
    _, factory = fake_factory
    src_csv = write_csv(tmp_path / "pairs.csv", rows)
    run(ScoreJob(src_csv, tmp_path / "from-csv.parquet", chunk_rows=4), settings, factory)
    run(ScoreJob(src_csv, tmp_path / "from-csv.csv", chunk_rows=4), settings, factory)
    table = pq.read_table(tmp_path / "from-csv.parquet")
    assert table.column_names == HEADER + PRED
    assert table.schema.field("score").type == pa.float64() and table.schema.field("truncated").type == pa.bool_()
    as_text = [{k: str(v) for k, v in r.items()} for r in table.to_pylist()]
    assert_same_rows(as_text, read_csv(tmp_path / "from-csv.csv"), atol=0.0)

    # Parquet in: its column types are kept; NaN (no JSON for it) becomes null in JSONL.
    src = tmp_path / "pairs.parquet"
    data = {c: [r[i] for r in rows] for i, c in enumerate(HEADER)}
    data["item_description"] = [d or None for d in data["item_description"]]
    data["clicks"] = pa.array(range(11), pa.int32())
    data["ctr"] = [float("nan"), *[i / 10 for i in range(10)]]
    pq.write_table(pa.table(data), src)
    run(ScoreJob(src, tmp_path / "out.parquet", chunk_rows=4), settings, factory)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.field("clicks").type == pa.int32()
    assert out.column("pair_id").to_pylist() == data["pair_id"]
    assert out.column("score").to_pylist() == table.column("score").to_pylist()
    run(ScoreJob(src, tmp_path / "out.jsonl", chunk_rows=4), settings, factory)
    js = read_jsonl(tmp_path / "out.jsonl")
    assert js[0]["ctr"] is None and js[1]["ctr"] == 0.0 and js[0]["clicks"] == 0
    assert [r["score"] for r in js] == out.column("score").to_pylist()


def test_gz_csv_in_and_split_filter(tmp_path: Path, tiny_artifact: Path, cache_dir: Path, fake_factory) -> None:
    rows = make_rows(15)
    src = write_csv(tmp_path / "pairs.csv.gz", rows)
    _, factory = fake_factory
    summary = run(ScoreJob(src, tmp_path / "test.csv", split="test"), settings_for(tiny_artifact, cache_dir), factory)
    want = [r[0] for r in rows if r[5] == "test"]
    assert [r["pair_id"] for r in read_csv(tmp_path / "test.csv")] == want
    assert summary.rows_filtered == len(rows) - len(want)


def test_length_batches_respect_the_limits() -> None:
    ids = [(1,) * n for n in (5, 1, 9, 3, 3, 7, 2)]
    batches = length_batches(ids, max_pairs=3, max_tokens=12)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or sum(len(ids[i]) for i in b) <= 12)
    assert [len(ids[i]) for b in batches for i in b] == sorted(len(x) for x in ids)


def user_error(capsys, *args: str) -> str:
    """Run ``darl score`` with a mistake: exit code 2, one ``error:`` line, no traceback."""
    from darl.cli import main

    rc = main(["score", "--engine", "torch", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_user_mistakes_are_one_line_errors(tmp_path: Path, tiny_artifact: Path, capsys) -> None:
    good = write_csv(tmp_path / "pairs.csv", make_rows(3))
    model = ["--model", str(tiny_artifact)]
    out = str(tmp_path / "out.csv")
    assert "no such input file" in user_error(capsys, *model, "--in", str(tmp_path / "nope.csv"), "--out", out)
    (tmp_path / "pairs.txt").write_text("query,item_title\n")
    assert "unknown file type '.txt'" in user_error(capsys, *model, "--in", str(tmp_path / "pairs.txt"), "--out", out)
    assert "unknown file type '.xlsx'" in user_error(
        capsys, *model, "--in", str(good), "--out", str(tmp_path / "o.xlsx")
    )
    err = user_error(capsys, "--model", str(tmp_path / "no-model"), "--in", str(good), "--out", out)
    assert "does not exist" in err
    err = user_error(capsys, "--model", str(tmp_path), "--in", str(good), "--out", out)
    assert "not a model artifact directory" in err
    no_title = write_csv(tmp_path / "no-title.csv", [["q"]], header=["query"])
    assert "no 'item_title' column" in user_error(capsys, *model, "--in", str(no_title), "--out", out)
    no_split = write_csv(tmp_path / "no-split.csv", [["q", "t"]], header=["query", "item_title"])
    err = user_error(capsys, *model, "--in", str(no_split), "--out", out, "--split", "test")
    assert "has no 'split' column" in err
    scored = write_csv(tmp_path / "scored.csv", [["q", "t", "0.5"]], header=["query", "item_title", "score"])
    assert "--prefix" in user_error(capsys, *model, "--in", str(scored), "--out", out)
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"not gzip at all")
    assert "unreadable" in user_error(capsys, *model, "--in", str(broken), "--out", out)
    Path(out).write_text("earlier output\n")
    assert "--overwrite" in user_error(capsys, *model, "--in", str(good), "--out", out)
    assert Path(out).read_text() == "earlier output\n"


def test_prefix_names_the_added_columns_apart(tmp_path: Path, tiny_artifact: Path, cache_dir: Path, fake_factory):
    src = write_csv(tmp_path / "scored.csv", [["q", "t", "0.5"]], header=["query", "item_title", "score"])
    _, factory = fake_factory
    run(ScoreJob(src, tmp_path / "rescored.csv", prefix="new_"), settings_for(tiny_artifact, cache_dir), factory)
    (row,) = read_csv(tmp_path / "rescored.csv")
    assert list(row) == ["query", "item_title", "score", *prediction_columns("new_")]
    assert row["score"] == "0.5" and not math.isnan(float(row["new_score"]))
