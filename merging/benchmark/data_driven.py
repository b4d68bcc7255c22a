"""The data-driven methods on a benchmark pool: ``merging/methods`` supplies each merge, ``TaskObjective``
the tasks (proxy split for FW-Merging / RegMean / Fisher, unlabelled test inputs for AdaMerging) and the
validation split scores greedy soup. Each returns the merged body (tensors by name) and a JSON-able log."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merging.batchnorm import average_statistics
from merging.candidates import CheckpointSource
from merging.errors import MergeError
from merging.methods.adamerging import AdaMergingParams, adamerging
from merging.methods.base import NoParams, Params
from merging.methods.fisher import FisherParams, fisher_merge
from merging.methods.frank_wolfe import FrankWolfeParams, frank_wolfe_merge
from merging.methods.frank_wolfe_soft import FrankWolfeSoftParams, frank_wolfe_soft_merge
from merging.methods.greedy_soup import greedy_soup
from merging.methods.regmean import RegMeanParams, regmean_merge
from merging.metrics import normalized_score

from .body import read_body
from .evaluate import Evaluator
from .objective import TaskObjective
from .pool import PoolConfig
from .store import base_folder, checkpoint_folder

Tensors = dict[str, torch.Tensor]
Candidate = tuple[str, int]  # (task, fine-tuning seed): one checkpoint of the pool


@dataclass
class MergeInputs:
    """What a data-driven merge gets: the objective over the target tasks, the base model, the candidate
    checkpoints (by default the targets' own; scaling experiments add others), the method's parameters and
    the validation evaluator (held-out scores for greedy soup)."""

    objective: TaskObjective
    base: Tensors
    candidates: list[Candidate]
    params: dict[str, Any]
    validation: Evaluator

    def folder(self, candidate: Candidate) -> Path:
        return checkpoint_folder(self.objective.pool, *candidate)

    def bodies(self) -> list[Tensors]:
        return [read_body(self.folder(c), list(self.base)) for c in self.candidates]

    def paired(self) -> TaskObjective:
        """An objective over each candidate's own task (RegMean / Fisher statistics of candidate i are taken
        on task i; an extra seed of a task uses the template head of the objective's seed)."""
        tasks = list(dict.fromkeys(task for task, _ in self.candidates))
        return self.objective.with_tasks(tasks)


def _label(candidate: Candidate) -> str:
    return f"{candidate[0]}-seed{candidate[1]}"


def _streamed(merge: Callable[..., Any], schema: type, inputs: MergeInputs) -> Any:
    """Run a Frank-Wolfe variant with the candidates streamed tensor by tensor from their checkpoints; its
    result."""
    sources = {_label(c): CheckpointSource(inputs.folder(c), list(inputs.base)) for c in inputs.candidates}
    try:
        return merge(inputs.objective, inputs.base, sources, schema.model_validate(inputs.params), progress=True)
    finally:
        for source in sources.values():
            source.close()


def _fw_log(result: Any) -> dict[str, Any]:
    """A Frank-Wolfe variant's log: its history (less the per-layer choices and scores) and final objective."""
    history = [{k: v for k, v in step.items() if k not in ("choices", "scores")} for step in result.history]
    return {"history": history, "final_objective": result.final_objective}


def _frank_wolfe(inputs: MergeInputs) -> tuple[Tensors, dict[str, Any]]:
    result = _streamed(frank_wolfe_merge, FrankWolfeParams, inputs)
    init = {"init": result.init_log} if result.init_log else {}  # init: adamerging's trace
    return result.theta, {**_fw_log(result), **init}


def _frank_wolfe_soft(inputs: MergeInputs) -> tuple[Tensors, dict[str, Any]]:
    result = _streamed(frank_wolfe_soft_merge, FrankWolfeSoftParams, inputs)
    return result.theta, _fw_log(result)


def _regmean(inputs: MergeInputs) -> tuple[Tensors, dict[str, Any]]:
    return regmean_merge(inputs.paired(), inputs.bodies(), RegMeanParams.model_validate(inputs.params),
                         tasks=[task for task, _ in inputs.candidates]), {}


def _fisher(inputs: MergeInputs) -> tuple[Tensors, dict[str, Any]]:
    return fisher_merge(inputs.paired(), inputs.bodies(), FisherParams.model_validate(inputs.params),
                        tasks=[task for task, _ in inputs.candidates]), {}


def _adamerging(inputs: MergeInputs) -> tuple[Tensors, dict[str, Any]]:
    merged, history = adamerging(inputs.objective, inputs.base, inputs.bodies(),
                                 AdaMergingParams.model_validate(inputs.params))
    return merged, {"entropy_first": history.entropy[0], "entropy_last": history.entropy[-1],
                    "lambdas": history.lambdas.tolist(), "skipped": history.skipped}


def _greedy_soup(inputs: MergeInputs) -> tuple[Tensors, dict[str, Any]]:
    if inputs.params:
        raise MergeError(f"greedy_soup takes no parameters, got {sorted(inputs.params)}")
    objective, validation = inputs.objective, inputs.validation
    reference = validation.finetuned()

    def score(body: Mapping[str, torch.Tensor]) -> float:  # held-out = the validation split, never test
        return normalized_score(validation.with_tensors(objective.complete(body), objective.own), reference,
                                objective.tasks)

    result = greedy_soup(inputs.bodies(), score)
    return result.params, {"members": [_label(inputs.candidates[i]) for i in result.members],
                           "validation_soup": result.soup_score}


DATA_DRIVEN: dict[str, Callable[[MergeInputs], tuple[Tensors, dict[str, Any]]]] = {
    "frank_wolfe": _frank_wolfe, "frank_wolfe_soft": _frank_wolfe_soft, "regmean": _regmean, "fisher": _fisher,
    "adamerging": _adamerging, "greedy_soup": _greedy_soup}
PARAMS: dict[str, type[Params]] = {  # each method's parameter schema (checked before any work)
    "frank_wolfe": FrankWolfeParams, "frank_wolfe_soft": FrankWolfeSoftParams, "regmean": RegMeanParams,
    "fisher": FisherParams, "adamerging": AdaMergingParams, "greedy_soup": NoParams}


def merge_data_driven(pool: PoolConfig, method: str, params: dict[str, Any], own: list[str], validation: Evaluator,
                      candidates: list[Candidate] | None = None, tasks: list[str] | None = None
                      ) -> tuple[Tensors, dict[str, Any]]:
    """The merged body of ``method`` for ``tasks`` (default: the pool's) from ``candidates`` (default: each
    task's checkpoint of the fine-tuning seed ``validation`` evaluates; ``own``: extra per-task tensor
    patterns, e.g. unmerged biases), with its buffers, and the method's log."""
    objective = TaskObjective(pool, validation.seed, own, tasks=tasks)
    base = read_body(base_folder(pool), objective.mergeable())
    candidates = candidates or [(task, validation.seed) for task in pool.tasks]
    statistics = validation.statistic_names()
    if statistics:  # forward passes during the merge use the candidates' mean statistics, as the evaluation will
        objective.use_statistics(average_statistics([read_body(checkpoint_folder(pool, *c), statistics)
                                                     for c in candidates]))
    merged, log = DATA_DRIVEN[method](MergeInputs(objective, base, candidates, params, validation))
    return objective.complete(merged), log
