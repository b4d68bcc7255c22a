"""DELLA (Deep, Bhardwaj & Wang, "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based
Sampling", arXiv 2406.11617): DARE's random drop with a keep probability that grows with the element's
magnitude rank in its row (MagPrune), as mergekit 0.1.5 runs it (sparsify.della_magprune in its generalized
task arithmetic: ``della`` with TIES's sign election, ``della_linear`` without):

    τ_i = θ_i − θ_base;  in each row (the last dimension; a 1-D tensor is one row) of length m,
    r_ij ∈ {0 … m−1} the ascending rank of |τ_ij|,     p_ij = (d_i − ε_i) + 2ε_i · r_ij / (m − 1)
    m_ij ~ Bernoulli(p_ij),   τ̃_i = m_i ⊙ τ_i rescaled: ÷ p_ij (``rescale: inverse``, the paper), or to keep
    ‖τ_i‖₁ (``l1``, mergekit's), or not (``none``); d_i = 1 keeps τ_i whole
    della_linear:  θ = θ_base + λ · Σ_i w_i τ̃_i                (÷ Σ w_i when ``normalize``)
    della:         θ = θ_base + λ · disjoint_mean_γ(w_i τ̃_i)

d_i ± ε_i must lie in (0, 1). Ranks need whole rows, so chunks hold whole rows (``row_aligned``); ties in a row
are ranked by position (stable sort). Deviations from mergekit: tensors of 3+ dimensions are ranked along their
last dimension (mergekit: dimension 1); a one-element row gets p = d (mergekit divides 0 by 0); the draws come
from this project's seeded streams (``Chunk.uniform``, merging/methods/dare.py), so masks differ from mergekit's.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..errors import MergeError
from ..registry import register
from .base import Chunk, Params
from .dare import DareTaskArithmetic, DareTies


class DellaModelParams(Params):
    weight: float = 1.0
    density: float | None = Field(None, gt=0, le=1)
    epsilon: float | None = Field(None, ge=0, lt=1)


class DellaParams(Params):
    density: float = Field(gt=0, le=1)
    epsilon: float = Field(0.15, ge=0, lt=1)
    scale: float = Field(1.0, alias="lambda")
    rescale: Literal["inverse", "l1", "none"] = "inverse"
    normalize: bool = False


class DellaTiesParams(DellaParams):
    elect: Literal["mass", "count"] = "mass"
    normalize: bool = True


def rank_probabilities(magnitudes: torch.Tensor, width: int, density: torch.Tensor,
                       epsilon: torch.Tensor) -> torch.Tensor:
    """p_ij = (d_i − ε_i) + 2ε_i · r_ij/(m − 1) over rows of ``width`` elements (1 where d_i = 1).
    magnitudes: [n, c] with c a multiple of width; density, epsilon: [n] -> [n, c]."""
    n, c = magnitudes.shape
    order = torch.argsort(magnitudes.reshape(n, c // width, width), dim=-1, stable=True)  # ascending
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(width).expand_as(order)).to(torch.float64)
    position = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    d, e = density.view(n, 1, 1), epsilon.view(n, 1, 1)
    return torch.where(d >= 1, 1.0, (d - e) + 2 * e * position).reshape(n, c)


class _Della:
    """The MagPrune keep probabilities shared by both variants (mixed into the DARE classes)."""

    row_aligned = True

    def keep_rates(self) -> torch.Tensor:
        """d_i, after checking that every model's d_i ± ε_i lies in (0, 1). -> [n]."""
        self.densities, self.epsilons = self.model_values("density"), self.model_values("epsilon")
        bad = [(float(d), float(e)) for d, e in zip(self.densities, self.epsilons)
               if d < 1 and not (d - e > 0 and d + e < 1)]
        if bad:
            raise MergeError(f"density ± epsilon must lie in (0, 1) for every model, got (density, epsilon) {bad}")
        return self.densities

    def keep_probability(self, chunk: Chunk, tvs: torch.Tensor) -> torch.Tensor:
        width = chunk.shape[-1] if len(chunk.shape) >= 2 else chunk.stop - chunk.start
        return rank_probabilities(tvs.abs(), max(width, 1), self.densities, self.epsilons)


@register("della_linear", paper="https://arxiv.org/abs/2406.11617")
class DellaLinear(_Della, DareTaskArithmetic):
    Params = DellaParams
    ModelParams = DellaModelParams


@register("della", paper="https://arxiv.org/abs/2406.11617")
class Della(_Della, DareTies):
    Params = DellaTiesParams
    ModelParams = DellaModelParams
