"""Isotropic merging (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces", ICML 2025, arXiv 2502.04959; official code danielm1405/iso-merging, src/utils/iso.py
``iso_c`` and ``iso_cts``). Per matrix (merging/methods/subspace.py), r = min(rows, columns):

ISO-C flattens the spectrum of the task-arithmetic sum:

    Σ_i τ_i = U diag(σ) Vᵀ,     τ = σ̄ · U Vᵀ with σ̄ = (1/r) Σ_j σ_j (all r values),     θ = θ_base + λ · τ

ISO-CTS keeps the sum's top k directions as a common subspace and gives every task s directions of its own,
outside the common left subspace:

    k₀ = ⌊f·r⌋,  s = round((r − k₀) / n) (half to even, as Python; at most ⌊r / n⌋),  k = r − n·s
    U_c, σ_c, V_cᵀ: the top k of Σ_i τ_i's SVD;   R_i = τ_i − U_c U_cᵀ τ_i,  U_i', σ_i', V_i'ᵀ its top s
    Û = [U_1' … U_n', U_c],  V̂ᵀ = [V_1'ᵀ; …; V_n'ᵀ; V_cᵀ],  σ̄ = the mean of the r values [σ_1' … σ_n', σ_c]
    τ = σ̄ · polar(Û) · polar(V̂ᵀ)            (polar(M) = U_M V_Mᵀ of M's thin SVD)

with f the ``common_fraction`` (0.8 in the official configs); where s = 0 ISO-CTS is ISO-C. Other tensors:
θ_base + λ · mean_i τ_i. λ (the official α) is chosen on validation (the official grid: 0.1 … 3.0).
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..registry import register
from .subspace import MatrixMerge, MatrixParams, polar


def isotropic(matrix: torch.Tensor) -> torch.Tensor:
    """σ̄ · U Vᵀ: ``matrix`` with every singular value replaced by their mean. [m, q] -> [m, q]."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return s.mean() * (u @ vh)


@register("iso_c", paper="https://arxiv.org/abs/2502.04959")
class IsoC(MatrixMerge):
    def merge_matrices(self, taus: torch.Tensor) -> torch.Tensor:
        return isotropic(taus.sum(0))


class IsoCTSParams(MatrixParams):
    common_fraction: float = Field(0.8, gt=0, le=1)


@register("iso_cts", paper="https://arxiv.org/abs/2502.04959")
class IsoCTS(MatrixMerge):
    Params = IsoCTSParams

    def merge_matrices(self, taus: torch.Tensor) -> torch.Tensor:
        n, rows, columns = taus.shape
        r = min(rows, columns)
        own = min(round((r - int(self.params.common_fraction * r)) / n), r // n)  # s: each task's directions
        total = taus.sum(0)  # [rows, columns]
        if own == 0:
            return isotropic(total)
        common = r - n * own
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        u_c = u[:, :common]  # [rows, k]
        residuals = taus - u_c @ (u_c.T @ taus)  # [n, rows, columns]: the common left subspace projected out
        u_t, s_t, vh_t = torch.linalg.svd(residuals, full_matrices=False)
        left = torch.cat([u_t[:, :, :own].permute(1, 0, 2).reshape(rows, n * own), u_c], 1)  # [rows, r]
        right = torch.cat([vh_t[:, :own].reshape(n * own, columns), vh[:common]])  # [r, columns]
        mean_sigma = torch.cat([s_t[:, :own].reshape(-1), s[:common]]).mean()
        return mean_sigma * (polar(left) @ polar(right))
