"""FroM, Frobenius-norm adaptive merging (Li et al., "FroM: Frobenius norm-based data-free adaptive
model merging", EMNLP Findings 2025, arXiv 2506.02478), per tensor ("layer"):

    τ_i = θ_i − θ_base,   w_i = ‖τ_i‖_F^k / Σ_j ‖τ_j‖_F^k,   θ = θ_base + α · Σ_i w_i τ_i

k = 0 is the mean of the task vectors; k → ∞ picks the largest-norm one. Registered as ``from``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..registry import register
from ..tensor_ops import frobenius_weights, task_vectors
from .base import Chunk, Method, Params


class FromParams(Params):
    k: float = 1.0
    alpha: float = 1.0


@register("from", paper="https://arxiv.org/abs/2506.02478")
class FroM(Method):
    Params = FromParams
    passes = 1

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = task_vectors(base, models).double()  # [n, c]
        return (tvs * tvs).sum(1)  # [n]: partial ‖τ_i‖²

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        stats["weights"] = frobenius_weights(total.cpu().sqrt(), self.params.k)  # [n]

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = task_vectors(base, models)  # [n, c]
        return base + self.params.alpha * (stats["weights"].to(tvs) @ tvs)
