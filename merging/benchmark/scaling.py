"""The FW-Merging paper's scaling claims on a benchmark pool (any domain) (arXiv 2503.12649, Sec. 4):

1. ``irrelevance`` robustness: fixed target tasks, their own checkpoints plus k checkpoints of *other* tasks,
   scored on the targets (the paper's protocol; with k = every other task it is the paper's main 20-model
   setting);
2. ``relevance`` by seeds (ours): the targets' checkpoints plus k extra checkpoints of the *target* tasks
   (other fine-tuning seeds), scored on the targets;
3. ``relevance_tasks``, the paper's relevance protocol: the pool grows from the targets' checkpoints by k
   checkpoints of other tasks (one each, the row's seed), every checkpoint's task is a target of the merge
   (a data-driven method uses the data of those tasks), and the merge is scored on EVERY task of the pool
   (hmarkc/fusion_bench eval_scripts/fw4_adamerging.sh: ``tasks=[]``, ``max_num_models`` 4..20, scored on
   TALL20);
4. memory: peak RSS of one merge process against the number of candidates.

Each point is one ``run_experiment`` row (normalised by the scored tasks' own fine-tuned checkpoints)
appended to ``outs/<pool>_<claim>/results.csv`` with ``extra`` = k; ``plot`` draws the normalised score (or
peak RSS) against k per method. Hyper-parameters follow the method configs (chosen on validation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from merging.benchmark.results import current_finetunes, read_rows
from merging.errors import MergeError

from .data_driven import Candidate
from .experiment import variant
from .pool import PoolConfig

Claim = Literal["irrelevance", "relevance", "relevance_tasks"]


def extra_candidates(pool: PoolConfig, targets: list[str], claim: Claim, k: int, seed: int) -> list[Candidate]:
    """The first ``k`` extra checkpoints for ``claim``, seed-major so that every task contributes before any
    task repeats: irrelevance — the non-target tasks of the pool at seeds ``seed``, the next seeds …;
    relevance — the target tasks at the pool's other fine-tuning seeds (then further seeds);
    relevance_tasks — the first k non-target tasks at ``seed`` (each task once)."""
    others = [t for t in pool.tasks if t not in targets]
    tasks = targets if claim == "relevance" else others
    if not tasks:
        raise MergeError(f"no {'target' if claim == 'relevance' else 'non-target'} tasks to draw extra "
                         f"checkpoints from (pool tasks {pool.tasks}, targets {targets})")
    if claim == "relevance_tasks":
        if k > len(others):
            raise MergeError(f"--extra {k}: relevance_tasks adds each other task once; pool '{pool.name}' has "
                             f"{len(others)} tasks besides the targets")
        return [(task, seed) for task in others[:k]]
    seeds = [seed, *(s for s in pool.finetune.seeds if s != seed)] if claim == "irrelevance" else \
        [s for s in pool.finetune.seeds if s != seed]
    while len(seeds) * len(tasks) < k:  # more seeds than the pool lists: fine-tuned on demand
        seeds.append(max([seed, *seeds]) + 1)
    return [(task, s) for s in seeds for task in tasks][:k]


def extra_count(pool: PoolConfig, targets: list[str], claim: Claim, value: str) -> int:
    """``--extra``: a whole number ≥ 0, or ``all`` — every other task of the pool once (irrelevance: the paper's
    main setting, all checkpoints scored on the targets; relevance_tasks: every task of the pool a target)."""
    if value == "all" and claim != "relevance":
        return len([t for t in pool.tasks if t not in targets])
    if not value.isdigit():
        expected = "a number of extra checkpoints >= 0" + ("" if claim == "relevance" else " or 'all'")
        raise MergeError(f"--extra {value}: expected {expected}")
    return int(value)


def target_pool(pool: PoolConfig, targets: list[str]) -> PoolConfig:
    unknown = [t for t in targets if t not in pool.tasks]
    if unknown:
        raise MergeError(f"target task(s) {unknown} are not in pool '{pool.name}' ({pool.tasks})")
    return pool.model_copy(update={"tasks": list(targets)})


def plot(csv: Path, out: Path, y: str = "normalized") -> Path:
    """``y`` (normalised score, or peak_rss_gb) per method and overrides (one line per variant, as the summary
    of results.md), mean over fine-tuning seeds, against the number of
    extra checkpoints (scores) or of checkpoints in the pool (memory: targets' own + extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = current_finetunes(read_rows(csv))
    if not rows:
        raise MergeError(f"{csv}: no rows to plot")
    x = "candidates" if y == "peak_rss_gb" else "extra"
    figure, axis = plt.subplots(figsize=(6, 4))
    lines: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        lines.setdefault(variant(r), {}).setdefault(int(r[x]), []).append(float(r[y]))
    for line, points in lines.items():
        xs = sorted(points)
        axis.plot(xs, [sum(points[k]) / len(points[k]) for k in xs], marker="o", label=line)
    claim = rows[0].get("claim", "")
    axis.set_xlabel("checkpoints in the pool" if x == "candidates" else f"extra checkpoints ({claim})")
    axis.set_ylabel({"normalized": "normalised score (%)", "peak_rss_gb": "peak RSS (GB)"}.get(y, y))
    if x == "candidates":
        axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return save_figure(figure, out)


def save_figure(figure: Any, out: Path) -> Path:
    """Write a matplotlib ``figure`` to the PNG ``out`` (its folder made when missing) through a temporary file,
    then close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(out)
    return out
