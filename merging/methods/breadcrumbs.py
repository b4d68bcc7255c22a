"""Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
Masks", ECCV 2024, arXiv 2312.06795), as mergekit 0.1.5 runs it (sparsify.magnitude_outliers inside its
generalized task arithmetic): each task vector loses its largest outliers and its smallest magnitudes,

    τ_i = θ_i − θ_base,   N = numel,   K = ⌊d_i·N⌋ kept,   G = ⌊γ_i·N⌋ outliers
    skip = min(G, N − K)                       (the outlier cut shrinks when it would leave fewer than K)
    τ̂_i = τ_i on the elements of descending-magnitude rank skip … skip + K − 1, 0 elsewhere   (d_i = 1: τ_i)
    breadcrumbs:       θ = θ_base + λ · Σ_i w_i τ̂_i            (÷ Σ_i w_i when ``normalize``)
    breadcrumbs_ties:  θ = θ_base + λ · disjoint_mean_γ(w_i τ̂_i)   (TIES's sign election, merging/methods/ties.py)

The rank window is the difference of two exact top-k sets (top skip + K minus top skip), each streamed as TIES's
trim is (merging/topk.py), ties at a threshold kept first in flat order. Defaults as mergekit's: γ 0.01, no
normalisation.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..registry import register
from .ties import Ties, TiesModelParams, TiesParams


class BreadcrumbsModelParams(TiesModelParams):
    gamma: float | None = Field(None, ge=0, lt=1)


class BreadcrumbsParams(TiesParams):
    gamma: float = Field(0.01, ge=0, lt=1)
    normalize: bool = False


def window(density: float, gamma: float, numel: int) -> tuple[int, int]:
    """(skip, skip + K): the descending-rank window of the kept elements (all of them at density 1)."""
    if density >= 1:
        return 0, numel
    kept, outliers = int(density * numel), int(gamma * numel)
    skip = numel - max(0, numel - kept - outliers) - kept
    return skip, skip + kept


@register("breadcrumbs_ties", paper="https://arxiv.org/abs/2312.06795")
class BreadcrumbsTies(Ties):
    Params = BreadcrumbsParams
    ModelParams = BreadcrumbsModelParams

    def __init__(self, params: BreadcrumbsParams, model_params: list[BreadcrumbsModelParams]) -> None:
        super().__init__(params, model_params)
        self.gammas = self.model_values("gamma")  # [n]

    def keep_counts(self, numel: int) -> torch.Tensor:
        """Rows 0..n−1 keep the top skip + K, rows n..2n−1 the top skip. -> [2n]."""
        windows = [window(float(d), float(g), numel) for d, g in zip(self.densities, self.gammas)]
        return torch.tensor([end for _, end in windows] + [skip for skip, _ in windows])

    def ranked(self, tvs: torch.Tensor) -> torch.Tensor:
        return torch.cat([tvs, tvs])  # [2n, c]

    def trim(self, tvs: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
        kept = self.top_k(self.ranked(tvs), stats)  # [2n, c]
        n = tvs.shape[0]
        return kept[:n] - kept[n:]  # top (skip + K) without the top skip: ties go to the first, in both sets


@register("breadcrumbs", paper="https://arxiv.org/abs/2312.06795")
class Breadcrumbs(BreadcrumbsTies):
    def mix(self, weighted: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i τ̂_i, ÷ Σ_i w_i when ``normalize`` (and |Σ w_i| ≥ 1e-8, as mergekit). [n, c] -> [c]."""
        merged = weighted.sum(0)
        total = float(weights.sum())
        return merged / total if self.params.normalize and abs(total) >= 1e-8 else merged
