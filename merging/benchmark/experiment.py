"""Rows of an experiment: a reference (majority, probe, pretrained, finetuned) or a merge method whose
hyper-parameters are chosen on the validation split, scored on the test split, one row per fine-tuning seed
of the pool, appended to ``outs/<experiment>/results.csv``; ``results.md`` is rebuilt with the mean and
spread over seeds."""
from __future__ import annotations

import functools
import itertools
import json
import logging
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from merging.batchnorm import MODES
from merging.benchmark import grid_cache
from merging.benchmark.metrics import normalized_score
from merging.benchmark.results import append_row, pivot_table, rebuild_markdown
from merging.config import MergeConfig, check_parameters, read_validated, validate_config
from merging.errors import MergeError
from merging.io.atomic import atomic_write_text
from merging.methods.base import RoutedModel
from merging.registry import get_method, known_methods
from merging.resources import CONFIGS  # methods/<method>.yaml, <domain>/methods/<method>.yaml
from merging.run import git_sha, merge_tensors, run_stamp

from .data_driven import Candidate, merge_data_driven, merge_routed
from .evaluate import Evaluator
from .pool import PoolConfig
from .store import (
    announce_missing,
    base_folder,
    checkpoint_folder,
    finetune,
    finetuned_digest,
    missing_checkpoints,
)

logger = logging.getLogger(__name__)
STATISTICS = (*MODES, "targets")  # --statistics: merging/batchnorm.py's modes, or the scored tasks' mean

REFERENCES = ("majority", "probe", "pretrained", "finetuned")
SEED_FREE = ("majority", "probe")  # use no fine-tuned checkpoint: one row, whatever the pool's seeds
ALIASES = {"scaling": "lambda"}  # run_ties --scaling 0.7 (the FW-Merging scripts' word for λ)
# --merge-biases false leaves every bias unmerged (each task keeps its own), as the official code does


def runnable_methods() -> list[str]:
    """The registered methods a benchmark pool of full checkpoints runs: per-tensor, data-driven and routed ones."""
    return [*known_methods("per_tensor"), *known_methods("data_driven"), *known_methods("routed")]


class Preset(BaseModel):
    """Named settings of a method (``--preset NAME``): the parameters a published run used (or a configuration
    under study) and where they come from, applied over the method YAML's parameters and under the command
    line's; ``search`` gives its own validation grid, which replaces the method YAML's for those keys."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    parameters: dict[str, Any]
    search: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}

    @model_validator(mode="after")
    def _apart(self) -> Preset:
        both = sorted(set(self.parameters) & set(self.search))
        if both:
            raise ValueError(f"{both} both fixed (parameters) and searched (search)")
        return self


class MethodFile(BaseModel):
    """A method YAML: fixed parameters, the validation grid (a non-empty list of values per parameter), extra
    exclude regexes and named presets; the values themselves are checked against the method's schema
    (``check_method``)."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] | None = None
    search: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = None
    exclude: list[str] | None = None
    presets: dict[str, Preset] | None = None


def method_file(domain: str, method: str) -> Path:
    """configs/<domain>/methods/<method>.yaml where a domain has its own, else configs/methods/<method>.yaml
    (which may not exist: the method then has no fixed parameters and no grid)."""
    path = CONFIGS / domain / "methods" / f"{method}.yaml"
    return path if path.is_file() else CONFIGS / "methods" / f"{method}.yaml"


@functools.cache
def _method_yaml(domain: str, method: str) -> dict[str, Any]:
    """The method's parameters and validation grid (``method_file``); read once per process (every summary
    rebuild asks again)."""
    path = method_file(domain, method)
    return read_validated(path, MethodFile, "method file").model_dump(exclude_none=True) if path.is_file() else {}


def method_config(domain: str, method: str, overrides: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, list], list[str]]:
    """(fixed parameters, search grid, extra exclude regexes) from configs/<domain>/methods/<method>.yaml; a
    ``preset`` override applies that preset's parameters, and any other override fixes a parameter (over the
    preset's); a fixed parameter leaves the grid."""
    raw = _method_yaml(domain, method)
    overrides = {ALIASES.get(k, k): v for k, v in overrides.items()}
    exclude = list(raw.get("exclude") or [])
    if overrides.pop("merge_biases", True) is False:  # the official FW-Merging code keeps biases unmerged
        exclude.append(r"\.bias$")
    chosen = _preset(domain, method, overrides.pop("preset", None))
    preset = dict(chosen.get("parameters") or {})
    params = {**(raw.get("parameters") or {}), **preset, **overrides}
    overrides = {**preset, **overrides}
    searched = {**(raw.get("search") or {}), **(chosen.get("search") or {})}
    grid = {k: v for k, v in searched.items() if k not in overrides}
    return params, grid, exclude


def _option(name: str, field: Any, fixed: dict[str, Any], grid: dict[str, list]) -> str:
    """``--name`` with the value a run uses: the method YAML's grid or fixed value, else the schema default."""
    flag = "--" + name.replace("_", "-")
    if name in grid:
        return f"{flag} {{{', '.join(map(str, grid[name]))}}}"
    if name in fixed:
        return f"{flag} {fixed[name]}"
    return f"{flag} REQUIRED" if field.is_required() else f"{flag} {field.get_default(call_default_factory=True)}"


def parameters_help(domain: str, references: tuple[str, ...] = REFERENCES, names: list[str] | None = None,
                    note: str | None = None) -> str:
    """Every method a pool of ``domain`` runs (default: ``runnable_methods``), with each parameter as ``--name
    value`` (a ``{grid}`` is searched on validation; other values are the method YAML's or the schema's default),
    and the presets; then ``note`` (default: the options every benchmark method takes)."""
    lines = ["references (no parameters): " + ", ".join(references), "",
             "methods (override any parameter with --name value; a grid is then fixed to that value):"]
    for name in runnable_methods() if names is None else names:
        spec = get_method(name)
        try:
            raw = _method_yaml(domain, name)
        except MergeError as err:  # help still lists the others; a run of this method reports the same error
            lines += [f"  {name} ({spec.kind}, {spec.paper})", f"      unreadable method YAML: {err}"]
            continue
        fixed, grid = raw.get("parameters") or {}, raw.get("search") or {}
        fields = {field.alias or key: field for key, field in spec.Params.model_fields.items()}
        options = [_option(key, field, fixed, grid) for key, field in fields.items()]
        if spec.ModelParams is not None:  # a per-model key given as a method parameter is every model's default
            options += [_option(key, field, fixed, grid) + " (per-model)"
                        for key, field in spec.ModelParams.model_fields.items() if key not in fields]
        lines.append(f"  {name} ({spec.kind}, {spec.paper})")
        lines += textwrap.wrap("  ".join(options) or "(no parameters)", 110, initial_indent=" " * 6,
                               subsequent_indent=" " * 6, break_on_hyphens=False)
        if raw.get("presets"):
            lines.append("      --preset " + " | ".join(raw["presets"]))
    lines += ["", *textwrap.wrap(note or (
        "every method: --statistics average|reestimate|targets (BatchNorm pools: the candidates' mean running "
        "statistics, re-estimated on training images, or the scored tasks' own checkpoints' mean); --merge-biases "
        "false (each task keeps its own biases, as the official FW-Merging code); --scaling is --lambda (the FW-Merging scripts' word)"), 114)]
    return "\n".join(lines)


def grid_points(params: dict[str, Any], grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every point of the validation grid: ``params`` with one value of each grid key (one point without a grid)."""
    return [{**params, **dict(zip(grid, values))} for values in itertools.product(*grid.values())]


def best_on_validation(points: list[dict[str, Any]], score: Callable[[dict[str, Any]], tuple[float, Any]],
                       method: str, metric: str, progress: bool = True) -> tuple[dict[str, Any], float, Any]:
    """(point, validation score, what ``score`` returned with it) of the best point, the first on a tie; each
    point's ``metric`` is logged as it comes when there is more than one."""
    best: tuple[dict[str, Any], float, Any] | None = None
    for point in points:
        value, payload = score(point)
        if progress and len(points) > 1:
            logger.info("  %s %s: %s %.2f", method, point, metric, value)
        if best is None or value > best[1]:
            best = (point, value, payload)
    assert best is not None, "a grid has at least one point"
    return best


def preset_parameters(domain: str, method: str, name: Any) -> dict[str, Any]:
    """The parameters of preset ``name`` of the method YAML (none for None); an unknown name lists the known."""
    return dict(_preset(domain, method, name).get("parameters") or {})


def _preset(domain: str, method: str, name: Any) -> dict[str, Any]:
    """Preset ``name`` of the method YAML as a mapping ({} for None); an unknown name lists the known."""
    if name is None:
        return {}
    presets = _method_yaml(domain, method).get("presets") or {}
    if name not in presets:
        raise MergeError(f"--preset {name!r}: {method_file(domain, method)} has "
                         + (f"the presets {', '.join(presets)}" if presets else "no presets"))
    return presets[name]


def check_method_config(domain: str, method: str, overrides: dict[str, Any], schemas: tuple[type[BaseModel], ...],
                        per_tensor: bool = False) -> None:
    """``merging.config.check_parameters`` on every point of ``method_config``'s validation grid (the method YAML's
    fixed parameters and the command line's, with one value of each grid key); an error names the method YAML
    the values also come from."""
    params, grid, _ = method_config(domain, method, overrides)
    try:
        for values in itertools.product(*grid.values()):
            check_parameters(method, {**params, **dict(zip(grid, values))}, schemas, per_tensor)
    except MergeError as err:
        path = method_file(domain, method)
        raise MergeError(f"{err} (parameters from {path}{' and the command line' if overrides else ''})"
                         if path.is_file() else str(err)) from None


def check_method(pool: PoolConfig, method: str, overrides: dict[str, Any]) -> None:
    """Refuse, before any work, an unknown method (the known ones are listed), parameters given to a
    reference, a --statistics mode the pool's models lack (or a routed merge cannot use), a --merge-biases that
    is not true or false, and any parameter (command line, method YAML, each point of its grid) that the method's
    schema rejects."""
    known = [*REFERENCES, *runnable_methods()]
    if method not in known:
        raise MergeError(f"unknown method '{method}'; known: {', '.join(known)}")
    if method in REFERENCES:
        if overrides:
            raise MergeError(f"'{method}' is a reference and takes no parameters, got "
                             f"{', '.join('--' + k.replace('_', '-') for k in overrides)}")
        return
    overrides = dict(overrides)
    statistics = overrides.pop("statistics", "average")  # --statistics reestimate: BatchNorm pools
    if statistics != "average" and not pool.domain.statistics:
        raise MergeError(f"--statistics {statistics}: the {pool.domain.name} domain's models have no running "
                         f"statistics")
    if statistics not in STATISTICS:
        raise MergeError(f"--statistics {statistics!r}: expected one of {', '.join(STATISTICS)}")
    if not isinstance(overrides.get("merge_biases", True), bool):
        raise MergeError(f"--merge-biases {overrides['merge_biases']!r}: expected true or false")
    spec = get_method(method)
    if spec.kind == "routed" and statistics != "average":
        raise MergeError(f"--statistics {statistics}: a routed merge ('{method}') keeps the candidates' average "
                         "running statistics, the ones its router is trained under")
    check_method_config(pool.domain.name, method, overrides, spec.schemas(), per_tensor=spec.kind == "per_tensor")


def merge_config(pool: PoolConfig, candidates: list[Candidate], method: str, params: dict[str, Any],
                 exclude: list[str], seed: int) -> MergeConfig:
    """The merge config of the pool's checkpoints ``candidates`` ((task, fine-tuning seed) pairs): heads, running
    statistics and ``exclude`` copied from the base; ``seed`` is the merge's own (e.g. DARE masks)."""
    return validate_config({"method": method, "base": str(base_folder(pool)),
                            "models": [{"model": str(checkpoint_folder(pool, *c))} for c in candidates],
                            "parameters": params, "exclude": [*pool.head, *pool.domain.statistics, *exclude],
                            "seed": seed})


def statistics_sources(pool: PoolConfig, candidates: list[Candidate], statistics: str, seed: int) -> list[Candidate]:
    """The checkpoints whose mean running statistics a merge runs with (data-driven) and is filled with: its
    candidates, or for ``targets`` the scored tasks' own at the row's seed (in a scaling protocol the targets, so
    that extra checkpoints reach the merge through its weights only, as in a network without BatchNorm)."""
    return [(task, seed) for task in pool.tasks] if statistics == "targets" else list(candidates)


def merged_body(pool: PoolConfig, validation: Evaluator, method: str, params: dict[str, Any], exclude: list[str],
                seed: int, candidates: list[Candidate], statistics: str = "average",
                objective_tasks: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The merged body of ``method`` with ``params`` from ``candidates`` and the method's log: data-free
    methods run through the merge engine into memory (``merging.run.merge_tensors``), data-driven ones on the data of
    ``objective_tasks`` (default: the pool's tasks; merging/benchmark/data_driven.py); the domain then fills
    its running statistics as ``statistics`` says (``Domain.finish``; ``targets``: the mean of
    ``statistics_sources``)."""
    sources = statistics_sources(pool, candidates, statistics, validation.seed)
    if get_method(method).kind == "data_driven":
        body, log = merge_data_driven(pool, method, params, exclude, validation, candidates, objective_tasks, seed,
                                      statistics_from=sources)
    else:
        merged = merge_tensors(merge_config(pool, candidates, method, params, exclude, seed))
        names = validation.body_names(exclude)
        missing = [name for name in names if name not in merged]
        if missing:
            raise MergeError(f"the {method} merge lacks the body tensor(s) {missing[:5]} of the task models")
        body, log = {name: merged[name] for name in names}, {}
    names = validation.statistic_names()
    if names:
        mode = "average" if statistics == "targets" else statistics
        body = pool.domain.finish(pool, body, [checkpoint_folder(pool, *c) for c in sources], names, mode)
    return body, log


@dataclass(frozen=True)
class ValidationMerges:
    """One row's merge of ``candidates`` at any point of its validation grid, scored on validation; a data-driven
    merge's points are kept on disk (``grid_cache``), so a grid stopped half-way, or shared out between
    processes (``run --grid-points``), is not merged again."""

    pool: PoolConfig
    validation: Evaluator
    method: str
    exclude: list[str]
    seed: int
    candidates: list[Candidate]
    statistics: str
    objective_tasks: list[str] | None
    checkpoints: str | None  # store.finetuned_digest of the candidates; None: nothing is stored
    reused: list[dict[str, Any]] = field(default_factory=list)  # the stored points read back: point, cost

    def entry(self, point: dict[str, Any]) -> grid_cache.GridPoint | None:
        """The cache entry of ``point`` (None for a merge whose points are not stored)."""
        if self.checkpoints is None:
            return None
        return grid_cache.GridPoint(self.pool, self.method, point, self.exclude, self.seed, self.statistics,
                                    self.objective_tasks, self.validation.seed, self.checkpoints)

    def score(self, point: dict[str, Any]) -> tuple[float, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """(validation normalised score, (merged body, log)) of ``point``: stored (then its cost joins
        ``reused``), else merged (then stored)."""
        entry = self.entry(point)
        if entry is not None and (stored := grid_cache.load(entry)) is not None:
            self.reused.append({"point": point, "seconds": stored.seconds, "peak_rss_gb": stored.peak_rss_gb})
            return stored.validation_normalized, (stored.body, stored.log)
        started = time.perf_counter()
        body, log = merged_body(self.pool, self.validation, self.method, point, self.exclude, self.seed,
                                self.candidates, self.statistics, self.objective_tasks)
        value = normalized_score(self.validation.with_tensors(body, self.exclude), self.validation.finetuned(),
                                 self.pool.tasks)
        if entry is not None:
            cost = run_stamp(started)
            grid_cache.store(entry, grid_cache.Stored(value, body, log, cost["seconds"], cost["peak_rss_gb"]))
        return value, (body, log)


def validation_merges(pool: PoolConfig, pool_seed: int, method: str, overrides: dict[str, Any], seed: int,
                      candidates: list[Candidate] | None, objective_tasks: list[str] | None,
                      checkpoints: str | None = None) -> tuple[ValidationMerges, dict[str, Any], dict[str, list]]:
    """(the row's ``ValidationMerges``, its fixed parameters, its validation grid) for a merge ``method``
    (not a reference) at fine-tuning seed ``pool_seed``; ``candidates`` default to the pool's tasks' checkpoints
    at that seed, ``checkpoints`` (their ``finetuned_digest``) is computed when not given."""
    overrides = dict(overrides)
    statistics = overrides.pop("statistics", "average")  # --statistics reestimate: BatchNorm pools
    params, grid, exclude = method_config(pool.domain.name, method, overrides)
    validation = Evaluator(pool, "validation", pool_seed)
    candidates = candidates or [(task, pool_seed) for task in pool.tasks]
    if get_method(method).kind != "data_driven":
        checkpoints = None  # only a data-driven merge's points are stored
    elif checkpoints is None:
        checkpoints = finetuned_digest(pool, pool_seed, candidates)
    merges = ValidationMerges(pool, validation, method, exclude, seed, candidates, statistics, objective_tasks,
                              checkpoints)
    return merges, params, grid


def run_method(pool: PoolConfig, test: Evaluator, method: str, overrides: dict[str, Any], seed: int,
               progress: bool = True, candidates: list[Candidate] | None = None,
               objective_tasks: list[str] | None = None, checkpoints: str | None = None
               ) -> tuple[dict[str, float], dict[str, Any], float | None, dict[str, Any]]:
    """Test scores of one method merging ``candidates`` (default: the checkpoints ``test`` evaluates, one per
    task, of its fine-tuning seed; a data-driven method uses the data of ``objective_tasks``, default the
    pool's tasks), its final hyper-parameters, the validation normalised score (the best of the grid; recorded
    for every merge, so that variants run with other fixed hyper-parameters can be compared on validation too)
    and the method's log. A data-driven merge's stored grid points are used, then removed; the log's
    ``grid_points_reused`` lists those read back, with the seconds and peak RSS that making each took."""
    check_method(pool, method, overrides)
    if method == "majority":
        return test.majority(), {}, None, {}
    if method == "probe":
        return test.probe(), {}, None, {}
    if method == "finetuned":
        return test.finetuned(), {}, None, {}
    if method == "pretrained":
        return test.with_body(base_folder(pool)), {}, None, {}
    merges, params, grid = validation_merges(pool, test.seed, method, overrides, seed, candidates, objective_tasks,
                                             checkpoints)
    if get_method(method).kind == "routed":  # its shared body already holds the candidates' average statistics
        return _run_routed(pool, merges.validation, test, method, params, grid, merges.exclude, seed,
                           merges.candidates, progress, objective_tasks)
    points = grid_points(params, grid)
    best, best_val, (body, log) = best_on_validation(points, merges.score, method, "validation normalised", progress)
    scores = test.with_tensors(body, merges.exclude)
    grid_cache.forget([entry for point in points if (entry := merges.entry(point)) is not None])
    return scores, best, best_val, {**log, "grid_points_reused": merges.reused} if merges.reused else log


def store_grid_points(pool: PoolConfig, pool_seed: int, method: str, overrides: dict[str, Any], seed: int,
                      indices: list[int], candidates: list[Candidate] | None = None,
                      objective_tasks: list[str] | None = None) -> list[tuple[dict[str, Any], float]]:
    """Merge and store (``grid_cache``) the validation grid points ``indices`` of a data-driven ``method``'s row
    (as ``run_method`` would make it), for a later run of the whole grid; (point, validation score) of each."""
    merges, params, grid = validation_merges(pool, pool_seed, method, overrides, seed, candidates, objective_tasks)
    points = grid_points(params, grid)
    return [(points[i], merges.score(points[i])[0]) for i in indices]


def check_grid_indices(domain: str, method: str, overrides: dict[str, Any], indices: list[int]) -> None:
    """Refuse ``--grid-points`` for a method whose points are not stored (only data-driven merges' are) or an
    index outside its validation grid (whose points are listed)."""
    if method in REFERENCES or get_method(method).kind != "data_driven":
        raise MergeError(f"--grid-points: only a data-driven merge's grid points are stored; '{method}' is not one")
    params, grid, _ = method_config(domain, method, {k: v for k, v in overrides.items() if k != "statistics"})
    points = grid_points(params, grid)
    bad = [i for i in indices if not 0 <= i < len(points)]
    if bad:
        listed = "; ".join(f"{i}: " + ", ".join(f"{k} {point[k]}" for k in grid) for i, point in enumerate(points))
        raise MergeError(f"--grid-points {' '.join(map(str, bad))}: the validation grid of '{method}' "
                         f"({method_file(domain, method)}) has {len(points)} point(s), "
                         f"0 to {len(points) - 1}" + (f" ({listed})" if grid else ""))


def _run_routed(pool: PoolConfig, validation: Evaluator, test: Evaluator, method: str, params: dict[str, Any],
                grid: dict[str, list], exclude: list[str], seed: int, candidates: list[Candidate], progress: bool,
                objective_tasks: list[str] | None) -> tuple[dict[str, float], dict[str, Any], float, dict[str, Any]]:
    """``run_method`` for a routed merge: each grid point's routed model (its shared body's running statistics
    the candidates' average, which its router was trained under) scored input by input on validation, the best
    one on test; its log gains how the router treated each split's inputs."""

    def score(point: dict[str, Any]) -> tuple[float, tuple[RoutedModel, dict[str, Any]]]:
        routed = merge_routed(pool, method, point, exclude, validation, candidates, objective_tasks, seed)
        scores, routing = validation.with_routed(routed, exclude)
        return normalized_score(scores, validation.finetuned(), pool.tasks), (routed, routing)

    best, best_val, (routed, routing) = best_on_validation(grid_points(params, grid), score, method,
                                                           "validation normalised", progress)
    scores, test_routing = test.with_routed(routed, exclude)
    return scores, best, best_val, {**routed.log, "routing": {"validation": routing, "test": test_routing}}


def variant(row: dict[str, str]) -> str:
    """A summary line per method and command-line overrides: seeds of one configuration are averaged, a run
    with other fixed hyper-parameters (``run_frank_wolfe --oracle linear``) gets its own line."""
    return f"{row['method']} {row['overrides']}" if row.get("overrides") else row["method"]


def point(row: dict[str, str]) -> str:
    """The summary line of a row: its ``variant``, and for a scaling row its number of extra checkpoints."""
    return f"{variant(row)} [extra {row['extra']}]" if row.get("extra", "") != "" else variant(row)


def claim_tables(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    """A scaling claim's two views: the score per number of extra checkpoints, peak RSS per pool size."""
    if not any(row.get("extra", "") != "" for row in rows):
        return []
    return [("Normalised score by extra checkpoints", pivot_table(rows, variant, "extra", "normalized")),
            ("Peak RSS (GB) by checkpoints in the pool", pivot_table(rows, variant, "candidates", "peak_rss_gb"))]


def chosen(domain: str, row: dict[str, str]) -> str:
    """The hyper-parameters the validation search chose for ``row``: its method config's grid keys, less the
    ones fixed on the command line ("lambda 0.5"; empty for references and fixed runs)."""
    if row["method"] in REFERENCES or not row.get("params"):
        return ""
    _, grid, _ = method_config(domain, row["method"], json.loads(row["overrides"]) if row.get("overrides") else {})
    params = json.loads(row["params"])
    return ", ".join(f"{k} {params[k]}" for k in grid if k in params)


def _write_log(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def run_experiment(pool: PoolConfig, method: str, experiment: str, overrides: dict[str, Any],
                   pool_seeds: list[int] | None = None, seed: int = 0, progress: bool = True,
                   outs: Path = Path("outs"), extra: list[Candidate] = (),
                   columns: dict[str, Any] | None = None, own: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per fine-tuning seed in ``pool_seeds`` (default: all the pool's seeds), scored on the pool's
    tasks; missing checkpoints are fine-tuned first. ``seed`` is the merge's own seed (DARE masks). The
    candidates are the checkpoints of the tasks ``own`` (default: every pool task) at the row's seed, then the
    ``extra`` ones (scaling experiments); with ``own``, a data-driven method uses the data of the candidates'
    tasks only. ``columns`` are added to every row. The method and its parameters are checked first
    (``check_method``)."""
    check_method(pool, method, overrides)
    git_sha()  # the code version of the rows, read before the first (possibly long) run
    rows = []
    pool_seeds = pool_seeds or pool.finetune.seeds
    for pool_seed in pool_seeds[:1] if method in SEED_FREE else pool_seeds:
        started = time.perf_counter()
        candidates, objective_tasks = _row_inputs(pool, pool_seed, extra, own, progress)
        test = Evaluator(pool, "test", pool_seed)  # batched once for the method and the fine-tuned reference
        digest = finetuned_digest(pool, pool_seed, candidates)
        scores, params, validation, log = run_method(pool, test, method, overrides, seed, progress,
                                                     candidates if extra or own is not None else None,
                                                     objective_tasks, digest)
        row: dict[str, Any] = {
            "method": method, "normalized": normalized_score(scores, test.finetuned(), pool.tasks),
            "average": sum(scores.values()) / len(scores), **scores,
            "params": json.dumps(params, sort_keys=True),
            "overrides": json.dumps(overrides, sort_keys=True) if overrides else "",
            "validation_normalized": "" if validation is None else validation,
            **(columns or {}), "candidates": len(candidates),
            "pool_seed": pool_seed, "seed": seed, "pool": pool.name, **_row_stamp(started, log),
            "finetuned_digest": digest,
        }
        write_row(outs / experiment, pool.domain.name, pool.name, pool.tasks, row, log)
        rows.append(row)
    return rows


def _row_stamp(started: float, log: dict[str, Any]) -> dict[str, Any]:
    """``run_stamp(started)`` of a row, with the cost of the grid points it read back from the cache
    (``ValidationMerges.reused``) added: their seconds to the row's, and the row's peak RSS the largest of all."""
    stamp = run_stamp(started)
    reused = log.get("grid_points_reused", [])
    stamp["seconds"] = round(stamp["seconds"] + sum(point["seconds"] for point in reused), 1)
    stamp["peak_rss_gb"] = max([stamp["peak_rss_gb"], *(point["peak_rss_gb"] for point in reused)])
    return stamp


def _row_inputs(pool: PoolConfig, pool_seed: int, extra: list[Candidate], own: list[str] | None, progress: bool
                ) -> tuple[list[Candidate], list[str] | None]:
    """(the candidates, the objective tasks) of a row of ``run_experiment`` at
    fine-tuning seed ``pool_seed``, its missing checkpoints (candidates and scored tasks') fine-tuned first."""
    candidates = [(task, pool_seed) for task in (pool.tasks if own is None else own)] + list(extra)
    objective_tasks = None if own is None else list(dict.fromkeys(task for task, _ in candidates))
    needed = list(dict.fromkeys([*candidates, *((task, pool_seed) for task in pool.tasks)]))
    announce_missing(pool, missing_checkpoints(pool, needed))
    for task, task_seed in needed:
        finetune(pool, task, task_seed, progress=progress)  # the scored tasks' own: heads and reference
    return candidates, objective_tasks


def store_experiment_points(pool: PoolConfig, method: str, overrides: dict[str, Any], indices: list[int],
                            pool_seeds: list[int] | None = None, seed: int = 0, progress: bool = True,
                            extra: list[Candidate] = (), own: list[str] | None = None
                            ) -> list[dict[str, Any]]:
    """``run_experiment``'s rows' validation grid points ``indices``, merged and stored (``store_grid_points``)
    instead of the rows, so that processes can share a long grid out; what each stored point scored on
    validation, as a record per point and pool seed."""
    check_method(pool, method, overrides)
    check_grid_indices(pool.domain.name, method, overrides, indices)
    records = []
    for pool_seed in pool_seeds or pool.finetune.seeds:
        candidates, objective_tasks = _row_inputs(pool, pool_seed, list(extra), own, progress)
        for point, value in store_grid_points(pool, pool_seed, method, overrides, seed, indices, candidates,
                                              objective_tasks):
            records.append({"method": method, "point": point, "validation_normalized": value,
                            "pool_seed": pool_seed, "candidates": len(candidates), "stored": "grid point"})
    return records


def write_row(folder: Path, domain: str, pool_name: str, tasks: list[str], row: dict[str, Any],
              log: dict[str, Any] | None = None) -> None:
    """Append ``row`` (a method's or a reference's, scored on ``tasks``) to ``folder``/results.csv, its method's
    ``log`` to ``folder``/logs/, and rebuild ``folder``/results.md: the rows, then the mean and spread over
    pool seeds of each variant with the hyper-parameters chosen on validation, and a scaling claim's views."""
    if log:
        stem = f"{row['method']}-seed{row['pool_seed']}-{row['date'].replace(' ', 'T')}"
        taken = {p.name for p in (folder / "logs").glob(f"{stem}*.json")}
        name = next(n for i in itertools.count(1) if (n := f"{stem}{'' if i == 1 else f'-{i}'}.json") not in taken)
        _write_log(folder / "logs" / name, {"row": row, "log": log})  # a run within the same minute: -2, -3, …
    append_row(folder / "results.csv", row)
    rebuild_markdown(folder / "results.csv", folder / "results.md", f"{folder.name}: pool {pool_name}",
                     ["method", "normalized", "average", *tasks, "params", "pool_seed"],
                     summary=("method", "pool_seed", ["normalized", "average", *tasks, "seconds"]),
                     label=point, describe=("chosen on validation", functools.partial(chosen, domain)),
                     sections=claim_tables)
