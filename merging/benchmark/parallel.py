"""Independent jobs (fine-tuning runs, one per (task, seed)) run here or dealt to parallel worker processes on
one CPU machine.

On a small CPU machine, P one-thread processes finish a list of jobs sooner than one P-thread process (a small
model's matrix products do not scale over threads). ``deal`` balances the shares by a cost estimate, costliest
first to the least-loaded share (longest-processing-time-first: at most 4/3 of the best makespan), and
``run_workers`` runs one process per share, each with cores / P threads. ``run_jobs`` is the entry point of
the fine-tuning commands: a worker is the same command with ``--only TASK:SEED…`` (``parse_job``).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from ..errors import MergeError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Job = tuple[str, int]  # (task, seed)


def announce_missing(missing: Sequence[Job], into: Path, records: Iterable[Path]) -> None:
    """Say, before fine-tuning them, how many checkpoints a run lacks, where they go and, from the time each
    task took at another seed (``records``: the finished checkpoints' JSON records with ``task`` and
    ``seconds``), about how long they will take on one process."""
    if not missing:
        return
    took: dict[str, float] = {}
    for record in records:
        try:
            entry = json.loads(record.read_text())
            took.setdefault(str(entry["task"]), float(entry["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):  # an unreadable record only costs the estimate
            continue
    known = [took[t] for t, _ in missing if t in took]
    eta = (f"about {max(1, round(sum(known) / 60))} min on one process" + ("" if len(known) == len(missing) else
           f" for the {len(known)} tasks timed before")) if known else "no earlier timing to estimate from"
    logger.info("%d checkpoint(s) missing (%s): fine-tuning them first into %s, %s; `run_finetune` runs them in "
                "parallel", len(missing), ", ".join(f"{t}-seed{s}" for t, s in missing), into, eta)


def deal(items: Sequence[T], cost: Callable[[T], float], workers: int) -> list[list[T]]:
    """``items`` in at most ``workers`` non-empty shares: costliest first, each to the share with the least
    total cost so far."""
    if workers < 1:
        raise MergeError(f"workers={workers}: expected at least 1")
    shares: list[list[T]] = [[] for _ in range(min(workers, len(items)))]
    totals = [0.0] * len(shares)
    for weight, item in sorted(((cost(i), i) for i in items), key=lambda pair: pair[0], reverse=True):
        least = totals.index(min(totals))
        shares[least].append(item)
        totals[least] += weight
    return shares


def run_workers(command: Sequence[str], shares: Sequence[Sequence[str]]) -> None:
    """Run ``python command… share…`` once per share, all at once, each with cores / len(shares) OMP threads
    (at least 1); wait for all and raise MergeError naming the shares whose process failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, len(shares))))}
    running = [(share, subprocess.Popen([sys.executable, *command, *share], env=env)) for share in shares]
    failed = [list(share) for share, process in running if process.wait() != 0]
    if failed:
        raise MergeError(f"worker(s) failed for {failed}; rerun to resume (finished jobs are kept)")


def parse_job(text: str) -> Job:
    """'TASK:SEED' (a worker's ``--only`` argument) -> (task, seed)."""
    task, sep, seed = text.rpartition(":")
    if not sep or not task or not seed.isdigit():
        raise MergeError(f"--only {text!r}: expected TASK:SEED")
    return task, int(seed)


def check_jobs(jobs: Sequence[Job], tasks: Sequence[str], pool: str, source: str) -> None:
    """Refuse fine-tuning jobs (``source``: the flags they come from) whose task is not one of the pool's
    ``tasks`` or whose seed is negative, before anything is prepared or trained."""
    unknown = sorted({task for task, _ in jobs} - set(tasks))
    if unknown:
        raise MergeError(f"{source}: task(s) {unknown} are not tasks of pool '{pool}' ({', '.join(tasks)})")
    negative = sorted({seed for _, seed in jobs if seed < 0})
    if negative:
        raise MergeError(f"{source}: seed(s) {negative}; fine-tuning seeds are integers >= 0")


def run_jobs(jobs: Sequence[Job], run_one: Callable[[str, int], object], workers: int, command: Sequence[str],
             cost: Callable[[str], float]) -> None:
    """Run ``jobs`` here one by one (``run_one(task, seed)``) or, with ``workers`` > 1 and more than one job,
    dealt by the cost of their task (``cost(task)``, called once per task) to workers ``python command…
    TASK:SEED…``."""
    if workers <= 1 or len(jobs) <= 1:
        for task, seed in jobs:
            run_one(task, seed)
        return
    costs = {task: cost(task) for task in dict.fromkeys(task for task, _ in jobs)}
    shares = deal(jobs, lambda job: costs[job[0]], workers)
    run_workers(command, [[f"{task}:{seed}" for task, seed in share] for share in shares])
