"""TIES-Merging (Yadav et al., "Resolving interference when merging models", NeurIPS 2023,
arXiv 2306.01708, Sec. 3 / Alg. 1):

    τ_i = θ_i − θ_base
    τ̂_i = trim(τ_i): keep the k largest magnitudes, k = max(1, ⌊d_i · numel⌋) for d_i < 1 (``scope``: per
          tensor, or over the whole model's task vector — the paper trims per task vector, mergekit and peft
          per tensor)
    γ = sgn(Σ_i w_i τ̂_i)  (``elect: mass``)  or  sgn(Σ_i sgn(w_i τ̂_i))  (``elect: count``), 0 -> +1
    τ_m = Σ_{i∈A} w_i τ̂_i / Σ_{i∈A} w_i,  A = {i : sgn(w_i τ̂_i) = γ}   (disjoint mean)
    θ = θ_base + λ · τ_m

The exact k-th largest magnitude comes from two streaming passes (``merging.topk``: a histogram of the
float32 bit patterns, then the members of the bin that holds the threshold), so a tensor never has to be
held whole; ``scope: model`` uses finer bins to keep the second pass small.
Per tensor, exactly k elements survive, as in mergekit (``sparsify.magnitude``: argsort, first k) and peft
(``magnitude_based_pruning``: topk): where magnitudes tie at the threshold, the first ones in flat order are kept
(bf16 task vectors tie often). Which of the tied elements mergekit and peft keep follows torch's unstable sort
and cannot be reproduced by a streamed trim; the count, and every element not tied at the threshold, agree.
``scope: model`` keeps every element tied at its threshold (its chunks are merged in parallel).
mergekit's ``ties`` is the same formula. ``peft.utils.merge_utils.ties`` (and ``add_weighted_adapter``'s
``ties_svd``) equals it for unit weights only: with other weights peft elects signs on the unweighted τ̂_i and
divides by the number of agreeing models, not by their weights.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..registry import register
from ..tensor_ops import disjoint_merge, elect_sign, prune_magnitude, prune_top_k, task_vectors
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
    affine_in = "scale"
    ModelParams = TiesModelParams

    def __init__(self, params: TiesParams, model_params: list[TiesModelParams]) -> None:
        super().__init__(params, model_params)
        self.densities = self.model_values("density")  # [n]
        self.trims = bool((self.densities < 1).any())
        self.passes = 2 if self.trims else 0
        self.scope = params.scope
        self.unit_weights = all(p.weight == 1.0 for p in model_params)
        self.shift = 20 if params.scope == "tensor" else 16  # finer bins when pooling a whole model

    def keep_counts(self, numel: int) -> torch.Tensor:
        """k per trimmed row (here one row per model). -> [rows] int64."""
        return torch.tensor([keep_count(float(d), numel) for d in self.densities])

    def ranked(self, tvs: torch.Tensor) -> torch.Tensor:
        """The rows whose top-k sets are found (here the task vectors themselves). [n, c] -> [rows, c]."""
        return tvs

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> Any:
        rows = self.ranked(task_vectors(base, models))  # [rows, c]
        if pass_index == 0:
            return bin_histogram(rows, self.shift)
        return bin_members(rows, stats["bin"], self.shift)

    def accumulate(self, total: Any, part: Any) -> Any:
        if isinstance(part, (list, BinMembers)):  # pass 2: bin members are collected, not summed
            parts = part.rows() if isinstance(part, BinMembers) else part
            return (total if total is not None else BinMembers(len(parts))).add(parts)
        return super().accumulate(total, part)

    def conclude(self, pass_index: int, total: Any, stats: dict[str, Any], numel: int) -> None:
        if pass_index == 0:
            stats["k"] = self.keep_counts(numel)  # [rows]
            stats["bin"], stats["k_left"] = locate_bin(total.cpu(), stats["k"].clamp(min=1))
            return
        members = total.rows()
        threshold = threshold_from_members(members, stats["k_left"])  # [n]
        stats["threshold"] = torch.where(stats["k"] > 0, threshold, torch.inf)
        bits = threshold.view(torch.int32).tolist()
        above = torch.tensor([int((row > b).sum()) for row, b in zip(members, bits)])  # [n]
        tied = torch.tensor([int((row == b).sum()) for row, b in zip(members, bits)])  # [n]
        stats["tied_left"] = stats["k_left"] - above  # [n]: tied elements to keep (the first ones)
        stats["exact"] = self.scope == "tensor" and bool((tied > stats["tied_left"]).any())

    def top_k(self, rows: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
        """Each row's k largest magnitudes, zeros elsewhere (per tensor: exactly k; chunks in order)."""
        if stats["exact"]:  # more elements tie at the threshold than the k leave room for
            return prune_top_k(rows, stats["threshold"], stats["tied_left"])
        return prune_magnitude(rows, stats["threshold"])

    def trim(self, tvs: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
        """τ̂: the k largest magnitudes of each task vector. [n, c] -> [n, c]."""
        return self.top_k(tvs, stats)

    def mix(self, weighted: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """TIES steps 2-3: sign election and the disjoint mean. [n, c], [n] -> [c]."""
        return disjoint_merge(weighted, weights, elect_sign(weighted, self.params.elect), self.params.normalize)

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = task_vectors(base, models)  # [n, c]
        if self.trims:
            tvs = self.trim(tvs, stats)
        weights = self.model_values("weight").to(tvs)  # [n]
        weighted = tvs if self.unit_weights else tvs.mul_(weights.unsqueeze(1))  # [n, c]
        return base + self.params.scale * self.mix(weighted, weights)


def keep_count(density: float, numel: int) -> int:
    """Elements a trim at ``density`` keeps of ``numel``: all at 1, else max(1, ⌊density · numel⌋) (mergekit's
    rule: a positive density keeps at least one element)."""
    return numel if density >= 1 else max(1, int(density * numel))
