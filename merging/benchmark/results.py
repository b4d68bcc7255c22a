"""Results as data: every run appends a row to ``results.csv``; ``results.md`` is rebuilt from the rows.
Rows may add new columns (other tasks, other hyper-parameters): the CSV is rewritten with their union."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_text


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the CSV at ``path`` (created if missing); concurrent runs are serialised by a lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        _append(path, row)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lock that serialises every writer of the CSV at ``path``."""
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def digests(row: dict[str, str]) -> dict[str, str]:
    """A row's ``finetuned_digest`` (``task=hash`` words, ``store.finetuned_digest``) as task -> hash."""
    return dict(word.split("=", 1) for word in row.get("finetuned_digest", "").split())


def names_its_checkpoints(row: dict[str, str]) -> bool:
    """Whether a digested row names every checkpoint it merged: rows made before ``store.finetuned_digest`` named
    extra candidates name only their scored tasks' own, fewer words than their ``candidates``."""
    return len(digests(row)) >= int(row.get("candidates") or 0)


def current_finetunes(rows: list[dict[str, str]],
                      anchor: Callable[[dict[str, str]], bool] | None = None) -> list[dict[str, str]]:
    """The rows scored against each pool seed's latest fine-tunes, so that rows of a pool re-made on another
    machine are never compared with the old ones: a seed's checkpoint hashes are read from its rows newest first
    (a row that disagrees with a newer one on a task they share adds none), and a row is kept when its hashes are
    those; rows made before the column are kept only for a seed none of whose rows has one, and so is a scaling row
    whose digest names only its scored tasks' checkpoints (``names_its_checkpoints``: its extra ones are unknown)
    for a seed with a current row that names every checkpoint of a merge with extra ones. With ``anchor``, a
    seed's fine-tunes are those of its newest row that ``anchor`` accepts (the rows a table is about), so that a
    partial re-make of other methods does not hide them: rows made before the column are then kept where that row
    is one of them."""
    latest: dict[str, dict[str, str]] = {}
    anchored: set[str] = set()
    before_column: set[str] = set()  # seeds whose anchor row has no digest
    for row in reversed(rows):
        seed = row.get("pool_seed", "")
        if anchor is not None and seed not in anchored and anchor(row):
            anchored.add(seed)
            latest[seed] = digests(row)
            if not latest[seed]:
                before_column.add(seed)
    for row in reversed(rows):
        seed = row.get("pool_seed", "")
        known, found = latest.setdefault(seed, {}), digests(row)
        if seed not in before_column and all(known.get(task, digest) == digest for task, digest in found.items()):
            known.update(found)

    def matches(row: dict[str, str]) -> bool:
        seed = row.get("pool_seed", "")
        found, known = digests(row), latest[seed]
        if seed in before_column:
            return not found
        return found.items() <= known.items() if found else not known

    kept = [row for row in rows if matches(row)]
    extras_named = {row.get("pool_seed", "") for row in kept if digests(row)
                    and row.get("extra", "") not in ("", "0") and names_its_checkpoints(row)}
    return [row for row in kept
            if names_its_checkpoints(row) or not digests(row) or row.get("pool_seed", "") not in extras_named]


def _append(path: Path, row: dict[str, Any]) -> None:
    write_rows(path, read_rows(path) + [{k: _format(v) for k, v in row.items()}])


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Replace the CSV at ``path`` by ``rows`` (the union of their columns, in order of first appearance), atomically;
    the caller holds the file's lock (``locked``)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(r.get(c, "") for c in columns) + " |\n" for r in rows)


def mean_std(values: list[float]) -> str:
    """``"m ± s"`` with the sample standard deviation (``"m"`` alone for one value)."""
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def summary_rows(rows: list[dict[str, str]], key: str, over: str, columns: list[str],
                 label: Callable[[dict[str, str]], str] | None = None,
                 describe: tuple[str, Callable[[dict[str, str]], str]] | None = None) -> list[dict[str, str]]:
    """One row per value of ``key`` (``label(row)`` when given; in order of first appearance): the mean ±
    standard deviation of each column over the latest row of every value of ``over`` (a rerun replaces its
    earlier row), and ``n``. ``describe = (column, text)`` adds ``column`` = "v: text(row)" for each such row
    whose text is not empty (e.g. the hyper-parameters chosen for each seed), joined by "; "."""
    latest = latest_per(rows, label or (lambda row: row[key]), over)
    summary = []
    for name, by_over in latest.items():
        out = {key: name, "n": str(len(by_over))}
        for column in columns:
            values = [float(r[column]) for r in by_over.values() if r.get(column, "") != ""]
            out[column] = mean_std(values) if values else ""
        if describe:
            texts = ((value, describe[1](row)) for value, row in by_over.items())
            out[describe[0]] = "; ".join(f"{value}: {text}" for value, text in texts if text)
        summary.append(out)
    return summary


def latest_per(rows: list[dict[str, str]], label: Callable[[dict[str, str]], str], over: str
               ) -> dict[str, dict[str, dict[str, str]]]:
    """label -> value of ``over`` -> the latest row (a rerun replaces its earlier row); labels in order of first
    appearance."""
    latest: dict[str, dict[str, dict[str, str]]] = {}
    for row in rows:
        latest.setdefault(label(row), {})[row.get(over, "")] = row
    return latest


def pivot_table(rows: list[dict[str, str]], label: Callable[[dict[str, str]], str], column: str, value: str,
                over: str = "pool_seed") -> str:
    """Markdown: a line per ``label(row)`` (in order of first appearance), a column per value of ``column``
    (numeric order); each cell the mean ± std of ``value`` over the latest row of every ``over``."""
    cells: dict[str, dict[float, dict[str, float]]] = {}
    for row in rows:
        if row.get(value, "") != "":
            cells.setdefault(label(row), {}).setdefault(float(row[column]), {})[row.get(over, "")] = float(row[value])
    keys = sorted({k for by_column in cells.values() for k in by_column})
    names = [f"{column} {k:g}" for k in keys]
    lines = [{"": name, **{n: mean_std(list(by_column[k].values())) if k in by_column else ""
                           for n, k in zip(names, keys)}} for name, by_column in cells.items()]
    return markdown_table(lines, ["", *names])


def rebuild_markdown(csv_path: str | Path, md_path: str | Path, title: str, first: list[str],
                     summary: tuple[str, str, list[str]] | None = None,
                     label: Callable[[dict[str, str]], str] | None = None,
                     describe: tuple[str, Callable[[dict[str, str]], str]] | None = None,
                     sections: Callable[[list[dict[str, str]]], list[tuple[str, str]]] | None = None) -> None:
    """Write ``md_path`` from the CSV: columns ``first`` (when present) lead, the rest follow. With
    ``summary = (key, over, columns)`` a table of mean ± std over ``over`` per ``key`` (or ``label(row)``)
    comes first; ``sections(rows)`` adds (heading, markdown) sections after it. Both read only the rows of each
    seed's latest fine-tunes (``current_finetunes``); the table of all rows follows."""
    rows = read_rows(Path(csv_path))
    columns = list(dict.fromkeys([c for c in first if rows and c in rows[0]] + list(rows[0] if rows else [])))
    text = f"# {title}\n\nRebuilt from `{Path(csv_path).name}`.\n\n"
    current = current_finetunes(rows)
    if summary and rows:
        key, over, stats = summary
        text += (f"## Mean ± standard deviation over `{over}` (latest row of each, of its latest fine-tunes)\n\n"
                 + markdown_table(summary_rows(current, key, over, stats, label, describe),
                                  [key, "n", *stats, *([describe[0]] if describe else [])])
                 + "\n")
    for heading, body in sections(current) if sections and rows else []:
        text += f"## {heading}\n\n{body}\n"
    text += "## All rows\n\n" if summary and rows else ""
    atomic_write_text(Path(md_path), text + markdown_table(rows, columns))
