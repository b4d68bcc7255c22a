"""The data-driven methods on a discriminative pool: ``merging/`` supplies each merge, ``ClassifierObjective``
the tasks (proxy split for FW-Merging / RegMean / Fisher, unlabelled test inputs for AdaMerging) and the
validation split scores greedy soup. Each returns the merged body (tensors by name) and a JSON-able log."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from merging.candidates import CheckpointSource
from merging.errors import MergeError
from merging.methods.adamerging import AdaMergingParams, adamerging
from merging.methods.fisher import FisherParams, fisher_merge
from merging.methods.frank_wolfe import FrankWolfeParams, frank_wolfe_merge
from merging.methods.frank_wolfe_soft import FrankWolfeSoftParams, frank_wolfe_soft_merge
from merging.methods.greedy_soup import greedy_soup
from merging.methods.regmean import RegMeanParams, regmean_merge
from merging.metrics import normalized_score

from .evaluate import Evaluator
from .finetune import base_folder, checkpoint_folder
from .models import read_body
from .objective import ClassifierObjective
from .pool import PoolConfig

Tensors = dict[str, torch.Tensor]
Merge = Callable[[ClassifierObjective, Tensors, dict[str, Any], Evaluator], tuple[Tensors, dict[str, Any]]]


def _bodies(objective: ClassifierObjective) -> list[Tensors]:
    return [objective.body(task) for task in objective.tasks]


def _streamed(merge: Callable[..., Any], schema: type, objective: ClassifierObjective, base: Tensors,
              params: dict[str, Any]) -> tuple[Tensors, dict[str, Any]]:
    """Run a Frank-Wolfe variant with the task checkpoints as candidates streamed tensor by tensor."""
    sources = {task: CheckpointSource(checkpoint_folder(objective.pool, task, objective.seed), list(base))
               for task in objective.tasks}
    try:
        result = merge(objective, base, sources, schema.model_validate(params), progress=True)
    finally:
        for source in sources.values():
            source.close()
    history = [{k: v for k, v in step.items() if k not in ("choices", "scores")} for step in result.history]
    return result.theta, {"history": history, "final_objective": result.final_objective}


def _frank_wolfe(objective: ClassifierObjective, base: Tensors, params: dict[str, Any], _: Evaluator
                 ) -> tuple[Tensors, dict[str, Any]]:
    return _streamed(frank_wolfe_merge, FrankWolfeParams, objective, base, params)


def _frank_wolfe_soft(objective: ClassifierObjective, base: Tensors, params: dict[str, Any], _: Evaluator
                      ) -> tuple[Tensors, dict[str, Any]]:
    return _streamed(frank_wolfe_soft_merge, FrankWolfeSoftParams, objective, base, params)


def _regmean(objective: ClassifierObjective, base: Tensors, params: dict[str, Any], _: Evaluator
             ) -> tuple[Tensors, dict[str, Any]]:
    return regmean_merge(objective, _bodies(objective), RegMeanParams.model_validate(params)), {}


def _fisher(objective: ClassifierObjective, base: Tensors, params: dict[str, Any], _: Evaluator
            ) -> tuple[Tensors, dict[str, Any]]:
    return fisher_merge(objective, _bodies(objective), FisherParams.model_validate(params)), {}


def _adamerging(objective: ClassifierObjective, base: Tensors, params: dict[str, Any], _: Evaluator
                ) -> tuple[Tensors, dict[str, Any]]:
    merged, history = adamerging(objective, base, _bodies(objective), AdaMergingParams.model_validate(params))
    return merged, {"entropy_first": history.entropy[0], "entropy_last": history.entropy[-1],
                    "lambdas": history.lambdas.tolist(), "skipped": history.skipped}


def _greedy_soup(objective: ClassifierObjective, base: Tensors, params: dict[str, Any], validation: Evaluator
                 ) -> tuple[Tensors, dict[str, Any]]:
    if params:
        raise MergeError(f"greedy_soup takes no parameters, got {sorted(params)}")
    reference = validation.finetuned()

    def score(body: Mapping[str, torch.Tensor]) -> float:  # held-out = the validation split, never test
        return normalized_score(validation.with_tensors(objective.complete(body), objective.own), reference, objective.tasks)

    result = greedy_soup(_bodies(objective), score)
    return result.params, {"members": [objective.tasks[i] for i in result.members],
                           "validation_soup": result.soup_score}


DATA_DRIVEN: dict[str, Merge] = {"frank_wolfe": _frank_wolfe, "frank_wolfe_soft": _frank_wolfe_soft,
                                 "regmean": _regmean, "fisher": _fisher,
                                 "adamerging": _adamerging, "greedy_soup": _greedy_soup}


def merge_data_driven(pool: PoolConfig, method: str, params: dict[str, Any], own: list[str], validation: Evaluator
                      ) -> tuple[Tensors, dict[str, Any]]:
    """The merged body of ``method`` on the pool's checkpoints of the fine-tuning seed ``validation`` evaluates
    (``own``: extra per-task tensor patterns, e.g. unmerged biases), with its buffers, and the method's log."""
    objective = ClassifierObjective(pool, validation.seed, own)
    base = read_body(base_folder(pool), objective.mergeable())
    merged, log = DATA_DRIVEN[method](objective, base, params, validation)
    return objective.complete(merged), log
