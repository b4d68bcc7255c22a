"""Refresh the generated blocks of the documentation from the rows, so that its tables cannot drift from the data.

A generated block sits between two comments:

    <!-- generated: include outs/efficientnet_lite0_20tasks_claims.md -->
    … the file's text less its title line (a table a command wrote from rows, e.g. run_claims) …
    <!-- end generated -->

    <!-- generated: pivot outs/minilm_8tasks_irrelevance/results.csv extra normalized -->
    … one line per method (and its variant or command-line overrides), a column per value of ``extra``, each
    cell the mean ± std of ``normalized`` over fine-tuning seeds (merging/benchmark/results.py ``pivot_table``) …
    <!-- end generated -->

    <!-- generated: summary outs/efficientnet_lite0_20tasks/results.csv methods=ties,tsv_m normalized seconds -->
    … one line per method (and its variant or overrides; only those of ``methods=`` when given, in that order): n
    and the mean ± std of each column over fine-tuning seeds, the latest row of each (``summary_rows``) …
    <!-- end generated -->

    <!-- generated: leaderboard outs/efficientnet_lite0_20tasks_v2/results.csv top=8 -->
    … every merge ranked by its mean normalised score over seeds (the ``top`` first when given) and which one is
    best (merging/benchmark/leaderboard.py) …
    <!-- end generated -->

Every block names a row as the leaderboard does (``leaderboard.row_namer``): its method, then its Frank-Wolfe
variant's name from configs/fw_variants.yaml (``frank_wolfe_soft (soft_hull_scaled)``) or its other overrides as
command-line flags. Paths are relative to the repository root. A block whose source is missing keeps its text and
is reported.
``python -m merging.benchmark.docs [FILE …]`` (default: README.md and docs/**/*.md) rewrites the files in place.
"""
from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from merging.benchmark.results import current_finetunes, markdown_table, pivot_table, read_rows, summary_rows
from merging.errors import MergeError
from merging.io.atomic import atomic_write_text
from merging.logs import configure as configure_logging

from .leaderboard import leaderboard, row_namer
from .variants import load_variants

logger = logging.getLogger(__name__)
BLOCK = re.compile(r"(<!-- generated: (?P<directive>[^\n]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


@functools.cache
def _namer() -> Callable[[dict[str, str]], str]:
    """The leaderboard's row names (configs/fw_variants.yaml read once per run, whatever the number of blocks)."""
    return row_namer(load_variants())


def render(directive: str, root: Path, where: str) -> str | None:
    """The body of a block: its source's text, or None when the source does not exist."""
    kind, *args = directive.split() or [""]
    if kind == "include" and len(args) == 1:
        source = root / args[0]
        if not source.is_file():
            return None
        text = source.read_text()
        return text.partition("\n")[2].lstrip("\n") if text.startswith("# ") else text
    if kind == "pivot" and len(args) == 3:
        source, column, value = root / args[0], args[1], args[2]
        rows = current_finetunes(read_rows(source))
        return pivot_table(rows, _namer(), column, value) if rows else None
    if kind == "summary" and args:
        source, columns = root / args[0], args[1:]
        methods = columns.pop(0).removeprefix("methods=").split(",") if columns and columns[0].startswith(
            "methods=") else None
        rows = [row for row in current_finetunes(read_rows(source)) if methods is None or row["method"] in methods]
        if methods is not None:
            rows.sort(key=lambda row: methods.index(row["method"]))  # stable: seeds keep their order
        lines = summary_rows(rows, "method", "pool_seed", columns, label=_namer())
        return markdown_table(lines, ["method", "n", *columns]) if rows else None
    if kind == "leaderboard" and len(args) in (1, 2) and (len(args) == 1 or re.fullmatch(r"top=[1-9]\d*", args[1])):
        source = root / args[0]
        top = int(args[1].removeprefix("top=")) if len(args) == 2 else None
        return leaderboard(read_rows(source), _namer(), top) if source.is_file() else None
    raise MergeError(f"{where}: generated block '{directive}': expected 'include FILE', 'pivot CSV COLUMN VALUE', "
                     "'summary CSV [methods=A,B] COLUMN…' or 'leaderboard CSV [top=N]'")


def refresh(path: Path, root: Path) -> list[str]:
    """Rewrite every generated block of ``path`` from its source; the directives whose source is missing."""
    text = path.read_text()
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        body = render(match["directive"], root, str(path))
        if body is None:
            missing.append(match["directive"])
            return match[0]
        return f"{match[1]}{body.rstrip()}\n{match[4]}"

    new = BLOCK.sub(replace, text)
    if new != text:
        atomic_write_text(path, new)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m merging.benchmark.docs", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md, docs/**/*.md)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root the sources are under")
    args = parser.parse_args(argv)
    configure_logging()
    files = args.files or [args.root / "README.md", *sorted((args.root / "docs").rglob("*.md"))]
    try:
        for path in files:
            for directive in refresh(path, args.root):
                logger.warning("%s: kept the block '%s' as it is (its source is missing)", path, directive)
    except (MergeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
