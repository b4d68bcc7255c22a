"""Results as data: every run appends a row to ``results.csv``; ``results.md`` is rebuilt from the rows.
Rows may add new columns (other tasks, other hyper-parameters): the CSV is rewritten with their union."""
from __future__ import annotations

import csv
import fcntl
import io
import os
import tempfile
from pathlib import Path
from typing import Any


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the CSV at ``path`` (created if missing); concurrent runs are serialised by a lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _append(path, row)


def _append(path: Path, row: dict[str, Any]) -> None:
    rows = read_rows(path) + [{k: _format(v) for k, v in row.items()}]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomically(path, buffer.getvalue())


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(r.get(c, "") for c in columns) + " |\n" for r in rows)


def rebuild_markdown(csv_path: str | Path, md_path: str | Path, title: str, first: list[str]) -> None:
    """Write ``md_path`` from the CSV: columns ``first`` (when present) lead, the rest follow."""
    rows = read_rows(Path(csv_path))
    columns = list(dict.fromkeys([c for c in first if rows and c in rows[0]] + list(rows[0] if rows else [])))
    _write_atomically(Path(md_path), f"# {title}\n\nRebuilt from `{Path(csv_path).name}`.\n\n"
                      + markdown_table(rows, columns))
