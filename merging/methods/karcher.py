"""Karcher mean: the Riemannian (geodesic) center of mass of the models' directions on the unit hypersphere,
rescaled by their mean norm (Karcher, "Riemannian center of mass and mollifier smoothing", 1977; for model
merging mergekit 0.1.5, merge_methods/karcher.py, reference arXiv 2603.04972), over each whole flattened
tensor, with the n models weighted equally (α_i = 1/n):

    u_i = θ_i / ‖θ_i‖ for the valid models V = {i : ‖θ_i‖ > tol},   a_i = α_i / Σ_{j∈V} α_j
    μ_0 = m / ‖m‖ with m = Σ_{i∈V} a_i u_i   (μ_0 = u_{first of V} where ‖m‖ < tol)
    repeat at most ``max_iter`` times:
        d_i = clamp(⟨μ, u_i⟩, −1, 1),   φ_i = arccos d_i
        T = Σ_{i∈V, φ_i ≥ tol} a_i · φ_i / sin φ_i · (u_i − d_i μ)        (the log maps' weighted mean)
        stop if ‖T‖ < tol;  else μ ← cos‖T‖ · μ + sin‖T‖ · T/‖T‖,  μ ← μ/‖μ‖ (where ‖μ‖ > tol)
    θ = (Σ_i α_i ‖θ_i‖) · μ

One model is copied; if no model is valid the result is 0. The base is not read: mergekit lists its
base_model among the inputs, as one more model of the mean.

Streaming: μ starts in the span of the u_i and every update (T, the exponential map, the renormalisation) is a
linear combination of μ and the u_i, so μ = Σ_i c_i u_i at every step, and every quantity the iteration reads
(⟨μ, u_i⟩, ‖T‖, ‖μ‖) is a quadratic form of the coefficients in the Gram matrix ⟨θ_i, θ_j⟩. One streamed pass
accumulates that n×n Gram matrix (float64); ``conclude`` runs mergekit's iteration on the coefficient vectors
c (exactly the same steps, branches and stopping rule), and ``combine`` writes Σ_i (scale · c_i / ‖θ_i‖) θ_i.
A tensor is read twice in all, whatever ``max_iter``.

Deviations: float rounding only, with two consequences of reading norms from a Gram matrix. (1) ‖T‖ and ‖μ‖
are resolved to about 1e-8 (relative to the unit vectors), so a ``tol`` below that may run every iteration
where mergekit (whose float32 dot products resolve angles only to about 3e-4) stops earlier; the means agree to
that rounding. (2) A u_i antipodal to μ (φ_i = π) has the singular log map φ_i/sin φ_i · (u_i − d_i μ) = ∞ · 0:
for exactly antipodal inputs (a model and its negation) mergekit's elementwise u_i − d_i μ is exactly 0, so the
term vanishes; here the term is 0 wherever 1 − d_i² ≤ 1e-14 with d_i < 0 (φ_i within about 1e-7 of π), which
reproduces that case. Between that and a clearly resolved angle the term is ill-conditioned in both tools.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from ..registry import register
from .base import Chunk, Method, Params

ANTIPODAL = 1e-14  # 1 − d² at or below this, with d < 0: u_i is −μ to the resolution of the Gram matrix


class KarcherParams(Params):
    max_iter: int = Field(10, ge=0)
    tol: float = Field(1e-5, ge=0)


def _norm(c: torch.Tensor, unit_gram: torch.Tensor) -> float:
    """‖Σ_i c_i u_i‖ from the Gram matrix of the unit vectors."""
    return math.sqrt(max(float(c @ unit_gram @ c), 0.0))


def karcher_coefficients(gram: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """Coefficients k with Karcher mean = Σ_i k_i θ_i, from the Gram matrix ⟨θ_i, θ_j⟩ ([n, n] float64) -> [n]."""
    n = gram.shape[0]
    norms = gram.diagonal().clamp(min=0).sqrt()  # [n]
    alphas = torch.full((n,), 1.0 / n, dtype=torch.float64)
    valid = (norms > tol).nonzero().flatten()
    coefficients = torch.zeros(n, dtype=torch.float64)
    if len(valid) == 0:
        return coefficients  # every model (numerically) zero: the result is 0
    v_norms = norms[valid]
    unit_gram = gram[valid][:, valid] / torch.outer(v_norms, v_norms)  # ⟨u_i, u_j⟩, i, j ∈ V
    a = alphas[valid] / alphas[valid].sum()
    c = a.clone()  # μ = Σ c_i u_i
    mean_norm = _norm(c, unit_gram)
    if mean_norm < tol:
        c = torch.zeros_like(a)
        c[0] = 1.0
    else:
        c = c / mean_norm
    for _ in range(max_iter):
        d = (unit_gram @ c).clamp(-1.0, 1.0)  # ⟨μ, u_i⟩
        phi = torch.arccos(d)
        active = (phi >= tol) & ((d >= 0) | (1 - d.square() > ANTIPODAL))  # antipodes: u_i − d_i μ = 0
        k = torch.where(active, a * phi / torch.where(active, torch.sin(phi), 1.0), 0.0)  # a_i φ_i / sin φ_i
        tangent = k - (k * d).sum() * c  # T = Σ_i k_i u_i − (Σ_i k_i d_i) μ
        tangent_norm = _norm(tangent, unit_gram)
        if tangent_norm < tol:
            break
        c = math.cos(tangent_norm) * c + math.sin(tangent_norm) / tangent_norm * tangent
        unit_norm = _norm(c, unit_gram)
        if unit_norm > tol:
            c = c / unit_norm
    scale = float(alphas @ norms)  # Σ_i α_i ‖θ_i‖ over every model
    coefficients[valid] = scale * c / v_norms
    return coefficients


@register("karcher", paper="https://arxiv.org/abs/2603.04972")
class Karcher(Method):
    Params = KarcherParams
    min_models = 1
    uses_base = False  # mergekit merges its base_model as one more model (the translation lists it)

    def __init__(self, params: Params, model_params: list[Params]) -> None:
        super().__init__(params, model_params)
        self.passes = 1 if len(model_params) > 1 else 0  # one model is copied

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        x = models.double()  # [n, c]
        return x @ x.T  # [n, n]

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        stats["coef"] = karcher_coefficients(total.cpu(), self.params.max_iter, self.params.tol)  # [n]

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        if models.shape[0] == 1:
            return models[0].clone()
        return stats["coef"].to(models) @ models
