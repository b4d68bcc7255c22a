"""Pure tensor primitives that the merge methods compose.

Shapes: ``n`` models, ``c`` elements of one chunk of a flattened tensor. ``tvs`` are task vectors
τ_i = θ_i − θ_base stacked as ``[n, c]``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

HIGH_BINS = 1 << 15  # |x| as float32 bits, high half: sign bit is 0, so 15 bits remain
LOW_BINS = 1 << 16


def task_vectors(base: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
    """τ_i = θ_i − θ_base.  base: [c], models: [n, c] -> [n, c]."""
    return models - base


def _magnitude_bits(tvs: torch.Tensor) -> torch.Tensor:
    """Bit pattern of |x| in float32: for non-negative floats the int32 order is the float order."""
    return tvs.abs().float().contiguous().view(torch.int32)


def magnitude_high_histogram(tvs: torch.Tensor) -> torch.Tensor:
    """Pass 1 of an exact top-k threshold: histogram of the high 16 bits of |τ|. [n, c] -> [n, 2^15]."""
    high = _magnitude_bits(tvs) >> 16  # [n, c]
    return torch.stack([torch.bincount(row, minlength=HIGH_BINS) for row in high])


def select_high_bin(high_hist: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The high-bits bin holding each row's k-th largest magnitude, and how many of the k remain to be
    found inside it.  high_hist: [n, B], k: [n] (1 <= k <= total) -> (bin [n], k_left [n])."""
    from_top = high_hist.flip(-1).cumsum(-1)  # [n, B]: count of elements in this bin or above
    index = torch.searchsorted(from_top, k.unsqueeze(1)).squeeze(1)  # [n]
    above = from_top.gather(1, index.unsqueeze(1)).squeeze(1) - high_hist.flip(-1).gather(
        1, index.unsqueeze(1)).squeeze(1)
    return high_hist.shape[1] - 1 - index, k - above


def magnitude_low_histogram(tvs: torch.Tensor, high_bin: torch.Tensor) -> torch.Tensor:
    """Pass 2: histogram of the low 16 bits of |τ| among elements in each row's ``high_bin``.
    [n, c] -> [n, 2^16]."""
    bits = _magnitude_bits(tvs)  # [n, c]
    rows = []
    for row, wanted in zip(bits, high_bin.tolist()):
        inside = row[(row >> 16) == wanted]  # the few elements sharing the threshold's high bits
        rows.append(torch.bincount(inside & 0xFFFF, minlength=LOW_BINS))
    return torch.stack(rows)


def select_threshold(low_hist: torch.Tensor, high_bin: torch.Tensor, k_left: torch.Tensor) -> torch.Tensor:
    """Finish the exact k-th largest |τ| per row from the pass-2 histogram. -> [n] float32."""
    low, _ = select_high_bin(low_hist, k_left)
    bits = (high_bin << 16 | low).to(torch.int32)
    return bits.view(torch.float32)


def kth_largest_magnitude(tvs: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Exact k-th largest |τ| of each row (+inf where k = 0), by two histogram passes.
    ``prune_magnitude`` with this threshold keeps the top-k magnitudes (all ties at the threshold).
    tvs: [n, c], k: [n] int64 -> [n] float32."""
    k = k.to(torch.int64)
    safe_k = k.clamp(min=1)
    high_bin, k_left = select_high_bin(magnitude_high_histogram(tvs), safe_k)
    threshold = select_threshold(magnitude_low_histogram(tvs, high_bin), high_bin, k_left)
    return torch.where(k > 0, threshold, torch.full_like(threshold, math.inf))


def prune_magnitude(tvs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """TIES trim: keep τ_i where |τ_i| >= t_i, zero elsewhere. [n, c], [n] -> [n, c]."""
    keep = tvs.abs() >= thresholds.to(tvs).unsqueeze(1)  # [n, c]
    return torch.where(keep, tvs, 0.0)


def random_keep_mask(shape: tuple[int, int], keep_prob: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """DARE mask: element (i, j) kept with probability keep_prob[i]; draws row 0 first, then row 1, ...
    (the same Bernoulli draws as ``torch.bernoulli(full(p))`` on a generator in the same state)."""
    uniform = torch.rand(shape, generator=generator)  # [n, c]
    return uniform < keep_prob.to(uniform).unsqueeze(1)


def elect_sign(weighted_tvs: torch.Tensor, by: Literal["mass", "count"]) -> torch.Tensor:
    """TIES sign election γ = sgn(Σ_i τ_i) ("mass") or sgn(Σ_i sgn τ_i) ("count"); ties go to +1.
    [n, c] -> [c] of ±1."""
    votes = weighted_tvs.sum(0) if by == "mass" else weighted_tvs.sign().sum(0)  # [c]
    return torch.where(votes >= 0, 1.0, -1.0).to(weighted_tvs.dtype)


def disjoint_merge(weighted_tvs: torch.Tensor, weights: torch.Tensor, sign: torch.Tensor,
                   normalize: bool) -> torch.Tensor:
    """TIES disjoint merge: Σ_{i∈A} w_i τ_i / Σ_{i∈A} w_i over A = {i : sgn(w_i τ_i) = γ}
    (the plain sum when not ``normalize``; positions with A empty get 0).
    weighted_tvs: [n, c] (already w_i τ_i), weights: [n], sign: [c] -> [c]."""
    aligned = weighted_tvs * sign  # [n, c]: positive exactly where sgn(w_i τ_i) = γ
    merged = aligned.clamp(min=0).sum(0) * sign  # [c]: Σ_{i∈A} w_i τ_i
    if not normalize:
        return merged
    divisor = weights.to(aligned) @ (aligned > 0).to(aligned)  # [c]: Σ_{i∈A} w_i
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
