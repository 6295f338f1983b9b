"""Output of ``darl score``: scored rows written in parts, so that an interrupted run can resume.

Each chunk of input records becomes one complete file ``<out>.parts/part-<start>-<end>.<ext>`` (temporary
name, fsync, rename), its bad rows going to ``errors-<start>.jsonl`` just before. A killed run leaves
whole parts only, and a rerun starts after the last one. ``run.json`` records what the parts belong to
(input size and head hash, model, engine, options that change the numbers), so a rerun that differs is
refused rather than mixed in. One part per chunk in the output format keeps one scheme for all formats
(Parquet cannot be appended to); the merge into ``<out>`` concatenates JSONL, rewrites CSV under one
header and copies Parquet row groups.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import gzip
import io
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from relevance_core.labels import LABELS
from relevance_core.postprocess import expected_grade
from service.batch_input import BatchError, Chunk, InputFile, csv_reader, pyarrow

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_SCHEMA = 1
_PART = re.compile(r"part-(\d{12})-(\d{12})\.(csv|jsonl|parquet)$")
_ERRORS = re.compile(r"errors-(\d{12})\.jsonl$")
_PRED_TYPES = ("float64",) * len(LABELS) + ("string", "float64", "bool")  # Arrow type of each added column


def prediction_columns(prefix: str = "") -> list[str]:
    """The columns appended to every row, in order."""
    return [*(f"{prefix}p_{name}" for name in LABELS), f"{prefix}label_pred", f"{prefix}score", f"{prefix}truncated"]


def errors_path(out: Path) -> Path:
    """Where the bad rows of ``out``'s input are listed."""
    return out.with_name(out.name + ".errors.jsonl")


def _prediction_values(probs: np.ndarray, truncated: list[bool]) -> list[list[Any]]:
    """The added columns' values, what the service returns for each item: probabilities, label, score."""
    labels = [LABELS[int(k)] for k in probs.argmax(axis=1)]
    return [*probs.T.tolist(), labels, expected_grade(probs).tolist(), [bool(t) for t in truncated]]


def _json_default(v: Any) -> Any:
    """Parquet values JSON has no type for: dates as ISO 8601, bytes as text, the rest (decimals) as str."""
    if isinstance(v, datetime.date | datetime.time):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _no_nan(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_nan(x) for x in v]
    return v


def _json_line(row: dict[str, Any]) -> str:
    try:
        return json.dumps(row, ensure_ascii=False, default=_json_default, allow_nan=False)
    except ValueError:  # NaN from a Parquet input: null, as JSON has no NaN
        return json.dumps(_no_nan(row), ensure_ascii=False, default=_json_default)


def _csv_cell(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float):
        return v
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False, default=_json_default)
    return _json_default(v)


class PartEncoder:
    """One chunk's rows plus predictions as the bytes of a part file in the output format."""

    def __init__(self, fmt: str, pred_columns: list[str], inp: InputFile) -> None:
        self.format = fmt
        self.pred_columns = pred_columns
        self.input_columns = inp.columns
        # Parquet out: a Parquet input's own schema, a CSV input's columns as text; JSONL's inferred per part.
        self.arrow_schema: Any = None
        if fmt == "parquet" and inp.columns is not None:
            pa = pyarrow()
            if inp.arrow_schema is not None:
                self.arrow_schema = inp.arrow_schema.remove_metadata()
            else:
                self.arrow_schema = pa.schema([(c, pa.string()) for c in inp.columns])

    def encode(self, rows: list[dict[str, Any]], probs: np.ndarray, truncated: list[bool]) -> bytes:
        """A chunk with no good rows is an empty part (no bytes), whatever the format."""
        if not rows:
            return b""
        values = _prediction_values(probs, truncated)
        cols = self.input_columns or list(dict.fromkeys(k for r in rows for k in r))
        if self.format == "parquet":
            return self._parquet(rows, cols, values)
        preds = [dict(zip(self.pred_columns, p, strict=True)) for p in zip(*values, strict=True)]
        if self.format == "jsonl":
            return "".join(_json_line({**r, **p}) + "\n" for r, p in zip(rows, preds, strict=True)).encode()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([*cols, *self.pred_columns])
        w.writerows([*(_csv_cell(r.get(c)) for c in cols), *p.values()] for r, p in zip(rows, preds, strict=True))
        return buf.getvalue().encode()

    def _parquet(self, rows: list[dict[str, Any]], cols: list[str], values: list[list[Any]]) -> bytes:
        pa = pyarrow()
        try:
            if self.arrow_schema is not None:
                table = pa.Table.from_pylist(rows, schema=self.arrow_schema)
            else:  # from_pylist would take the first row's keys only
                table = pa.table({c: pa.array([r.get(c) for r in rows]) for c in cols})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise BatchError(f"cannot write these rows to Parquet ({e}); choose a .csv or .jsonl output") from None
        for name, kind, column in zip(self.pred_columns, _PRED_TYPES, values, strict=True):
            table = table.append_column(name, pa.array(column, pa.type_for_alias(kind)))
        sink = pa.BufferOutputStream()
        pa.parquet.write_table(table, sink)
        return sink.getvalue().to_pybytes()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` whole or not at all: a temporary name in the same directory, fsync, rename."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)  # the rename itself, durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


@dataclass(frozen=True, slots=True)
class Part:
    start: int
    end: int
    path: Path


class Parts:
    """``<out>.parts/``: the finished chunks of an unfinished run, what they belong to, and a lock so that
    two processes never write one output."""

    def __init__(self, out: Path, fmt: str) -> None:
        self.out = out
        self.format = fmt
        self.dir = out.with_name(out.name + ".parts")
        self.fresh = True
        self._lock_fd: int | None = None

    def open(self, identity: dict[str, Any], overwrite: bool) -> list[Part]:
        """Lock, then check an earlier run's parts against ``identity`` (or start afresh); the finished parts."""
        existed = self.dir.is_dir()
        if not existed and self.out.exists() and not overwrite:
            raise BatchError(f"{self.out} exists; pass --overwrite to replace it")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        identity = {"schema": RUN_SCHEMA, **identity}
        run_file = self.dir / RUN_FILE
        resume = existed and not overwrite
        if resume and run_file.is_file():
            earlier = json.loads(run_file.read_text())
            diffs = _differences(earlier, identity)
            if diffs:
                raise BatchError(
                    f"{self.dir} holds an unfinished run with a different {', '.join(diffs)}; rerun with "
                    "--overwrite to discard it and start afresh, or choose another --out"
                )
            if earlier.get("input", {}).get("path") != identity["input"]["path"]:
                log.info("resuming a run started on %s (same size and first bytes)", earlier["input"]["path"])
            self.fresh = False
        elif resume and any(_PART.match(p.name) for p in self.dir.iterdir()):
            raise BatchError(f"{self.dir} has parts but no {RUN_FILE}; rerun with --overwrite to start afresh")
        else:
            for p in self.dir.iterdir():
                if p.name != ".lock":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            _write_atomic(run_file, (json.dumps(identity, indent=2) + "\n").encode())
        return self._finished()

    def _lock(self) -> None:
        fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BatchError(f"another `darl score` is writing {self.out} (it holds {self.dir}/.lock)") from None
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _finished(self) -> list[Part]:
        """Parts that tile records ``[0, end)``; leftovers of a killed write (temporary files, the errors
        file of a chunk whose part never appeared) are removed."""
        parts: list[Part] = []
        for p in self.dir.iterdir():
            if p.name.startswith(".tmp-"):
                p.unlink()
            elif (m := _PART.match(p.name)) and m.group(3) == self.format:
                parts.append(Part(int(m.group(1)), int(m.group(2)), p))
        parts.sort(key=lambda x: x.start)
        end = 0
        for part in parts:
            if part.start != end:
                raise BatchError(
                    f"{self.dir}: records {end}–{part.start} are missing between the parts; "
                    "rerun with --overwrite to start afresh"
                )
            end = part.end
        starts = {part.start for part in parts}
        for p in self.dir.iterdir():
            if (m := _ERRORS.match(p.name)) and int(m.group(1)) not in starts:
                p.unlink()
        return parts

    def _errors_path(self, start: int) -> Path:
        return self.dir / f"errors-{start:012d}.jsonl"

    def commit(self, chunk: Chunk, data: bytes) -> None:
        """The chunk's bad rows, then its part: once the part exists, the chunk is done."""
        errors = self._errors_path(chunk.start)
        if chunk.bad:
            _write_atomic(
                errors, "".join(json.dumps(b.as_json(), ensure_ascii=False) + "\n" for b in chunk.bad).encode()
            )
        else:
            errors.unlink(missing_ok=True)
        _write_atomic(self.dir / f"part-{chunk.start:012d}-{chunk.end:012d}.{self.format}", data)

    def merge(self, gz: bool, encoder: PartEncoder) -> tuple[int, int]:
        """All parts into ``out`` and their bad rows into ``<out>.errors.jsonl``: (rows, bad rows)."""
        parts = self._finished()
        data = [p.path for p in parts if p.path.stat().st_size > 0]
        with atomic_file(self.out) as raw:
            sink = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else contextlib.nullcontext(raw)
            with sink as f:  # closing the gzip stream writes its trailer, not closing ``raw``
                rows = _MERGES[self.format](data, f, encoder)
        bad = b"".join(e.read_bytes() for p in parts if (e := self._errors_path(p.start)).is_file())
        if bad:
            _write_atomic(errors_path(self.out), bad)
        else:
            errors_path(self.out).unlink(missing_ok=True)
        return rows, bad.count(b"\n")


def _differences(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    diffs = []
    for key, value in now.items():
        if key == "input":
            old = earlier.get("input", {})
            if (old.get("size"), old.get("head_sha256")) != (value["size"], value["head_sha256"]):
                diffs.append(f"input file (was {old.get('path')}, {old.get('size')} bytes)")
        elif earlier.get(key) != value:
            diffs.append(f"{key} (was {earlier.get(key)!r}, now {value!r})")
    return diffs


def _merge_jsonl(parts: list[Path], sink: IO[bytes], encoder: PartEncoder) -> int:
    rows = 0
    for p in parts:
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                rows += block.count(b"\n")
                sink.write(block)
    return rows


def _merge_csv(parts: list[Path], sink: IO[bytes], encoder: PartEncoder) -> int:
    """Every part's rows under one header, the union of the parts' (a JSONL input's keys may differ)."""
    headers = []
    for p in parts:
        with open(p, encoding="utf-8", newline="") as f:
            headers.append(next(csv_reader(f)))
    inputs = [c for h in headers or [encoder.input_columns or []] for c in h if c not in encoder.pred_columns]
    buf = io.StringIO()  # one part at a time: a text wrapper's flushes would add gzip sync points
    w = csv.DictWriter(buf, fieldnames=[*dict.fromkeys(inputs), *encoder.pred_columns], restval="")
    w.writeheader()
    rows = 0
    for p in parts:
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv_reader(f)
            header = next(reader)
            for cells in reader:
                w.writerow(dict(zip(header, cells, strict=True)))
                rows += 1
        sink.write(buf.getvalue().encode())
        buf.seek(0)
        buf.truncate()
    sink.write(buf.getvalue().encode())
    return rows


def _merge_parquet(parts: list[Path], sink: IO[bytes], encoder: PartEncoder) -> int:
    """Each part's rows become row groups of one file, under the parts' unified schema (a JSONL input's
    columns may differ between parts; missing ones are null)."""
    pa = pyarrow()
    pq = pa.parquet
    preds = [pa.field(n, pa.type_for_alias(t)) for n, t in zip(encoder.pred_columns, _PRED_TYPES, strict=True)]
    if not parts:
        pq.write_table(pa.schema([*(encoder.arrow_schema or []), *preds]).empty_table(), sink)
        return 0
    try:
        schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise BatchError(f"the parts' columns do not merge into one Parquet schema ({e}); use .jsonl") from None
    # Input columns first, predictions last, whatever order the parts brought new columns in.
    order = [n for n in schema.names if n not in encoder.pred_columns] + encoder.pred_columns
    schema = pa.schema([schema.field(n) for n in order])
    rows = 0
    with pq.ParquetWriter(sink, schema) as writer:
        for p in parts:
            table = pq.read_table(p)
            for f in schema:
                if f.name not in table.column_names:
                    table = table.append_column(f, pa.nulls(len(table), f.type))
            writer.write_table(table.select(schema.names).cast(schema))
            rows += len(table)
    return rows


_MERGES = {"jsonl": _merge_jsonl, "csv": _merge_csv, "parquet": _merge_parquet}
