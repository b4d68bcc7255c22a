"""CART, Centered Arithmetic with Rank-reduced Task vectors (Choi et al., "Revisiting Weight Averaging for
Model Merging", arXiv 2412.12153; official code JH-GEECS/CART, src/merging.py ``_merge_weights("CART")``).
Task vectors are taken from the models' average instead of the base, and each is cut to its top singular
directions. Per matrix (merging/methods/subspace.py), r = min(rows, columns):

    θ̄ = (1/n) Σ_i θ_i,     δ_i = θ_i − θ̄,     k = max(1, ⌊ρ·r⌋)
    θ = θ̄ + λ · Σ_i LR_k(δ_i)           (LR_k: the best rank-k approximation, a sum over tasks)

Other tensors: θ̄ (there Σ_i δ_i = 0). The base is not read. The official code cuts only the attention and MLP
weights (its keys holding "attn" or "mlp"); here every matrix, embeddings included. ρ (``rank_ratio``) and λ come from the official
configs for ViT-B/32 (8 tasks: ρ 0.12, λ 2.0; 20 tasks: ρ 0.32, λ 1.9); here λ is chosen on validation.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..registry import register
from .base import Chunk
from .subspace import MatrixMerge, MatrixParams, low_rank


class CartParams(MatrixParams):
    rank_ratio: float = Field(0.12, ge=0, le=1)


@register("cart", paper="https://arxiv.org/abs/2412.12153")
class Cart(MatrixMerge):
    Params = CartParams
    uses_base = False

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        wide = models.to(torch.promote_types(models.dtype, torch.float32))
        average = wide.mean(0)  # [numel]
        shape = self.matrix_shape(chunk.shape)
        if not shape or not min(shape) or self.params.rank_ratio == 0:  # ρ = 0: no task matrix is kept (official)
            return average.to(models.dtype)
        deltas = (wide - average).view(len(models), *shape)  # [n, rows, columns]
        rank = max(1, int(self.params.rank_ratio * min(shape)))
        merged = sum(low_rank(delta, rank) for delta in deltas)  # [rows, columns]
        return (average + self.params.scale * merged.reshape(-1)).to(models.dtype)
