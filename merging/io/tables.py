"""A user's data table: the rows of a local JSONL, JSON (a list of objects), CSV or parquet file, each a mapping
column -> value. Every problem is a MergeError naming the file (and the line or row), read before any model is.

    rows = read_table("sentiment.jsonl")                 # [{"text": "...", "label": 1}, ...]
    require_columns(rows, ["text", "label"], "sentiment.jsonl")
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MergeError

Row = dict[str, Any]
FORMATS = (".jsonl", ".json", ".csv", ".parquet")


def read_table(path: str | Path) -> list[Row]:
    """The rows of ``path`` by its suffix (``FORMATS``); a missing or empty file, a line that is not a JSON
    object, or another suffix is a MergeError naming the file."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise MergeError(f"{path}: unsupported data file; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise MergeError(f"{path}: data file does not exist")
    rows = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}[path.suffix](path)
    if not rows:
        raise MergeError(f"{path}: no rows")
    return rows


def require_columns(rows: Sequence[Row], columns: Sequence[str], path: str | Path) -> None:
    """Every row of ``path`` has every one of ``columns``; else a MergeError naming the first row without one and
    the columns the file has."""
    for index, row in enumerate(rows, 1):
        missing = [c for c in columns if c not in row]
        if missing:
            raise MergeError(f"{path}: row {index} has no column {', '.join(map(repr, missing))} "
                             f"(its columns: {', '.join(map(repr, row))})")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MergeError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _object(value: Any, where: str) -> Row:
    if not isinstance(value, dict):
        raise MergeError(f"{where}: expected a JSON object (column -> value), got {type(value).__name__}")
    return value


def _jsonl(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append(_object(json.loads(line), f"{path} line {number}"))
            except json.JSONDecodeError as err:
                raise MergeError(f"{path} line {number}: not JSON ({err.msg})") from None
    return rows


def _json(path: Path) -> list[Row]:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise MergeError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise MergeError(f"{path}: expected a list of objects, got {type(data).__name__}")
    return [_object(row, f"{path} item {i}") for i, row in enumerate(data, 1)]


def _csv(path: Path) -> list[Row]:
    return [dict(row) for row in csv.DictReader(_text(path).splitlines())]


def _parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MergeError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 -- pyarrow raises several types for a bad file: one clear message
        raise MergeError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
