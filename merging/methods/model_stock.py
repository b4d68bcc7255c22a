"""Model Stock (Jang et al., "Model Stock: All we need is just a few fine-tuned models", ECCV 2024,
arXiv 2403.19522, Eq. 4-5), per tensor as mergekit 0.1.5 computes it (merge_methods/model_stock.py):

    τ_i = θ_i − θ_base,  i = 1..n (n ≥ 2)
    cos θ = mean_{i<j} clamp(⟨τ_i, τ_j⟩ / max(‖τ_i‖·‖τ_j‖, 1e-6), −1, 1)
    t = n·cos θ / (1 + (n − 1)·cos θ)      (t = 0, the base, where |1 + (n − 1)·cos θ| < 1e-6)
    θ = t · (1/n) Σ_i θ_i + (1 − t) · θ_base

over the whole flattened tensor, or, with ``filter_wise``, over each vector along the last dimension (a row of
a 2-D weight; a 1-D tensor is one vector). The inner products come from one streamed pass (per row with
``filter_wise``), so a tensor is never held whole.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..registry import register
from ..tensor_ops import task_vectors
from .base import Chunk, Method, Params


class ModelStockParams(Params):
    filter_wise: bool = False


def interpolation_ratio(gram: torch.Tensor) -> torch.Tensor:
    """t from the Gram matrices of the task vectors. gram: [..., n, n] (float64) -> t: [...]."""
    n = gram.shape[-1]
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()  # [..., n]
    pairs = torch.triu_indices(n, n, offset=1)
    products = (norms.unsqueeze(-1) * norms.unsqueeze(-2))[..., pairs[0], pairs[1]]  # [..., pairs]
    cos = (gram[..., pairs[0], pairs[1]] / products.clamp(min=1e-6)).clamp(-1, 1).mean(-1)  # [...]
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    return torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))


@register("model_stock", paper="https://arxiv.org/abs/2403.19522")
class ModelStock(Method):
    Params = ModelStockParams
    min_models = 2
    passes = 1

    def _rows(self, chunk: Chunk) -> tuple[int, torch.Tensor | None]:
        """Vectors of the cosine: 1 (flattened) or the rows along the last dimension, and each element's row."""
        if not self.params.filter_wise or len(chunk.shape) < 2:
            return 1, None
        width = chunk.shape[-1]
        return math.prod(chunk.shape) // width, torch.arange(chunk.start, chunk.stop) // width

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = task_vectors(base, models).double()  # [n, c]
        rows, row_of = self._rows(chunk)
        if row_of is None:
            return (tvs @ tvs.T).unsqueeze(0)  # [1, n, n]
        products = tvs.unsqueeze(1) * tvs.unsqueeze(0)  # [n, n, c]
        gram = torch.zeros(rows, *products.shape[:2], dtype=torch.float64)
        return gram.index_add_(0, row_of, products.permute(2, 0, 1))  # [rows, n, n]

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        stats["t"] = interpolation_ratio(total.cpu())  # [rows]

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        _, row_of = self._rows(chunk)
        t = stats["t"] if row_of is None else stats["t"][row_of]  # [1] or [c]
        t = t.to(base)
        average = models.sum(0) / models.shape[0]  # [c]
        return t * average + (1 - t) * base
