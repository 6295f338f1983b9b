"""Data loading and validation: schema, line numbers, skip/error policy, rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import UNLABELED, DataError, by_split, load_pairs, parse_label, render_pairs, subsample


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_errors_have_line_numbers(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "mine.csv",
        "query,item_title,label,split\n"
        "drill,Cordless drill,strong,train\n"
        '"paint","Blue paint\nwith a newline",weak,val\n'  # quoted newline: rows span lines 3-4
        ",Lamp,weak,train\n"  # line 5: empty query
        "sink,Kitchen sink,great,train\n"  # line 6: bad label
        "tile,Floor tile,,pool\n",
    )  # line 7: unlabeled is fine
    with pytest.raises(DataError) as e:
        load_pairs(f, on_error="error")
    msg = str(e.value)
    assert "mine.csv:5: field 'query': empty" in msg
    assert "mine.csv:6: field 'label'" in msg and "'great'" in msg
    pairs = load_pairs(f, on_error="skip")
    assert [p.query for p in pairs] == ["drill", "paint", "tile"]
    assert pairs[2].label == UNLABELED and pairs[0].label == 2
    assert pairs[0].source == "mine" and pairs[0].pair_id == "mine.csv:2"
    assert [p.query for p in by_split(pairs, "val")] == ["paint"]


def test_missing_header_and_extra_cells(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="header lacks required column"):
        load_pairs(_write(tmp_path / "a.csv", "q,title\nx,y\n"))
    f = _write(tmp_path / "b.csv", "query,item_title\nx,y,z\nok,fine\n")
    with pytest.raises(DataError, match=r"b\.csv:2"):
        load_pairs(f)
    assert len(load_pairs(f, on_error="skip")) == 1


def test_jsonl(tmp_path: Path) -> None:
    rows = [
        {"query": "drill", "item_title": "Drill", "item_description": "18V", "label": 1, "split": "test"},
        "not json",
        {"query": "lamp"},
        {"query": "mouse", "item_title": "Mouse", "raw_relevance": "high"},
    ]
    f = _write(tmp_path / "mine.jsonl", "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as e:
        load_pairs(f)
    msg = str(e.value)
    assert "mine.jsonl:2: field '*': invalid JSON" in msg
    assert "mine.jsonl:3: field 'item_title': missing" in msg
    assert "mine.jsonl:4: field 'raw_relevance'" in msg
    (p,) = load_pairs(f, on_error="skip")
    assert (p.label, p.split, p.description) == (1, "test", "18V")


def test_duplicate_ids_and_labels(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="duplicate pair_id"):
        load_pairs(_write(tmp_path / "d.csv", "pair_id,query,item_title\na,x,y\na,x,z\n"))
    assert parse_label("Strong") == 2 and parse_label("0") == 0 and parse_label("") == UNLABELED
    with pytest.raises(ValueError):
        parse_label("3")
    with pytest.raises(DataError, match="no such data file"):
        load_pairs(tmp_path / "missing.csv")


def test_shared_files_and_subsample(data_root: Path) -> None:
    pairs = load_pairs(data_root / "homedepot.csv.gz")
    assert {p.source for p in pairs} == {"homedepot"} and pairs[0].raw_relevance == 3.0
    sub = subsample(pairs, 10, seed=1)
    assert len(sub) == 10 and sub == subsample(pairs, 10, seed=1)
    assert subsample(pairs, None, 0) == pairs


def test_render_pairs_uses_prompt_renderer(tiny_base_dir: Path, data_root: Path) -> None:
    from transformers import AutoTokenizer

    from relevance_core.prompt import PromptRenderer

    renderer = PromptRenderer(AutoTokenizer.from_pretrained(tiny_base_dir), max_length=24)
    pairs = load_pairs(data_root / "crowdflower.csv.gz")[:6]
    ids, truncated = render_pairs(renderer, pairs)
    for p, seq, t in zip(pairs, ids, truncated, strict=True):
        r = renderer.render(p.query, p.title, p.description or None)
        assert seq == r.token_ids and t == r.truncated and len(seq) <= 24
