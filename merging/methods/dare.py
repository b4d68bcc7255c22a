"""DARE, Drop And REscale (Yu et al., "Language models are Super Mario", ICML 2024, arXiv 2311.03099,
Eq. 1-2), composed with task arithmetic (``dare_ta``) and with TIES sign election (``dare_ties``):

    m_i ~ Bernoulli(1 − p_i) element-wise,     τ̃_i = m_i ⊙ τ_i / (1 − p_i)       (``rescale: inverse``)
    dare_ta:    θ = θ_base + λ · Σ_i w_i τ̃_i
    dare_ties:  θ = θ_base + λ · disjoint_mean_γ(w_i τ̃_i)      (TIES steps 2-3, see ``ties``)

``rescale: l1`` instead matches the L1 norm before and after dropping, τ̃_i = m_i⊙τ_i · ‖τ_i‖₁/‖m_i⊙τ_i‖₁
per tensor (what mergekit 0.1.5 does); ``none`` keeps m_i ⊙ τ_i. Masks come from ``Chunk.uniform``: streams
seeded by (seed, tensor, block of 32768 elements), model 0's elements first, so they never depend on the
chunking; within one block the same draws as ``torch.bernoulli`` on a generator in the same state (hence
equal to peft's ``dare_ties``, which draws model by model from the global generator).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..registry import register
from ..tensor_ops import disjoint_merge, elect_sign, random_keep_mask, task_vectors
from .base import Chunk, Method, Params

MASK_CACHE_ELEMENTS = 1 << 25  # up to 64 MB of bf16 masks per tensor are kept between the two passes


class DareModelParams(Params):
    weight: float = 1.0
    drop_rate: float | None = Field(None, ge=0, lt=1)


class DareParams(Params):
    drop_rate: float = Field(ge=0, lt=1)
    scale: float = Field(1.0, alias="lambda")
    rescale: Literal["inverse", "l1", "none"] = "inverse"
    normalize: bool = False


class DareTiesParams(DareParams):
    elect: Literal["mass", "count"] = "mass"
    normalize: bool = True


@register("dare_ta", paper="https://arxiv.org/abs/2311.03099")
class DareTaskArithmetic(Method):
    Params = DareParams
    affine_in = "scale"
    ModelParams = DareModelParams

    def __init__(self, params: DareParams, model_params: list[DareModelParams]) -> None:
        super().__init__(params, model_params)
        self.keep = self.keep_rates()  # [n]
        self.passes = 1 if params.rescale == "l1" else 0

    def keep_rates(self) -> torch.Tensor:
        """1 − p_i per model. -> [n]."""
        return 1 - self.model_values("drop_rate")

    def keep_probability(self, chunk: Chunk, tvs: torch.Tensor) -> torch.Tensor:
        """Each element's keep probability: 1 − p_i for every element of task vector i. -> [n] (or [n, c])."""
        return self.keep

    def mask(self, chunk: Chunk, tvs: torch.Tensor) -> torch.Tensor:
        return random_keep_mask(chunk.uniform(len(tvs)), self.keep_probability(chunk, tvs))

    def dropped(self, chunk: Chunk, tvs: torch.Tensor, stats: dict[str, Any], weights: torch.Tensor) -> torch.Tensor:
        """w_i · m_i ⊙ τ_i, rescaled per ``rescale``, computed in place in ``tvs``. [n, c], [n] -> [n, c]."""
        mask = stats.pop(("mask", chunk.start), None)  # kept from the l1 pass, else drawn (same seed, same draws)
        if mask is None:
            mask = self.mask(chunk, tvs).to(tvs.device)
        factor = weights.double()  # [n]: one multiply per row for weight and rescale together
        if self.params.rescale == "inverse":
            keep = self.keep_probability(chunk, tvs)
            if keep.dim() == 1:
                factor = factor / keep
            else:  # per element: τ_ij / p_ij
                tvs.div_(keep.to(tvs))
        elif self.params.rescale == "l1":
            factor = factor * stats["l1_scale"].cpu()
        return tvs.mul_(mask).mul_(factor.to(tvs).unsqueeze(1))

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        """The l1 pass: Σ|τ_i| and Σ|m_i ⊙ τ_i| of this chunk. Masks of small tensors are kept (bf16, 0/1 is
        exact) for ``combine`` instead of being drawn twice."""
        tvs = task_vectors(base, models)  # [n, c]
        mask = self.mask(chunk, tvs).to(tvs)
        if chunk.numel * len(self.model_params) <= MASK_CACHE_ELEMENTS:
            stats[("mask", chunk.start)] = mask.to(torch.bfloat16)
        magnitudes = tvs.abs_()
        return torch.stack([magnitudes.sum(1), (mask * magnitudes).sum(1)]).double()  # [2, n]

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        before, after = total.cpu()
        usable = (before >= 1e-7) & (after >= 1e-7)
        stats["l1_scale"] = torch.where(usable, before / after.clamp(min=1e-7), 1.0)  # [n]

    def merge_dropped(self, weighted: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i τ̃_i (÷ Σ w_i when normalize). [n, c] -> [c]."""
        total = float(weights.sum())
        merged = weighted.sum(0)
        return merged / total if self.params.normalize and abs(total) > 1e-8 else merged

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        weights = self.model_values("weight")  # [n]
        weighted = self.dropped(chunk, task_vectors(base, models), stats, weights)  # [n, c]
        return base + self.params.scale * self.merge_dropped(weighted, weights.to(weighted))


@register("dare_ties", paper="https://arxiv.org/abs/2311.03099")
class DareTies(DareTaskArithmetic):
    Params = DareTiesParams

    def merge_dropped(self, weighted: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """TIES sign election and disjoint merge of the dropped task vectors. [n, c] -> [c]."""
        return disjoint_merge(weighted, weights, elect_sign(weighted, self.params.elect), self.params.normalize)
