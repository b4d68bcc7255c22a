"""Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022,
arXiv 2111.09832): each candidate's parameters are weighted, element by element, by its diagonal Fisher
information, the precision of a Laplace approximation of its posterior:

    θ = Σ_i λ_i (F_i + ε) ⊙ θ_i / Σ_i λ_i (F_i + ε)        (λ_i = 1 unless ``weights`` are given)

F_i is the diagonal Fisher of candidate i on task i's ``"proxy"`` examples (``merging.statistics.diagonal_fisher``):

* ``fisher: empirical`` (default) — F_i = (1/N) Σ_j (∂ log p(y_j|x_j)/∂θ)² with the true labels y_j, from
  per-example gradients of ``objective.loss`` (cross-entropy); for regression (MSE) the squared gradient of
  the loss.
* ``fisher: expected`` — F_i = (1/N) Σ_j Σ_c p(c|x_j) (∂ log p(c|x_j)/∂θ)², the paper's Fisher (an expectation
  over the model's own predictions, computed exactly over the classes as in the authors' code
  mmatena/model_merging); regression tasks fall back to the empirical rule.

ε (default 1e-8) is added to every F_i so the quotient is always defined. Fallback: where every F_i is 0 (a
parameter no proxy example moves, or candidates that fit their proxy data exactly under MSE), the formula
reduces to the λ-weighted average Σ λ_i θ_i / Σ λ_i (the uniform average without ``weights``).
``normalize: true`` first divides each F_i by its global L2 norm over all mergeable tensors (the default of
the authors' merging code and of FusionBench; off here to keep the paper's equation).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ..errors import MergeError
from ..objective import Objective
from ..registry import register_data_driven
from ..statistics import Tensors, check_candidates, diagonal_fisher, paired_tasks
from .base import DataDrivenInputs, DataDrivenResult, Params

PAPER = "https://arxiv.org/abs/2111.09832"


class FisherParams(Params):
    fisher: Literal["empirical", "expected"] = "empirical"
    epsilon: float = Field(1e-8, gt=0.0)  # added to every F_i (see the fallback above)
    weights: list[float] | None = None  # λ_i per candidate (the paper's merging coefficients)
    normalize: bool = False  # F_i / ‖F_i‖₂ over all tensors before merging


def fisher_weighted_average(candidates: Sequence[Tensors], fishers: Sequence[Tensors],
                            params: FisherParams | None = None) -> dict[str, Tensor]:
    """θ = Σ_i λ_i (F_i + ε) θ_i / Σ_i λ_i (F_i + ε) per element, computed in float64, returned in each
    tensor's dtype. candidates, fishers: n × {name: [*shape]}."""
    params = params or FisherParams()
    names = check_candidates(candidates)
    if len(fishers) != len(candidates):
        raise MergeError(f"{len(candidates)} candidate(s) but {len(fishers)} Fisher(s)")
    for i, fisher in enumerate(fishers):
        if set(fisher) != set(names):
            raise MergeError(f"Fisher {i} covers {sorted(fisher)}, the candidates hold {names}")
    lambdas = params.weights if params.weights is not None else [1.0] * len(candidates)
    if len(lambdas) != len(candidates) or any(w < 0 for w in lambdas) or sum(lambdas) <= 0:
        raise MergeError(f"weights {params.weights}: need {len(candidates)} non-negative weight(s) with a "
                         "positive sum, one per candidate")
    scale = [1.0] * len(candidates)
    if params.normalize:
        norms = [float(torch.sqrt(sum(f[n].double().square().sum() for n in names))) for f in fishers]
        if any(norm == 0 for norm in norms):
            raise MergeError(f"normalize: Fisher {norms.index(0)} is zero everywhere, it cannot be normalised")
        scale = [1.0 / norm for norm in norms]
    merged = {}
    for name in names:
        first = candidates[0][name]
        numerator = torch.zeros(first.shape, dtype=torch.float64, device=first.device)  # [*shape]
        denominator = torch.zeros_like(numerator)  # [*shape]
        for lam, s, candidate, fisher in zip(lambdas, scale, candidates, fishers):
            if tuple(fisher[name].shape) != tuple(numerator.shape):
                raise MergeError(f"Fisher of '{name}' has shape {tuple(fisher[name].shape)}, expected "
                                 f"{tuple(numerator.shape)}")
            weight = lam * (s * fisher[name].to(numerator) + params.epsilon)  # [*shape]
            numerator += weight * candidate[name].to(numerator)
            denominator += weight
        merged[name] = (numerator / denominator).to(first.dtype)
    return merged


def fisher_merge(objective: Objective, candidates: Sequence[Tensors], params: FisherParams | None = None,
                 *, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Merge ``candidates`` (candidate i fine-tuned on ``tasks[i]``, default ``objective.tasks``) by
    Fisher-weighted averaging, each F_i collected with candidate i on task i's proxy batches."""
    params = params or FisherParams()
    check_candidates(candidates)
    tasks = paired_tasks(objective, candidates, tasks)
    fishers = [diagonal_fisher(objective, c, t, kind=params.fisher) for c, t in zip(candidates, tasks)]
    return fisher_weighted_average(candidates, fishers, params)


def _merge(inputs: DataDrivenInputs) -> DataDrivenResult:
    objective, tasks = inputs.paired()
    return fisher_merge(objective, inputs.bodies(), inputs.params, tasks=tasks), {}


register_data_driven("fisher", PAPER, FisherParams, _merge,
                     data="proxy: labelled examples of each candidate's own task (diagonal Fisher information)")
