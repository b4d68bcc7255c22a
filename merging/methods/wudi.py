"""WUDI-merging (Cheng et al., "Whoever Started the Interference Should End It: Guiding Data-Free Model
Merging via Task Vectors", ICML 2025, arXiv 2503.08099; official code nathanielyvo/WUDI-Merging,
vit/wudi_main.py ``get_redundant_task_vector``). Per matrix (merging/methods/subspace.py) the merged task
matrix τ minimises the interference it causes on each task's own inputs, which the task vector's row space
stands for:

    L(τ) = Σ_i w_i ‖(τ − τ_i) τ_iᵀ‖_F²,    w_i = 1 / ‖τ_i‖_F²  (0 for a zero τ_i),    θ = θ_base + λ · τ

``solver: adam`` (the paper's): τ starts at Σ_i τ_i and takes ``steps`` Adam steps (``lr``; PyTorch's default
betas and eps) on the exact gradient ∇L = 2 (τ G − H), G = Σ_i w_i τ_iᵀ τ_i, H = Σ_i w_i τ_i τ_iᵀ τ_i, which
equals autograd's on the official loss; the official runs take 300 steps at lr 1e-5 (ViT) and stop early by
design. ``solver: closed_form`` returns the minimiser τ* = H G⁺ (the pseudo-inverse), which is not what the
paper runs. Matrices: every 2-D tensor, as FusionBench's ``wudi_merging`` (the official ViT code: the attention
and MLP weights only). Other tensors: θ_base + λ · mean_i τ_i (FusionBench's rule; the official ViT code leaves
them at the base).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..registry import register
from .subspace import MatrixMerge, MatrixParams


class WudiParams(MatrixParams):
    solver: Literal["adam", "closed_form"] = "adam"
    steps: int = Field(300, ge=0)
    lr: float = Field(1e-5, gt=0)


def interference_terms(taus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G = Σ_i w_i τ_iᵀ τ_i [q, q] and H = Σ_i w_i τ_i τ_iᵀ τ_i [m, q], w_i = 1/‖τ_i‖_F² (0 for τ_i = 0);
    L(τ) = tr(τ G τᵀ) − 2 tr(τ Hᵀ) + const. taus: [n, m, q]."""
    gram = taus.new_zeros(taus.shape[2], taus.shape[2])
    target = taus.new_zeros(taus.shape[1:])
    for tau in taus:  # task by task: one [q, q] product at a time
        squared = tau.square().sum()
        if squared > 0:
            tau_gram = tau.T @ tau  # [q, q]
            gram += tau_gram / squared
            target += (tau @ tau_gram) / squared
    return gram, target


@register("wudi", paper="https://arxiv.org/abs/2503.08099")
class Wudi(MatrixMerge):
    Params = WudiParams

    def merge_matrices(self, taus: torch.Tensor) -> torch.Tensor:
        gram, target = interference_terms(taus)
        if self.params.solver == "closed_form":
            return target @ torch.linalg.pinv(gram, hermitian=True)
        merged = taus.sum(0).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([merged], lr=self.params.lr)
        for _ in range(self.params.steps):
            with torch.no_grad():
                merged.grad = 2 * (merged @ gram - target)
            optimizer.step()
        return merged.detach()
