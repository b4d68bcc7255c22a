"""Multi-SLERP: barycentric interpolation of n models on the hypersphere (C. Goddard, "Multi-SLERP",
https://goddard.blog/posts/multislerp-wow-what-a-cool-idea), as mergekit 0.1.5 computes it
(merge_methods/multislerp.py), over each whole flattened tensor:

    X_i = θ_i − θ_base  (``use_base``)  or  X_i = θ_i,      w_i ← w_i / Σ_j w_j  (``normalize``)
    u_i = X_i / (‖X_i‖ + ε),   m = Σ_i w_i u_i,   m̂ = m / ‖m‖
    T = Σ_i w_i (u_i − ⟨u_i, m̂⟩ m̂)                         (the tangent at m̂)
    θ = (Σ_i w_i ‖X_i‖) · (cos(‖T‖ + ε) m̂ + sin(‖T‖ + ε)/(‖T‖ + ε) · T)  [+ θ_base]

One model: θ = θ_1 (copied). Where ‖m‖ < ε: two models give the linear w_1 X_1 + w_2 X_2 [+ θ_base]; more
are an error (antipodal task vectors whose weights cancel), as in mergekit.

The tangent T is zero in exact arithmetic: Σ_i w_i ⟨u_i, m̂⟩ = ⟨m, m̂⟩ = ‖m‖, so T = m − ‖m‖ m̂ = 0 (it holds
whatever the weights and ε), and mergekit's exponential map returns cos(ε) · m̂ plus the rounding noise of T.
Here the result is computed in that closed form,

    θ = cos ε · (Σ_i w_i ‖X_i‖) / ‖m‖ · Σ_i b_i X_i  [+ θ_base],    b_i = w_i / (‖X_i‖ + ε),

a per-element linear combination whose coefficients come from two streamed passes (float64): the norms
‖X_i‖, then ‖m‖ = ‖Σ_i b_i X_i‖ summed element by element (so that exactly cancelling task vectors give
exactly 0, as in mergekit). mergekit's base is optional: ``use_base: true`` (the default here, where a base is
always given) is mergekit with a base_model, ``false`` without one.

Deviations: float rounding only (mergekit's float32 T noise is left out), except that weights summing to 0
with ``normalize`` are refused (mergekit divides by 0 and writes NaN/Inf), and ε must be positive.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from ..errors import MergeError
from ..registry import register
from .base import Chunk, Method, Params


class MultiSlerpModelParams(Params):
    weight: float = 1.0  # mergekit requires it (no default)


class MultiSlerpParams(Params):
    normalize: bool = True  # mergekit: normalize_weights; divide the weights by their sum
    eps: float = Field(1e-8, gt=0)
    use_base: bool = True  # interpolate task vectors θ_i − θ_base (mergekit: base_model given)


@register("multislerp", paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea")
class MultiSlerp(Method):
    Params = MultiSlerpParams
    ModelParams = MultiSlerpModelParams
    min_models = 1
    uses_base = True  # with use_base (the default); see the module docstring

    def __init__(self, params: Params, model_params: list[Params]) -> None:
        super().__init__(params, model_params)
        self.passes = 2 if len(model_params) > 1 else 0  # one model is copied

    def weights(self) -> torch.Tensor:
        weights = self.model_values("weight")  # [n] float64
        return weights / weights.sum() if self.params.normalize else weights

    def check(self) -> None:
        weights = self.model_values("weight")
        if len(weights) > 1 and self.params.normalize and float(weights.sum()) == 0:
            raise MergeError(f"the weights {weights.tolist()} sum to 0, and normalize divides by their sum; "
                             "change a weight or set normalize: false")

    def _vectors(self, base: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        return models - base if self.params.use_base else models

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        x = self._vectors(base.double(), models.double())  # [n, c]
        stats["tensor"] = chunk.name
        if pass_index == 0:
            return x.square().sum(1)  # [n]: ‖X_i‖²
        mean = stats["b"].to(x.device) @ x  # [c]: Σ_i b_i X_i
        return mean.square().sum()  # ‖m‖²

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        eps = self.params.eps
        weights = self.weights()
        if pass_index == 0:
            stats["norms"] = total.cpu().clamp(min=0).sqrt()  # [n]
            stats["b"] = weights / (stats["norms"] + eps)
            return
        mean_norm = math.sqrt(max(float(total), 0.0))
        if mean_norm < eps:
            if len(weights) != 2:
                raise MergeError(f"multislerp, tensor '{stats.get('tensor')}': the weighted sum of the unit vectors is "
                                 "zero (antipodal vectors, or sets of vectors, whose weights exactly balance out); "
                                 "change the weights")
            stats["coef"] = weights  # mergekit's fallback for two models: w_1 X_1 + w_2 X_2
            return
        scale = float(weights @ stats["norms"])  # Σ_i w_i ‖X_i‖
        stats["coef"] = math.cos(eps) * scale / mean_norm * stats["b"]  # [n]

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        if models.shape[0] == 1:
            return models[0].clone()
        merged = stats["coef"].to(models) @ self._vectors(base, models)
        return base + merged if self.params.use_base else merged
