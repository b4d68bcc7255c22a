"""STAR, Spectral Truncation And Rescale (Lee et al., NAACL 2025, arXiv 2502.10339; official code IBM/STAR,
merger/STAR.py ``star_task_vectors``). Each task matrix keeps its top singular components that carry η % of
its nuclear norm, rescaled so that the nuclear norm is unchanged; the truncated task vectors are averaged. Per
matrix (merging/methods/subspace.py), τ_i = U_i diag(σ_i) V_iᵀ with σ_i descending:

    r_i = min{ r : Σ_{j≤r} σ_ij ≥ (η/100) · Σ_j σ_ij }
    τ_i' = U_i[:, :r_i] · diag(σ_i[:r_i] · Σ_j σ_ij / Σ_{j≤r_i} σ_ij) · V_i[:, :r_i]ᵀ     (‖τ_i'‖_* = ‖τ_i‖_*)
    θ = θ_base + λ · (1/n) Σ_i τ_i'          (λ = 1 in the paper: the plain average)

A zero task matrix stays zero. The official code merges LoRA-adapted weights only (ΔW = B·A); on full
fine-tunes here every matrix is truncated. Other tensors: θ_base + λ · mean_i τ_i. η = 40 is the official default
(``eta``, a percentage).
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..registry import register
from .subspace import MatrixMerge, MatrixParams


class StarParams(MatrixParams):
    eta: float = Field(40.0, gt=0, le=100)


@register("star", paper="https://arxiv.org/abs/2502.10339")
class Star(MatrixMerge):
    Params = StarParams

    def merge_matrices(self, taus: torch.Tensor) -> torch.Tensor:
        u, s, vh = torch.linalg.svd(taus, full_matrices=False)  # [n, rows, r], [n, r], [n, r, columns]
        merged = torch.zeros_like(taus[0])
        for u_i, s_i, vh_i in zip(u, s, vh):
            total = s_i.sum()
            if total == 0:
                continue
            cumulative = s_i.cumsum(0)
            rank = min(int(torch.searchsorted(cumulative, total * self.params.eta / 100)) + 1, len(s_i))
            kept = s_i[:rank] * (total / cumulative[rank - 1])
            merged += (u_i[:, :rank] * kept) @ vh_i[:rank]
        return merged / len(taus)
