"""TIES-Merging (Yadav et al., "Resolving interference when merging models", NeurIPS 2023,
arXiv 2306.01708, Sec. 3 / Alg. 1):

    τ_i = θ_i − θ_base
    τ̂_i = trim(τ_i): keep the top-k magnitudes, k = ⌊d_i · numel⌋ (``scope``: per tensor, or over the
          whole model's task vector — the paper trims per task vector, mergekit and peft per tensor)
    γ = sgn(Σ_i w_i τ̂_i)  (``elect: mass``)  or  sgn(Σ_i sgn(w_i τ̂_i))  (``elect: count``), 0 -> +1
    τ_m = Σ_{i∈A} w_i τ̂_i / Σ_{i∈A} w_i,  A = {i : sgn(w_i τ̂_i) = γ}   (disjoint mean)
    θ = θ_base + λ · τ_m

The exact k-th largest magnitude comes from two streaming passes (``merging.topk``: a histogram of the
float32 bit patterns, then the members of the bin that holds the threshold), so a tensor never has to be
held whole; ``scope: model`` uses finer bins to keep the second pass small.
With unit weights this equals ``peft.utils.merge_utils.ties``; mergekit's ``ties`` is the same formula.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..registry import register
from ..tensor_ops import disjoint_merge, elect_sign, prune_magnitude, task_vectors
from ..topk import BinMembers, bin_histogram, bin_members, locate_bin, threshold_from_members
from .base import Chunk, Method, Params


class TiesModelParams(Params):
    weight: float = 1.0
    density: float | None = Field(None, gt=0, le=1)


class TiesParams(Params):
    density: float = Field(gt=0, le=1)
    scale: float = Field(1.0, alias="lambda")
    scope: Literal["tensor", "model"] = "tensor"
    elect: Literal["mass", "count"] = "mass"
    normalize: bool = True


@register("ties", paper="https://arxiv.org/abs/2306.01708")
class Ties(Method):
    Params = TiesParams
    ModelParams = TiesModelParams

    def __init__(self, params: TiesParams, model_params: list[TiesModelParams]) -> None:
        super().__init__(params, model_params)
        self.densities = self.model_values("density")  # [n]
        self.trims = bool((self.densities < 1).any())
        self.passes = 2 if self.trims else 0
        self.scope = params.scope
        self.unit_weights = all(p.weight == 1.0 for p in model_params)
        self.shift = 20 if params.scope == "tensor" else 16  # finer bins when pooling a whole model

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> Any:
        tvs = task_vectors(base, models)  # [n, c]
        if pass_index == 0:
            return bin_histogram(tvs, self.shift)
        return bin_members(tvs, stats["bin"], self.shift)

    def accumulate(self, total: Any, part: Any) -> Any:
        if isinstance(part, (list, BinMembers)):  # pass 2: bin members are collected, not summed
            total = total if total is not None else BinMembers(len(self.model_params))
            return total.add(part.rows() if isinstance(part, BinMembers) else part)
        return super().accumulate(total, part)

    def conclude(self, pass_index: int, total: Any, stats: dict[str, Any], numel: int) -> None:
        if pass_index == 0:
            stats["k"] = (self.densities * numel).floor().to(torch.int64)  # [n]
            stats["bin"], stats["k_left"] = locate_bin(total.cpu(), stats["k"].clamp(min=1))
        else:
            threshold = threshold_from_members(total.rows(), stats["k_left"])
            stats["threshold"] = torch.where(stats["k"] > 0, threshold, torch.inf)

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = task_vectors(base, models)  # [n, c]
        weights = self.model_values("weight").to(tvs)  # [n]
        weighted = tvs if self.unit_weights else tvs.mul_(weights.unsqueeze(1))  # [n, c]
        if self.trims:
            weighted = prune_magnitude(weighted, stats["threshold"] * weights.abs().cpu())
        merged = disjoint_merge(weighted, weights, elect_sign(weighted, self.params.elect),
                                self.params.normalize)  # [c]
        return base + self.params.scale * merged
