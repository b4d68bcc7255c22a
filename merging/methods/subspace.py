"""What the subspace merges share (TSV-M, ISO-C, ISO-CTS, CART, STAR, WUDI): each merges a weight *matrix*
through its singular value decomposition or a per-matrix objective, so it reads every tensor whole (one chunk,
``whole_tensor``), and it sends every other tensor through a simple rule (``merge_other``; by default the mean
task vector, as the official code of TSV-M and ISO does for biases and norms).

Which tensors are matrices (``matrices``): ``2d`` (default) — the 2-D tensors, as the official code and
FusionBench run these methods on ViTs (linear weights and embeddings); ``nd`` — also every tensor of 3+
dimensions, a convolution kernel [out, in, kh, kw] viewed as the [out, in·kh·kw] linear map of a receptive-field
patch (as RegMean here), without which a CNN's subspace would cover only its few linear layers.

The decompositions run in the compute dtype (float32 unless the config says otherwise, as the official code),
and in float32 where that dtype is narrower (bfloat16, float16).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from .base import Chunk, Method, Params


class MatrixParams(Params):
    scale: float = Field(1.0, alias="lambda")
    matrices: Literal["2d", "nd"] = "2d"


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U·Vᴴ of the thin SVD M = U Σ Vᴴ: the matrix with orthonormal columns (or
    rows) nearest to M in Frobenius norm. [m, q] -> [m, q]."""
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def low_rank(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation U_k Σ_k V_kᴴ (Eckart–Young). [m, q] -> [m, q]."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


class MatrixMerge(Method):
    """θ = θ_base + λ · merge_matrices(τ_1 … τ_n) on matrices, θ_base + λ · merge_other(τ_1 … τ_n) elsewhere,
    τ_i = θ_i − θ_base."""

    Params = MatrixParams
    affine_in = "scale"
    whole_tensor = True

    def matrix_shape(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """[rows, columns] of the matrix view of a tensor of ``shape``, or None where it is not a matrix."""
        if len(shape) == 2 or (len(shape) > 2 and self.params.matrices == "nd"):
            return shape[0], math.prod(shape[1:])
        return None

    def merge_matrices(self, taus: torch.Tensor) -> torch.Tensor:
        """The merged task matrix. taus: [n, m, q] -> [m, q]."""
        raise NotImplementedError

    def merge_other(self, taus: torch.Tensor) -> torch.Tensor:
        """The merged task vector of a tensor that is not a matrix: the mean. [n, c] -> [c]."""
        return taus.mean(0)

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        wide = torch.promote_types(base.dtype, torch.float32)  # decompositions need float32 or wider
        taus = models.to(wide) - base.to(wide)  # [n, numel]
        shape = self.matrix_shape(chunk.shape)
        merged = (self.merge_matrices(taus.view(len(taus), *shape)).reshape(-1) if shape and min(shape)
                  else self.merge_other(taus))  # [numel]
        return (base.to(wide) + self.params.scale * merged).to(base.dtype)
