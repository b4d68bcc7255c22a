"""Greedy soup (Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", ICML 2022, arXiv 2203.05482, Recipe 1):

    sort the candidates by held-out score, best first (ties keep the given order);
    soup ← {best};  s* ← score(best)
    for each next candidate θ_j:   if score(avg(soup ∪ {θ_j})) ≥ s*:  soup ← soup ∪ {θ_j}, s* ← that score
    return avg(soup) = (1/|soup|) Σ_{i∈soup} θ_i

``score(params) -> float`` is supplied by the caller (higher is better; e.g. accuracy on a held-out split, or
minus a loss); it is called once per candidate and once per trial. Because a candidate joins only when the
score does not drop, the soup's score is never below the best single candidate's.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_data_driven
from ..statistics import Tensors, check_candidates, finite_or_error
from .base import DataDrivenInputs, DataDrivenResult, NoParams

PAPER = "https://arxiv.org/abs/2203.05482"


@dataclass(frozen=True)
class Trial:
    """Candidate ``candidate`` tried against a soup scoring ``before``: the enlarged soup scored ``score``."""

    candidate: int
    before: float
    score: float
    accepted: bool


@dataclass(frozen=True)
class GreedySoupResult:
    """``params``: the soup (uniform average of ``members``); ``members``: candidate indices in the order they
    joined; ``scores[i]``: candidate i's own held-out score; ``soup_score``: the soup's; ``trials``: every
    attempt after the first member, in order."""

    params: dict[str, Tensor]
    members: list[int]
    scores: list[float]
    soup_score: float
    trials: list[Trial]


def greedy_soup(candidates: Sequence[Tensors], score: Callable[[Mapping[str, Tensor]], float]
                ) -> GreedySoupResult:
    """Build the greedy soup of ``candidates`` (formula above) under the held-out ``score``."""
    names = check_candidates(candidates)
    scores = [finite_or_error(score(c), f"held-out score of candidate {i}") for i, c in enumerate(candidates)]
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])  # stable: ties keep the given order
    wide = {n: torch.promote_types(candidates[0][n].dtype, torch.float32) for n in names}
    members = [order[0]]
    total = {n: candidates[order[0]][n].to(wide[n]).clone() for n in names}  # Σ_{i∈soup} θ_i  [*shape]
    best = scores[order[0]]
    trials = []
    for j in order[1:]:
        trial_sum = {n: total[n] + candidates[j][n].to(wide[n]) for n in names}
        trial = {n: (trial_sum[n] / (len(members) + 1)).to(candidates[0][n].dtype) for n in names}
        value = finite_or_error(score(trial), f"held-out score of the soup {members + [j]}")
        accepted = value >= best
        trials.append(Trial(j, best, value, accepted))
        if accepted:
            members.append(j)
            total, best = trial_sum, value
    soup = {n: (total[n] / len(members)).to(candidates[0][n].dtype) for n in names}
    return GreedySoupResult(soup, members, scores, best, trials)


def _merge(inputs: DataDrivenInputs) -> DataDrivenResult:
    result = greedy_soup(inputs.bodies(), inputs.held_out_score())
    labels = list(inputs.candidates)
    return result.params, {"members": [labels[i] for i in result.members], "validation_soup": result.soup_score}


register_data_driven("greedy_soup", PAPER, NoParams, _merge,
                     data="validation: a held-out score of every candidate and every trial soup")
