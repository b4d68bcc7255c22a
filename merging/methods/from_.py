"""FroM, Frobenius-norm adaptive merging (Li et al., "FroM: Frobenius norm-based data-free adaptive
model merging", EMNLP Findings 2025, arXiv 2506.02478), per tensor ("layer"):

    τ_i = θ_i − θ_base,   w_i = ‖τ_i‖_F^k / Σ_j ‖τ_j‖_F^k,   θ = θ_base + α · Σ_i w_i τ_i

k = 0 is the mean of the task vectors; k → ∞ picks the largest-norm one. Registered as ``from``.

DARE+FroM (the FroM paper's combination): with ``drop_rate`` p > 0 every τ_i is first replaced by
τ̃_i = m_i ⊙ τ_i / (1 − p), m_i ~ Bernoulli(1 − p) element-wise (DARE, merging/methods/dare.py; the same
seeded draws in both passes), and the norms and the merge use τ̃_i.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..registry import register
from ..tensor_ops import frobenius_weights, random_keep_mask, task_vectors
from .base import Chunk, Method, Params


class FromParams(Params):
    k: float = 1.0
    alpha: float = 1.0
    drop_rate: float = Field(0.0, ge=0, lt=1)


@register("from", paper="https://arxiv.org/abs/2506.02478")
class FroM(Method):
    Params = FromParams
    affine_in = "alpha"
    passes = 1

    def task_vectors(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """τ_i, or DARE's τ̃_i when drop_rate > 0 (the chunk's seeded mask: the same in both passes). [n, c]"""
        tvs = task_vectors(base, models)  # [n, c]
        p = self.params.drop_rate
        if p == 0:
            return tvs
        keep = torch.full((len(models),), 1 - p, dtype=torch.float64)
        return tvs * random_keep_mask(chunk.uniform(len(tvs)), keep).to(tvs) / (1 - p)

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = self.task_vectors(chunk, base, models).double()  # [n, c]
        return (tvs * tvs).sum(1)  # [n]: partial ‖τ_i‖²

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        stats["weights"] = frobenius_weights(total.cpu().sqrt(), self.params.k)  # [n]

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = self.task_vectors(chunk, base, models)  # [n, c]
        return base + self.params.alpha * (stats["weights"].to(tvs) @ tvs)
