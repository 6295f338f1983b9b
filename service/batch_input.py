"""Input of ``darl score``: CSV, JSONL (each optionally gzipped) or Parquet, in the training data schema.

``query`` and ``item_title`` are required, ``item_description`` optional, every other column is kept.
A record's position in the file (the n-th CSV record, non-blank JSONL line or Parquet row) is its
resume key; its line number is for messages. A row the service would reject (blank query or title, a
field over its character limit with truncation off) or that cannot be read is a ``BadRow``.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from relevance_core.prompt import TextTooLongError, cut_to_limit
from service.settings import Settings

REQUIRED_COLUMNS = ("query", "item_title")
DESCRIPTION_COLUMN = "item_description"
SPLIT_COLUMN = "split"
HEAD_BYTES = 1 << 20  # bytes of the input hashed to recognise it on resume
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class BatchError(Exception):
    """A user mistake (input, output or options): reported as one line, exit code 2, no traceback."""


class StrictError(BatchError):
    """``strict``: the input has a bad row."""


def file_format(path: Path) -> tuple[str, bool]:
    """``(format, gzipped)`` from the file name; an unknown extension is a ``BatchError``."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    fmt = _EXTENSIONS.get(Path(name.removesuffix(".gz")).suffix)
    if fmt is None:
        raise BatchError(
            f"{path}: unknown file type {''.join(path.suffixes) or '(no extension)'!r}; "
            "expected .csv, .jsonl or .ndjson (each optionally .gz) or .parquet"
        )
    if gz and fmt == "parquet":
        raise BatchError(f"{path}: Parquet compresses itself; use .parquet, not .parquet.gz")
    return fmt, gz


def pyarrow() -> Any:
    """pyarrow, or a clear error: Parquet is optional (the ``parquet`` extra)."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise BatchError(
            "Parquet files need pyarrow: `pip install pyarrow` (or the `parquet` extra); CSV and JSONL work without it"
        ) from None
    return pyarrow


def csv_reader(f: IO[str]) -> Iterator[list[str]]:
    """``csv.reader`` without its field size limit: long fields are the character limits' business."""
    csv.field_size_limit(2**31 - 1)
    return csv.reader(f)


@dataclass(frozen=True, slots=True)
class Record:
    """One input record: ``index`` (0-based) is the resume key, ``line`` (1-based) is for messages;
    ``row`` is None, with a ``problem``, when the record cannot be read."""

    index: int
    line: int
    row: dict[str, Any] | None
    problem: str = ""


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    field: str  # "*": the whole record
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "error": self.message}


@dataclass(frozen=True, slots=True)
class Pair:
    """A good row and its text as the service would render it; ``cut``: a field was cut to its limit."""

    line: int
    row: dict[str, Any]
    query: str
    title: str
    description: str | None
    cut: bool


class InputFile:
    """An input file: format and header checked on open, records streamed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.format, self.gz = file_format(self.path)
        if not self.path.exists():
            raise BatchError(f"{self.path}: no such input file")
        if not self.path.is_file():
            raise BatchError(f"{self.path}: not a file")
        # Known up front for CSV (header) and Parquet (schema); JSONL rows bring their own keys.
        self.columns: list[str] | None = None
        self.arrow_schema: Any = None
        if self.format == "csv":
            self.columns = self._csv_header()
        elif self.format == "parquet":
            pa = pyarrow()
            try:
                self.arrow_schema = pa.parquet.read_schema(self.path)
            except (pa.ArrowException, OSError) as e:
                raise BatchError(f"{self.path}: not a readable Parquet file: {e}") from None
            self.columns = list(self.arrow_schema.names)
        missing = [] if self.columns is None else [c for c in REQUIRED_COLUMNS if c not in self.columns]
        if missing:
            raise BatchError(
                f"{self.path}: no {' or '.join(map(repr, missing))} column; the input needs "
                f"{list(REQUIRED_COLUMNS)}, optionally {DESCRIPTION_COLUMN!r} (columns found: {self.columns})"
            )

    def describe(self, bad: BadRow) -> str:
        """``file:line: field 'query': empty`` (``file: row N`` for Parquet, which has no lines)."""
        where = f"{self.path}: row {bad.line}" if self.format == "parquet" else f"{self.path}:{bad.line}"
        what = "" if bad.field == "*" else f"field {bad.field!r}: "
        return f"{where}: {what}{bad.message}"

    def identity(self) -> dict[str, Any]:
        """What recognises this input on resume: size and hash of its first MiB (path for messages)."""
        with open(self.path, "rb") as f:
            head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
        return {"path": str(self.path.resolve()), "size": self.path.stat().st_size, "head_sha256": head}

    def _open(self, text: bool) -> IO[Any]:
        opener: Any = gzip.open if self.gz else open
        if text:  # utf-8-sig: a BOM (spreadsheet exports) must not become part of the first column's name
            return opener(self.path, "rt", encoding="utf-8-sig", newline="")
        return opener(self.path, "rb")

    def _csv_header(self) -> list[str]:
        with self._guard(0), self._open(text=True) as fh:
            header = next(csv_reader(fh), None)
        if not header:
            raise BatchError(f"{self.path}: empty file, expected a CSV header line")
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise BatchError(f"{self.path}:1: duplicate column name(s) {dupes} in the header")
        return header

    @contextlib.contextmanager
    def _guard(self, line: int) -> Iterator[None]:
        """A file that cannot be read past some point (corrupt gzip, not UTF-8, NUL bytes) is a user error."""
        try:
            yield
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
            where = f"{self.path}:{line}" if line else str(self.path)
            raise BatchError(f"{where}: unreadable: {type(e).__name__}: {e}") from None

    def records(self) -> Iterator[Record]:
        return getattr(self, f"_{self.format}_records")()

    def _csv_records(self) -> Iterator[Record]:
        header = self.columns or []
        index = 0
        with self._open(text=True) as fh:
            reader = csv_reader(fh)
            with self._guard(1):
                next(reader, None)
            while True:
                line = reader.line_num + 1  # as an editor shows it, quoted newlines included
                with self._guard(line):
                    cells = next(reader, None)
                if cells is None:
                    return
                if not cells:  # blank lines are not records
                    continue
                if len(cells) > len(header):
                    yield Record(index, line, None, f"{len(cells)} cells, the header has {len(header)}")
                else:  # short rows: missing cells are None, as csv.DictReader has them
                    yield Record(index, line, dict(itertools.zip_longest(header, cells)))
                index += 1

    def _jsonl_records(self) -> Iterator[Record]:
        index = number = 0
        with self._open(text=False) as fh:
            while True:
                number += 1
                with self._guard(number):
                    raw = fh.readline()
                if not raw:
                    return
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
                    yield Record(index, number, None, f"invalid JSON: {getattr(e, 'msg', None) or e}")
                else:
                    if isinstance(row, dict):
                        yield Record(index, number, row)
                    else:
                        yield Record(index, number, None, f"a JSONL line must be an object, got {type(row).__name__}")
                index += 1

    def _parquet_records(self) -> Iterator[Record]:
        pa = pyarrow()
        index = 0
        try:
            for batch in pa.parquet.ParquetFile(self.path).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    yield Record(index, index + 1, row)
                    index += 1
        except (pa.ArrowException, OSError) as e:
            raise BatchError(f"{self.path}: unreadable Parquet near row {index + 1}: {e}") from None


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _as_text(v: Any) -> str | None:
    """A cell as text: strings as they are, numbers stringified; ``None`` for anything else."""
    if isinstance(v, str):
        return v
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    return None


def check_record(rec: Record, settings: Settings, reads_description: bool = True) -> Pair | BadRow:
    """A record's pair, or why it is bad. Text is kept as the service gets it (not stripped); what the
    service's request schema rejects (a missing or blank query or title) is a bad row here."""
    row = rec.row
    if row is None:
        return BadRow(rec.line, "*", rec.problem or "unreadable")
    text: dict[str, str | None] = {}
    for name in (*REQUIRED_COLUMNS, DESCRIPTION_COLUMN):
        v = row.get(name)
        optional = name == DESCRIPTION_COLUMN
        if _is_missing(v) or (optional and v == ""):  # the service renders an empty description as none
            if not optional:
                return BadRow(rec.line, name, "missing")
            text[name] = None
            continue
        value = _as_text(v)
        if value is None:
            return BadRow(rec.line, name, f"must be a string, got {type(v).__name__}")
        if not optional and not value.strip():
            return BadRow(rec.line, name, "empty")
        text[name] = value
    refuse = None if settings.auto_truncate else "DARL_AUTO_TRUNCATE is off"
    cut = False
    if not reads_description:  # as the service: a model that never reads it sees no description
        text[DESCRIPTION_COLUMN] = None
    for name, what, limit in (
        ("query", "query", settings.max_query_chars),
        ("item_title", "title", settings.max_field_chars),
        (DESCRIPTION_COLUMN, "description", settings.max_field_chars),
    ):
        try:
            text[name], was_cut = cut_to_limit(what, text[name], limit, refuse)
        except TextTooLongError as e:
            return BadRow(rec.line, name, str(e))
        cut = cut or was_cut
    return Pair(rec.line, row, text["query"] or "", text["item_title"] or "", text[DESCRIPTION_COLUMN], cut)


def in_split(row: dict[str, Any] | None, split: str | None) -> bool:
    """Rows outside ``split`` are filtered out silently; unreadable records are kept (to be reported)."""
    if split is None or row is None:
        return True
    v = row.get(SPLIT_COLUMN)
    return not _is_missing(v) and str(v).strip() == split


@dataclass
class Chunk:
    """Records ``[start, end)``: their good rows, bad rows and how many ``split`` left out."""

    start: int
    end: int
    pairs: list[Pair] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    filtered: int = 0


def read_chunks(
    records: Iterator[Record],
    start: int,
    chunk_rows: int,
    split: str | None,
    settings: Settings,
    reads_description: bool = True,
) -> Iterator[Chunk]:
    """Chunks of ``chunk_rows`` records from record ``start`` on; earlier records are skipped unchecked.
    ``reads_description``: the model's template reads item descriptions (else they are dropped unchecked)."""
    chunk: Chunk | None = None
    for rec in records:
        if rec.index < start:
            continue
        if chunk is None:
            chunk = Chunk(rec.index, rec.index)
        chunk.end = rec.index + 1
        if not in_split(rec.row, split):
            chunk.filtered += 1
        elif isinstance(checked := check_record(rec, settings, reads_description), Pair):
            chunk.pairs.append(checked)
        else:
            chunk.bad.append(checked)
        if chunk.end - chunk.start >= chunk_rows:
            yield chunk
            chunk = None
    if chunk is not None:
        yield chunk
