"""Frank-Wolfe variants judged on our rows against a criterion fixed before their runs (configs/fw_variants.yaml,
issue 19: one FW variant above the best data-free merge, flat under irrelevant checkpoints, not falling as relevant
ones join, at flat memory).

A variant is a method with fixed command-line flags (often ``--preset NAME``) and the hypothesis it tests. Its rows
come from the ordinary runners with those flags (the table prints each command):

  all tasks     run_<method> FLAGS                               outs/<pool>/results.csv
  irrelevance   SIZES="first last" run_irrelevance FLAGS         outs/<pool>_irrelevance/results.csv
  relevance     SIZES="first last" run_relevance_tasks FLAGS     outs/<pool>_relevance_tasks/results.csv

The criteria (means over the fine-tuning seeds both compared series have; latest row per seed among the rows of
the fine-tunes of the variant's newest row of that seed, ``results.current_finetunes`` with it as the anchor, so
that re-made rows of other methods on newer fine-tunes neither hide a variant's series nor mix with it):

  above    all-task score ≥ the best data-free merge's (its configured row) + ``margin`` normalised points
  flat     irrelevance: loses ≤ ``max_drop`` from the first point to the last
  rises    relevance: the last point's mean ≥ the first's
  memory   irrelevance: peak RSS at the last point ≤ ``max_rss_ratio`` × at the first

``irrelevance_flags`` for the pool's domain belong to the irrelevance protocol (``--statistics targets`` on the
BatchNorm vision pool, as in the claims): only irrelevance rows run with them are judged, as if without them.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from merging.benchmark.results import current_finetunes, markdown_table, read_rows
from merging.config import read_validated
from merging.io.atomic import atomic_write_text

from .claims import (
    RUNNERS,
    Row,
    Scores,
    as_flags,
    common_seeds,
    judged,
    mean_over,
    mean_std,
    overrides_of,
    pool_title,
    series,
    setup,
    under_protocol,
)
from .experiment import CONFIGS
from .pool import PoolConfig
from .scaling import extra_count

VARIANTS_FILE = CONFIGS / "fw_variants.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Criteria(_Strict):
    margin: float
    max_drop: float = Field(ge=0)
    max_rss_ratio: float = Field(gt=0)


class Variant(_Strict):
    name: str = Field(min_length=1)
    method: str = Field(min_length=1)
    flags: dict[str, Any] = {}
    hypothesis: str = Field(min_length=1)


Point = int | Literal["all"]


class VariantsFile(_Strict):
    criteria: Criteria
    irrelevance: list[Point] = Field(min_length=2, max_length=2)
    relevance: list[Point] = Field(min_length=2, max_length=2)
    data_free: list[str] = Field(min_length=1)
    irrelevance_flags: dict[str, dict[str, Any]] = {}  # domain -> flags every irrelevance row of its pools carries
    variants: list[Variant] = Field(min_length=1)


def load_variants(path: Path = VARIANTS_FILE) -> VariantsFile:
    return read_validated(path, VariantsFile, "variants file")


def _is(row: Row, method: str, flags: dict[str, Any]) -> bool:
    return row["method"] == method and overrides_of(row) == flags


def variant_name(row: Row, spec: VariantsFile) -> str | None:
    """The name of the variant of ``spec`` whose method and flags ``row`` ran with, if any."""
    return next((v.name for v in spec.variants if _is(row, v.method, v.flags)), None)


class _Rows:
    """The pool's three result files, the scaling ones restricted to ``targets``, and the protocols' points."""

    def __init__(self, spec: VariantsFile, pool: PoolConfig, targets: list[str], outs: Path, experiment: str
                 ) -> None:
        wanted = " ".join(targets)
        self.every_task = read_rows(outs / experiment / "results.csv")
        self.flags = {"irrelevance": spec.irrelevance_flags.get(pool.domain.name, {}), "relevance_tasks": {}}
        self.scaled = {}
        for protocol, flags in self.flags.items():
            rows = read_rows(outs / f"{experiment}_{protocol}" / "results.csv")
            self.scaled[protocol] = under_protocol([r for r in rows if r.get("targets", "") in ("", wanted)], flags)
        self.points = {protocol: [extra_count(pool, targets, protocol, str(k)) for k in points]
                       for protocol, points in (("irrelevance", spec.irrelevance),
                                                ("relevance_tasks", spec.relevance))}

    def all_tasks(self, keep: functools.partial) -> list[Row]:
        """The all-task rows of the fine-tunes of each seed's newest row that ``keep`` (a variant) accepts."""
        return current_finetunes(self.every_task, anchor=keep)

    def pair(self, protocol: str, keep: functools.partial, column: str = "normalized") -> tuple[Scores, Scores]:
        """The variant's first and last point of ``protocol``, per seed on the fine-tunes of its newest row."""
        first, last = self.points[protocol]
        rows = current_finetunes(self.scaled[protocol], anchor=keep)
        return series(rows, keep, first, column), series(rows, keep, last, column)


def _above(rows: _Rows, spec: VariantsFile, keep: functools.partial) -> tuple[str, str]:
    every_task = rows.all_tasks(keep)
    mine = series(every_task, keep, None)
    configured = {m: functools.partial(_is, method=m, flags={}) for m in spec.data_free}
    free = {m: found for m, keep_m in configured.items() if (found := series(every_task, keep_m, None))}
    seeds = common_seeds(mine, *free.values()) if free else []
    if not seeds:
        return "—", "not run"
    best = max(free, key=lambda m: mean_over(free[m], seeds))
    margin = mean_over(mine, seeds) - mean_over(free[best], seeds)
    verdict = "yes" if margin >= spec.criteria.margin else "no"
    short = f" of {len(mine)}, the seeds every data-free merge of the list has" if len(seeds) < len(mine) else ""
    return f"{mean_std(mine, seeds)} ({judged(margin)} over {best}; n = {len(seeds)}{short})", verdict


def _change(first: Scores, last: Scores) -> tuple[list[str], float]:
    seeds = common_seeds(first, last)
    return seeds, (mean_over(last, seeds) - mean_over(first, seeds)) if seeds else 0.0


def judge_variant(rows: _Rows, spec: VariantsFile, variant: Variant) -> dict[str, str]:
    """One line of the table: each criterion's numbers and verdict (yes / no / not run)."""
    keep = functools.partial(_is, method=variant.method, flags=variant.flags)
    above, above_verdict = _above(rows, spec, keep)
    first, last = rows.pair("irrelevance", keep)
    seeds, change = _change(first, last)
    flat = f"{mean_std(first, seeds)} → {mean_std(last, seeds)} ({judged(change)})" if seeds else "—"
    flat_verdict = ("yes" if -change <= spec.criteria.max_drop else "no") if seeds else "not run"
    rss_first, rss_last = rows.pair("irrelevance", keep, "peak_rss_gb")
    rss_seeds = common_seeds(rss_first, rss_last)
    ratio = mean_over(rss_last, rss_seeds) / mean_over(rss_first, rss_seeds) if rss_seeds else 0.0
    memory = (f"{mean_over(rss_first, rss_seeds):.2f} → {mean_over(rss_last, rss_seeds):.2f} GB (×{ratio:.2f})"
              if rss_seeds else "—")
    rel_first, rel_last = rows.pair("relevance_tasks", keep)
    rel_seeds, rise = _change(rel_first, rel_last)
    relevance = f"{mean_std(rel_first, rel_seeds)} → {mean_std(rel_last, rel_seeds)} ({judged(rise)})" if rel_seeds \
        else "—"
    verdicts = [above_verdict, flat_verdict, ("yes" if rise >= 0 else "no") if rel_seeds else "not run",
                ("yes" if ratio <= spec.criteria.max_rss_ratio else "no") if rss_seeds else "not run"]
    flags = as_flags(variant.flags)
    sizes = {p: " ".join(map(str, rows.points[p])) for p in rows.points}
    commands = [f"run_{variant.method} {flags}".strip(),
                *(" ".join(f for f in (f'SIZES="{sizes[p]}" METHODS={variant.method} {RUNNERS[p]}', flags,
                                       as_flags(rows.flags[p])) if f) for p in sizes)]
    return {"variant": f"**{variant.name}**: {' '.join(variant.hypothesis.split())}",
            "all tasks (vs best data-free)": above, "irrelevance first → last": flat,
            "relevance first → last": relevance, "peak RSS first → last": memory,
            "above / flat / rises / memory": " / ".join(verdicts),
            "all four?": "yes" if all(v == "yes" for v in verdicts) else
            ("not run" if "not run" in verdicts else "no"),
            "commands": "<br>".join(f"`{c}`" for c in commands)}


def write_variants(pool: PoolConfig, pool_path: str, targets: list[str], outs: Path = Path("outs"),
                   spec: VariantsFile | None = None, experiment: str | None = None) -> str:
    """Judge every variant of ``spec`` (default: configs/fw_variants.yaml) on the rows of ``experiment`` (default:
    the pool's name) under ``outs``; write outs/<experiment>_fw_variants.md; the table with its preamble."""
    spec, experiment = spec or load_variants(), experiment or pool.name
    rows = _Rows(spec, pool, targets, outs, experiment)
    lines = [judge_variant(rows, spec, variant) for variant in spec.variants]
    c, protocol = spec.criteria, as_flags(rows.flags["irrelevance"])
    text = (f"Rebuilt by `run_variants` (configs/fw_variants.yaml) from the rows under {outs}/. Criteria, fixed "
            f"before the runs: all-task score ≥ the best data-free merge + {c.margin:g}; loses ≤ {c.max_drop:g} "
            f"from {rows.points['irrelevance'][0]} to {rows.points['irrelevance'][1]} irrelevant checkpoints"
            f"{f' (every irrelevance row with {protocol})' if protocol else ''}; does "
            f"not fall from {rows.points['relevance_tasks'][0]} to {rows.points['relevance_tasks'][1]} other tasks' "
            f"checkpoints (relevance by tasks); peak RSS ratio ≤ {c.max_rss_ratio:g}. Every command runs after "
            f"`{setup(pool, pool_path, targets, experiment)}`.\n\n{markdown_table(lines, list(lines[0]))}")
    atomic_write_text(outs / f"{experiment}_fw_variants.md",
                      f"# Frank-Wolfe variants on pool {pool_title(pool, experiment)}\n\n{text}")
    return text
