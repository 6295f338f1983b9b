"""Relevance pairs from the shared CSVs and from users' own CSV/JSONL files.

Schema (one row per pair): ``query``, ``item_title`` (required), ``item_description``,
``label`` (one of ``irrelevant``/``weak``/``strong`` or ``0``/``1``/``2``; may be empty
for unlabeled pool rows), ``split``, plus the optional ``pair_id``, ``raw_relevance``
and ``source`` columns of the shared files. Every bad row is reported with its line
number and field; ``on_error="skip"`` drops it with a warning, ``"error"`` rejects
the file. The standard ``csv`` module keeps line numbers exact (quoted newlines).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from relevance_core.labels import LABEL2ID, LABELS
from relevance_core.prompt import TEMPLATE_VERSION, PromptRenderer

if TYPE_CHECKING:
    from training.config import TrainConfig

log = logging.getLogger(__name__)

UNLABELED = -1
REQUIRED_FIELDS = ("query", "item_title")
KNOWN_FIELDS = (
    "pair_id",
    "query",
    "item_title",
    "item_description",
    "label",
    "raw_relevance",
    "source",
    "split",
)
OnError = Literal["skip", "error"]


class DataError(ValueError):
    """A data file is unreadable or has rows that violate the schema."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One (query, item) pair; ``label`` is a label id or ``UNLABELED``."""

    pair_id: str
    query: str
    title: str
    description: str
    label: int
    raw_relevance: float | None
    source: str
    split: str

    @property
    def labeled(self) -> bool:
        return self.label != UNLABELED


@dataclass(frozen=True, slots=True)
class RowError:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: field {self.field!r}: {self.message}"


def parse_label(value: str | int | None) -> int:
    """Label name or id → id; empty → ``UNLABELED``; anything else raises ``ValueError``."""
    if value is None:
        return UNLABELED
    s = str(value).strip().lower()
    if s == "":
        return UNLABELED
    if s in LABEL2ID:
        return LABEL2ID[s]
    if s in {"0", "1", "2"}:
        return int(s)
    raise ValueError(f"{value!r} is not one of {list(LABELS)} (or 0/1/2)")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _iter_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line, row, parse_error)`` for CSV (optionally .gz) or JSONL files."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as fh:
        if name.endswith((".jsonl", ".ndjson")):
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, None, f"invalid JSON: {e.msg}"
                    continue
                if not isinstance(row, dict):
                    yield i, None, "a JSONL line must be an object"
                    continue
                yield i, row, None
            return
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty file, expected a CSV header")
        missing = [f for f in REQUIRED_FIELDS if f not in reader.fieldnames]
        if missing:
            raise DataError(
                f"{path}:1: header lacks required column(s) {missing}; "
                f"expected {list(REQUIRED_FIELDS)} and optionally {list(KNOWN_FIELDS)}"
            )
        start = 2
        for row in reader:
            if None in row:  # more cells than header columns
                n_cells = len(reader.fieldnames) + len(row[None])
                yield start, None, f"{n_cells} cells, header has {len(reader.fieldnames)}"
            else:
                yield start, row, None
            start = reader.line_num + 1


def _validate(
    row: dict, path: str, line: int, default_split: str, default_source: str
) -> tuple[Pair | None, RowError | None]:
    def err(field: str, msg: str) -> tuple[None, RowError]:
        return None, RowError(path, line, field, msg)

    def text(field: str) -> str:
        v = row.get(field)
        return "" if v is None else str(v).strip()

    for field in REQUIRED_FIELDS:
        if field not in row or row[field] is None:
            return err(field, "missing")
        if not isinstance(row[field], str | int | float):
            return err(field, f"must be a string, got {type(row[field]).__name__}")
        if text(field) == "":
            return err(field, "empty")
    try:
        label = parse_label(row.get("label"))
    except ValueError as e:
        return err("label", str(e))
    raw: float | None = None
    if text("raw_relevance"):
        try:
            raw = float(text("raw_relevance"))
        except ValueError:
            return err("raw_relevance", f"{row['raw_relevance']!r} is not a number")
    pair_id = text("pair_id") or f"{Path(path).name}:{line}"
    return Pair(
        pair_id=pair_id,
        query=text("query"),
        title=text("item_title"),
        description=text("item_description"),
        label=label,
        raw_relevance=raw,
        source=text("source") or default_source,
        split=text("split") or default_split,
    ), None


def load_pairs(
    path: str | Path,
    on_error: OnError = "error",
    default_split: str = "train",
    source: str | None = None,
) -> list[Pair]:
    """Read and validate one CSV(.gz)/JSONL file.

    ``source`` overrides a missing ``source`` column (default: the file's stem).
    With ``on_error="error"`` every row error is collected and raised together.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    default_source = source or path.name.split(".")[0]
    pairs: list[Pair] = []
    errors: list[RowError] = []
    for line, row, problem in _iter_rows(path):
        if problem is not None:
            errors.append(RowError(str(path), line, "*", problem))
            continue
        pair, error = _validate(row, str(path), line, default_split, default_source)
        if error is not None:
            errors.append(error)
        else:
            pairs.append(pair)
    if errors:
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        if on_error == "error":
            raise DataError(f"{len(errors)} invalid row(s) in {path}:\n  {shown}{more}")
        log.warning("skipped %d invalid row(s) in %s:\n  %s%s", len(errors), path, shown, more)
    seen: set[str] = set()
    for p in pairs:
        if p.pair_id in seen:
            raise DataError(f"{path}: duplicate pair_id {p.pair_id!r}")
        seen.add(p.pair_id)
    return pairs


def by_split(pairs: Iterable[Pair], split: str) -> list[Pair]:
    return [p for p in pairs if p.split == split]


def subsample(pairs: Sequence[Pair], n: int | None, seed: int) -> list[Pair]:
    """A seeded random subset of at most ``n`` pairs, kept in the input order."""
    if n is None or n >= len(pairs):
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in keep]


def hide_labels(pairs: Iterable[Pair]) -> list[Pair]:
    """The pool as the selector sees it: no labels."""
    return [replace(p, label=UNLABELED) for p in pairs]


def fingerprint(paths: Iterable[str | Path], extra: str = "") -> str:
    """sha256 over the data files' bytes (and ``extra``, e.g. subsampling settings)."""
    h = hashlib.sha256()
    for p in sorted(str(x) for x in paths):
        h.update(Path(p).name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    h.update(extra.encode())
    return h.hexdigest()


def write_pairs_csv(pairs: Iterable[Pair], path: str | Path, extra: dict[str, Sequence] | None = None) -> None:
    """Write pairs in the shared schema (labels by name, empty when unlabeled)."""
    pairs = list(pairs)
    extra = extra or {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*KNOWN_FIELDS, *extra])
        for i, p in enumerate(pairs):
            w.writerow(
                [
                    p.pair_id,
                    p.query,
                    p.title,
                    p.description,
                    LABELS[p.label] if p.labeled else "",
                    "" if p.raw_relevance is None else p.raw_relevance,
                    p.source,
                    p.split,
                    *(col[i] for col in extra.values()),
                ]
            )


def render_pairs(renderer: PromptRenderer, pairs: Sequence[Pair]) -> tuple[list[tuple[int, ...]], list[bool]]:
    """Token ids via ``PromptRenderer``, one tokenizer call per distinct query."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.query, []).append(i)
    ids: list[tuple[int, ...]] = [()] * len(pairs)
    truncated = [False] * len(pairs)
    for query, idx in groups.items():
        rendered = renderer.render_many(query, [(pairs[i].title, pairs[i].description or None) for i in idx])
        for i, r in zip(idx, rendered, strict=True):
            ids[i] = r.token_ids
            truncated[i] = r.truncated
    return ids, truncated


def render_seqs(
    tok: Any, max_length: int, pairs: Sequence[Pair], template: str = TEMPLATE_VERSION
) -> list[tuple[int, ...]]:
    """Token ids of ``pairs`` with the shared template (``render_pairs`` without the truncation flags)."""
    return render_pairs(PromptRenderer(tok, max_length, template), pairs)[0]


@dataclass
class Splits:
    train: list[Pair]
    pool: list[Pair]  # with labels: the experiments' annotators
    val_id: list[Pair]
    val_ood: list[Pair]
    test_id: list[Pair]
    test_ood: list[Pair]
    ood_sources: set[str]
    files: list[Path]


def load_splits(cfg: TrainConfig) -> Splits:
    """ID files give train/pool/val/test; OOD files give pool/val/test."""
    d = cfg.data
    root = cfg.path(d.root)
    id_files = [root / f for f in d.id_files] + [cfg.path(f) for f in d.extra_files]
    ood_files = [root / f for f in d.ood_files]
    id_pairs = [p for f in id_files for p in load_pairs(f, d.on_error)]
    ood_pairs = [p for f in ood_files for p in load_pairs(f, d.on_error)]
    s = cfg.seed
    train = [p for p in by_split(id_pairs, d.train_split) if p.labeled]
    return Splits(
        train=subsample(train, d.max_train, s),
        pool=subsample(by_split(id_pairs, d.pool_split), d.max_pool_per_domain, s + 5)
        + subsample(by_split(ood_pairs, d.pool_split), d.max_pool_per_domain, s + 6),
        val_id=subsample([p for p in by_split(id_pairs, d.val_split) if p.labeled], d.max_val_per_domain, s + 1),
        val_ood=subsample([p for p in by_split(ood_pairs, d.val_split) if p.labeled], d.max_val_per_domain, s + 2),
        test_id=subsample([p for p in by_split(id_pairs, d.test_split) if p.labeled], d.max_test_per_domain, s + 3),
        test_ood=subsample([p for p in by_split(ood_pairs, d.test_split) if p.labeled], d.max_test_per_domain, s + 4),
        ood_sources={p.source for p in ood_pairs},
        files=id_files + ood_files,
    )


def data_fingerprint(cfg: TrainConfig, splits: Splits) -> str:
    return fingerprint(splits.files, json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True) + f"|seed={cfg.seed}")
