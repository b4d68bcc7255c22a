"""Pure tensor primitives that the merge methods compose.

Shapes: ``n`` models, ``c`` elements of one chunk of a flattened tensor. ``tvs`` are task vectors
τ_i = θ_i − θ_base stacked as ``[n, c]``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch


def task_vectors(base: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
    """τ_i = θ_i − θ_base.  base: [c], models: [n, c] -> [n, c]."""
    return models - base


def prune_magnitude(tvs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """TIES trim: keep τ_i where |τ_i| >= t_i, zero elsewhere (every element tied at t_i kept). [n, c], [n] -> [n, c].
    (Float arithmetic throughout: 1{|τ| >= t} = clamp(sgn(|τ| − t) + 1, max=1); bool masks are slower on CPU.)"""
    keep = tvs.abs().sub_(thresholds.to(tvs).unsqueeze(1)).sign_().add_(1).clamp_(max=1)  # [n, c] of 0/1
    return keep.mul_(tvs)


def prune_top_k(tvs: torch.Tensor, thresholds: torch.Tensor, tied_left: torch.Tensor) -> torch.Tensor:
    """TIES trim keeping exactly k per row: |τ_i| > t_i, and of the elements with |τ_i| = t_i the first
    ``tied_left[i]`` in flat order. Called chunk by chunk in order, it decrements ``tied_left`` [n] (int64, in
    place) by the tied elements it keeps, so later chunks keep only what is left. [n, c], [n], [n] -> [n, c]."""
    magnitude = tvs.abs()
    threshold = thresholds.to(tvs).unsqueeze(1)  # [n, 1]
    tied = magnitude == threshold  # [n, c]
    rank = tied.cumsum(1)  # [n, c]: 1-based rank of each tied element within the chunk
    keep = (magnitude > threshold) | (tied & (rank <= tied_left.unsqueeze(1)))  # [n, c]
    tied_left.sub_(torch.minimum(rank[:, -1], tied_left) if tvs.shape[1] else 0)
    return tvs * keep


def random_keep_mask(uniform: torch.Tensor, keep_prob: torch.Tensor) -> torch.Tensor:
    """DARE mask as 0/1 floats, computed in place in ``uniform`` (u ~ U[0, 1), e.g. ``Chunk.uniform``): element
    (i, j) kept when u_ij < keep_prob[i] (or keep_prob[i, j]); on ``torch.rand`` draws, the same mask as
    ``torch.bernoulli(full(p))`` on a generator in the same state. [n, c]."""
    keep = keep_prob.to(uniform)
    # keep − u lies in (−1, 1] and is > 0 exactly when u < keep (IEEE subtraction keeps the sign), so its
    # ceiling is the 0/1 mask
    return torch.sub(keep.unsqueeze(1) if keep.dim() == 1 else keep, uniform, out=uniform).ceil_()


def elect_sign(weighted_tvs: torch.Tensor, by: Literal["mass", "count"]) -> torch.Tensor:
    """TIES sign election γ = sgn(Σ_i τ_i) ("mass") or sgn(Σ_i sgn τ_i) ("count"); ties go to +1.
    [n, c] -> [c] of ±1."""
    votes = weighted_tvs.sum(0) if by == "mass" else weighted_tvs.sign().sum(0)  # [c]
    return votes.sign_().add_(0.5).sign_()


def disjoint_merge(weighted_tvs: torch.Tensor, weights: torch.Tensor, sign: torch.Tensor,
                   normalize: bool) -> torch.Tensor:
    """TIES disjoint merge: Σ_{i∈A} w_i τ_i / Σ_{i∈A} w_i over A = {i : sgn(w_i τ_i) = γ}
    (the plain sum when not ``normalize``; positions with A empty get 0).
    weighted_tvs: [n, c] (already w_i τ_i), weights: [n], sign: [c] -> [c]."""
    agreeing = (weighted_tvs * sign).clamp_(min=0)  # [n, c]: |w_i τ_i| where sgn(w_i τ_i) = γ, else 0
    merged = agreeing.sum(0).mul_(sign)  # [c]: Σ_{i∈A} w_i τ_i
    if not normalize:
        return merged
    divisor = weights.to(agreeing) @ agreeing.sign_()  # [c]: Σ_{i∈A} w_i
    return merged / torch.where(divisor == 0, 1.0, divisor)


def slerp_coefficients(t: float, cos_theta: float, colinear_threshold: float = 0.9995) -> tuple[float, float]:
    """Spherical interpolation weights (c0, c1) so that slerp(t; v0, v1) = c0·v0 + c1·v1 with
    c0 = sin((1−t)θ)/sin θ, c1 = sin(tθ)/sin θ, θ = arccos(v0·v1 / ‖v0‖‖v1‖) (Shoemake 1985);
    linear (1−t, t) when |cos θ| > ``colinear_threshold``, where sin θ → 0."""
    if abs(cos_theta) > colinear_threshold or not math.isfinite(cos_theta):
        return 1.0 - t, t
    theta = math.acos(max(-1.0, min(1.0, cos_theta)))
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def frobenius_weights(norms: torch.Tensor, k: float) -> torch.Tensor:
    """FroM weights w_i = ‖τ_i‖_F^k / Σ_j ‖τ_j‖_F^k, computed as softmax(k·log‖τ‖) so large k cannot
    overflow; k = 0 gives the uniform mean; for k > 0 zero-norm task vectors get weight 0. [n] -> [n]."""
    norms = norms.double()
    if k == 0 or not bool((norms > 0).any()):
        return torch.full_like(norms, 1.0 / norms.numel())
    logits = torch.where(norms > 0, k * norms.log(), torch.full_like(norms, -math.inf))
    return torch.softmax(logits, dim=0)


def scaled_vertex(base: torch.Tensor, model: torch.Tensor, c: float) -> torch.Tensor:
    """θ_base + c·(θ − θ_base): a checkpoint's task vector scaled by c (Jaggi's scaled atoms), θ itself at c = 1."""
    return model if c == 1 else base + c * (model - base)


def project_capped_simplex(weights: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every column of ``weights`` onto {w : w ≥ 0, Σ_i w_i ≤ 1}.  [n, L] -> [n, L].

    max(w, 0) when its sum is ≤ 1, else the projection onto the probability simplex {w ≥ 0, Σ w = 1}
    (Held, Wolfe & Crowder 1974; Duchi et al., ICML 2008, Fig. 1): sort u = w descending, ρ = the largest j
    with u_j − (Σ_{i≤j} u_i − 1)/j > 0, θ = (Σ_{i≤ρ} u_i − 1)/ρ, w ← max(w − θ, 0). (The two cases are the
    KKT conditions of the capped set: the sum constraint is active only when max(w, 0) violates it.)"""
    clipped = weights.clamp(min=0.0)  # [n, L]
    u = weights.sort(dim=0, descending=True).values  # [n, L]
    steps = torch.arange(1, weights.shape[0] + 1, dtype=weights.dtype, device=weights.device)[:, None]  # [n, 1]
    excess = u.cumsum(0) - 1.0  # [n, L]
    rho = ((u - excess / steps) > 0).sum(0, keepdim=True).clamp(min=1)  # [1, L]
    shift = excess.gather(0, rho - 1) / rho.to(weights.dtype)  # [1, L]
    on_simplex = (weights - shift).clamp(min=0.0)
    return torch.where(clipped.sum(0, keepdim=True) <= 1.0, clipped, on_simplex)
