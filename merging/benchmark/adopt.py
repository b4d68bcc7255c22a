"""Rows made before the ``finetuned_digest`` column, given the digest of the fine-tunes they were scored against
where re-made rows prove which those were (``python -m <domain> adopt``, ``run_adopt``).

A table compares a seed's rows only when they name the same fine-tunes (``results.current_finetunes``); a row
without a digest counts only while its seed has none, so the first digested row of a seed hides every older one.
When a pool is fine-tuned again and rounds the same way, the older rows are still valid, and this says so on
evidence, not on trust: an older row and a digested row of the same seed and run (method, overrides, point) with
the same normalised mean and the same score on each of the digested row's tasks *verify* those tasks' checkpoints.
The older rows of a seed in one results file are adopted together or not at all (adopting some would hide the
rest), and only when every task each of them scores is verified and no two of them run the same but score
differently (a sign of two fine-tunings before the column). A scaling row that merged checkpoints it does not
score (extra ones) is adopted only with the digest of a re-made row that names them all and reproduces it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from typing import get_args

from ..errors import MergeError
from .pool import PoolConfig
from .results import digests, locked, names_its_checkpoints, read_rows, write_rows
from .scaling import Claim

RUN_KEY = ("pool_seed", "method", "overrides", "claim", "extra", "targets", "candidates")
Rows = list[dict[str, str]]


def verified_tasks(rows: Rows) -> dict[str, dict[str, str]]:
    """Per pool seed, task -> hash for the tasks of every digested row that an undigested row of the same seed and
    run reproduces (the same normalised mean and the same score on each of its tasks). Two reproductions that name
    different hashes for a task are a MergeError: the older rows cannot be placed."""
    older = [row for row in rows if not digests(row)]
    verified: dict[str, dict[str, str]] = {}
    for row in rows:
        found = digests(row)
        if not found or not any(_reproduces(row, old, _scored(row, found)) for old in older):
            continue
        seed = verified.setdefault(row.get("pool_seed", ""), {})
        if any(seed.get(task, digest) != digest for task, digest in found.items()):
            raise MergeError(f"pool seed {row.get('pool_seed', '')}: reproduced rows name different fine-tunes "
                             f"({found} against {seed}); nothing was adopted")
        seed.update(found)
    return verified


def _scored(row: dict[str, str], keys: Iterable[str]) -> list[str]:
    """The tasks among ``keys`` (a digest's checkpoints) that ``row`` has a score for."""
    return [key for key in keys if row.get(key, "") != ""]


def _twin(old: dict[str, str], tasks: list[str], rows: Rows) -> dict[str, str] | None:
    """A digested row of ``rows`` that names every checkpoint it merged and reproduces ``old`` (same run, same
    scores on ``tasks``): the evidence for the extra checkpoints of a scaling row, which it does not score."""
    return next((row for row in rows if digests(row) and names_its_checkpoints(row)
                 and _reproduces(row, old, tasks)), None)


def _run(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(row.get(key, "") for key in RUN_KEY)


def _scores(row: dict[str, str], tasks: list[str]) -> tuple[str, ...]:
    return tuple(row.get(column, "") for column in ("normalized", *tasks))


def _reproduces(row: dict[str, str], old: dict[str, str], tasks: list[str]) -> bool:
    scores = _scores(row, tasks)
    return _run(row) == _run(old) and scores == _scores(old, tasks) and "" not in scores


def adopt(files: dict[str, Rows], tasks: list[str]) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """Give the undigested rows of each (file, pool seed) the digest of the tasks they score (the columns of
    ``tasks`` they have a value in), in place, when every such task is verified (``verified_tasks`` over the rows
    of every file); returns (file, row) for each adopted row and, for each group left as it was, why."""
    verified = verified_tasks([row for rows in files.values() for row in rows])
    adopted, left = [], []
    for name, rows in files.items():
        for seed in dict.fromkeys(row.get("pool_seed", "") for row in rows if not digests(row)):
            older = [row for row in rows if row.get("pool_seed", "") == seed and not digests(row)]
            known = verified.get(seed, {})
            scored = [_scored(row, tasks) for row in older]
            unverified = sorted({task for row_tasks in scored for task in row_tasks if task not in known})
            with_extra = [(row, row_tasks) for row, row_tasks in zip(older, scored)
                          if int(row.get("candidates") or 0) > len(row_tasks)]
            twins = {id(row): _twin(row, row_tasks, rows) for row, row_tasks in with_extra}
            unmatched = sorted({row.get("extra", "") for row, _ in with_extra if twins[id(row)] is None})
            why = (f"no re-made row reproduces {', '.join(unverified)}" if unverified
                   else "a row has no task score" if not all(scored)
                   else f"no re-made row that names every checkpoint reproduces the rows at extra "
                        f"{', '.join(unmatched)} (their extra checkpoints are unknown)" if unmatched
                   else "two of them run the same and score differently (made on different fine-tunes)"
                   if _disagree(older, tasks) else "")
            if why:
                left.append(f"{name}: pool seed {seed}, {len(older)} older rows kept as they are: {why}")
                continue
            for row, row_tasks in zip(older, scored):
                twin = twins.get(id(row))
                row["finetuned_digest"] = twin["finetuned_digest"] if twin else " ".join(
                    f"{task}={known[task]}" for task in row_tasks)
                adopted.append((name, row))
    return adopted, left


def _disagree(rows: Rows, tasks: list[str]) -> bool:
    """Whether two of ``rows`` share a run (``RUN_KEY``) but not their scores: a rerun on other fine-tunes."""
    scores: dict[tuple[str, ...], tuple[str, ...]] = {}
    return any(scores.setdefault(_run(row), _scores(row, tasks)) != _scores(row, tasks) for row in rows)


def adopt_files(paths: list[Path], tasks: list[str]) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """``adopt`` over the results files ``paths`` (missing ones skipped), rewriting each changed file atomically
    while every file's lock is held."""
    present = [path for path in dict.fromkeys(paths) if path.is_file()]
    if not present:
        raise MergeError(f"no results file at {', '.join(map(str, paths))}")
    with contextlib.ExitStack() as stack:
        for path in sorted(present):
            stack.enter_context(locked(path))
        files = {str(path): read_rows(path) for path in present}
        adopted, left = adopt(files, tasks)
        for name in dict.fromkeys(name for name, _ in adopted):
            write_rows(Path(name), files[name])
    return adopted, left


def adopt_pool(pool: PoolConfig, outs: Path = Path("outs")) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """``adopt_files`` over the pool's all-task results and those of each scaling claim, on its tasks."""
    folders = [pool.name, *(f"{pool.name}_{claim}" for claim in get_args(Claim))]
    return adopt_files([outs / folder / "results.csv" for folder in folders], pool.tasks)
