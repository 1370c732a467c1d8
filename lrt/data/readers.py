"""Where rows come from: local JSONL or Parquet files (with `file:line` for every row, so a bad
row is reported where it is) and hub datasets; each yields `(where, row)` pairs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrt.data.parsers import RowError
from lrt.errors import DataError


@dataclass(frozen=True)
class HubSource:
    """One `datasets.load_dataset(path, config, split=split)` call."""

    path: str
    config: str | None
    split: str


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed JSON or the RowError for that line) for each non-blank line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"Cannot read data file {path}: {exc.strerror}.") from exc
    with handle:
        for lineno, raw in enumerate(handle, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield where, RowError(None, "is not valid UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, RowError(None, f"is not valid JSON ({exc.msg})")


def parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(`file:row N`, row dict) of a local Parquet file (the hub's own storage format)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged or foreign file
        raise DataError(f"Cannot read Parquet file {path}: {exc}.") from exc
    for index, row in enumerate(table.to_pylist()):
        yield f"{path}:row {index}", row


def hub_rows(source: HubSource) -> Iterator[tuple[str, Any]]:
    """Rows of a hub dataset; `datasets` is imported only here because it is slow to import."""
    import datasets

    try:
        dataset = datasets.load_dataset(source.path, source.config, split=source.split)
    except Exception as exc:  # any hub or network failure: the fix is the same
        raise DataError(
            f"Cannot load hub dataset {source.path} split {source.split!r} ({exc}); "
            "pass path= to a local JSONL copy."
        ) from exc
    for index, row in enumerate(dataset):
        yield f"{source.path}[{source.split}] row {index}", row
