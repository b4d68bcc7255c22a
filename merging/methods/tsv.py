"""TSV-M, Task Singular Vectors Merge (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in
Model Merging", CVPR 2025, arXiv 2412.00081; official code AntoAndGar/task_singular_vectors,
src/utils/TSVM_utils.py ``compute_and_sum_svd_mem_reduction``). Per matrix (merging/methods/subspace.py), with
τ_i = U_i Σ_i V_iᵀ (thin SVD, r = min(rows, columns)) and k = ⌊r / n⌋ components kept per task:

    Û = [U_1[:, :k] … U_n[:, :k]],   σ̂ = [σ_1[:k] … σ_n[:k]],   V̂ᵀ = [V_1[:, :k] … V_n[:, :k]]ᵀ   (task order)
    τ = polar(Û) · diag(σ̂) · polar(V̂ᵀ),        polar(M) = U_M V_Mᵀ of M's thin SVD,
    θ = θ_base + λ · τ

The tasks' own singular values are kept; only their singular vectors are decorrelated (the nearest orthonormal
sets). Where r < n no component fits (k = 0) and the matrix keeps the base, as the official code. Other tensors:
θ_base + λ · mean_i τ_i. λ (the official code's α) is chosen on validation (its grid: 0.1 … 3.0).
"""
from __future__ import annotations

import torch

from ..registry import register
from .subspace import MatrixMerge, polar


@register("tsv_m", paper="https://arxiv.org/abs/2412.00081")
class TaskSingularVectorsMerge(MatrixMerge):
    def merge_matrices(self, taus: torch.Tensor) -> torch.Tensor:
        n, rows, columns = taus.shape
        k = min(rows, columns) // n
        if k == 0:
            return taus.new_zeros(rows, columns)
        u, s, vh = torch.linalg.svd(taus, full_matrices=False)  # [n, rows, r], [n, r], [n, r, columns]
        left = u[:, :, :k].permute(1, 0, 2).reshape(rows, n * k)  # [rows, n·k]: task blocks side by side
        right = vh[:, :k].reshape(n * k, columns)  # [n·k, columns]
        return (polar(left) * s[:, :k].reshape(n * k)) @ polar(right)
