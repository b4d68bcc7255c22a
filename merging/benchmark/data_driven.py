"""The data-driven methods (merging/registry.py, kind ``data_driven``) on a benchmark pool: ``TaskObjective``
supplies the tasks (proxy split for FW-Merging / RegMean / Fisher, unlabelled test inputs or training batches for
AdaMerging), the pool's checkpoints the candidates, and the validation split the held-out score of greedy soup."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import torch

from merging.batchnorm import average_statistics
from merging.benchmark.metrics import normalized_score
from merging.io.candidates import CheckpointSource
from merging.methods.base import DataDrivenInputs, RoutedModel
from merging.registry import get_method

from .body import read_body
from .evaluate import Evaluator
from .objective import TaskObjective
from .pool import PoolConfig
from .store import base_folder, checkpoint_folder

Tensors = dict[str, torch.Tensor]
Candidate = tuple[str, int]  # (task, fine-tuning seed): one checkpoint of the pool


def _label(candidate: Candidate) -> str:
    return f"{candidate[0]}-seed{candidate[1]}"


def merge_data_driven(pool: PoolConfig, method: str, params: dict[str, Any], own: list[str], validation: Evaluator,
                      candidates: list[Candidate] | None = None, tasks: list[str] | None = None, seed: int = 0,
                      statistics_from: list[Candidate] | None = None) -> tuple[Tensors, dict[str, Any]]:
    """The merged body of ``method`` for ``tasks`` (default: the pool's) from ``candidates`` (default: each
    task's checkpoint of the fine-tuning seed ``validation`` evaluates; ``own``: extra per-task tensor
    patterns, e.g. unmerged biases), with its buffers, and the method's log. ``seed`` (the row's merge seed) is
    the method's ``seed`` parameter (its random draws) unless the parameters set one. The forward passes use the
    mean running statistics of ``statistics_from`` (default: the candidates)."""
    objective, (merged, log) = _run(pool, method, "data_driven", params, own, validation, candidates, tasks, seed,
                                    statistics_from)
    return objective.complete(merged), log


def merge_routed(pool: PoolConfig, method: str, params: dict[str, Any], own: list[str], validation: Evaluator,
                 candidates: list[Candidate] | None = None, tasks: list[str] | None = None, seed: int = 0
                 ) -> RoutedModel:
    """The routed model of ``method`` (kind ``routed``) from ``candidates`` (as ``merge_data_driven``), its shared
    body completed with the buffers (and the candidates' average running statistics, if any)."""
    objective, routed = _run(pool, method, "routed", params, own, validation, candidates, tasks, seed)
    return dataclasses.replace(routed, shared=objective.complete(routed.shared))


def _run(pool: PoolConfig, method: str, kind: str, params: dict[str, Any], own: list[str], validation: Evaluator,
         candidates: list[Candidate] | None, tasks: list[str] | None, seed: int,
         statistics_from: list[Candidate] | None = None) -> tuple[TaskObjective, Any]:
    """The objective and what ``method``'s implementation returns on the pool's ``DataDrivenInputs``."""
    objective = TaskObjective(pool, validation.seed, own, tasks=tasks)
    base = read_body(base_folder(pool), objective.mergeable())
    candidates = candidates or [(task, validation.seed) for task in pool.tasks]
    statistics = validation.statistic_names()
    if statistics:  # forward passes during the merge use the candidates' mean statistics, as the evaluation will
        objective.use_statistics(average_statistics([read_body(checkpoint_folder(pool, *c), statistics)
                                                     for c in statistics_from or candidates]))
    spec = get_method(method, kind)
    reference = functools.cache(validation.finetuned)  # the fine-tuned checkpoints' validation scores

    def score(body: Mapping[str, torch.Tensor]) -> float:  # held-out = the validation split, never test
        return normalized_score(validation.with_tensors(objective.complete(body), objective.own), reference(),
                                objective.tasks)

    if "seed" in spec.Params.model_fields:
        params = {"seed": seed, **params}
    validated = spec.Params.model_validate(params)
    candidate_objective = objective.with_tasks(list(dict.fromkeys(task for task, _ in candidates)))
    with contextlib.ExitStack() as opened:  # every source is closed, also when a later one fails to open
        sources = {_label(c): opened.enter_context(CheckpointSource(checkpoint_folder(pool, *c), list(base)))
                   for c in candidates}
        return objective, spec.implementation(DataDrivenInputs(
            objective, base, sources, validated, candidate_tasks=[task for task, _ in candidates],
            candidate_objective=candidate_objective, score=score))
