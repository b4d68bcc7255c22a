"""NuSLERP: SLERP of two models whose interpolation factor comes from per-model weights, optionally of their
task vectors, optionally per row or per column (Shoemake, "Animating rotation with quaternion curves",
SIGGRAPH 1985, for the interpolation; the variant is mergekit 0.1.5's ``nuslerp``,
merge_methods/nuslerp.py, which this module reproduces):

    t = w_1 / (w_0 + w_1)                        (t = 1/2 where |w_0 + w_1| < 1e-6)
    v_i = θ_i − θ_base  (``use_base``)  or  v_i = θ_i
    cos Ω = clamp(⟨v_0, v_1⟩ / (max(‖v_0‖, 1e-7) · max(‖v_1‖, 1e-7)), −1, 1)
    v = sin((1−t)Ω)/sin Ω · v_0 + sin(tΩ)/sin Ω · v_1,   or  (1−t)·v_0 + t·v_1  where 1 − cos²Ω ≤ 1e-16
    θ = θ_base + v  (``use_base``)  or  θ = v

The vectors v_i are the whole flattened tensor (``flatten``, the default), else each vector along the last
dimension (a row of a 2-D weight, element e in row e // cols), or with ``row_wise`` each vector along the
first dimension (a column of a 2-D weight: element e belongs to vector e mod (numel / rows)). A 0-D or 1-D
tensor is one vector in every mode. The norms and inner product of each vector come from one streamed pass,
accumulated per vector ([vectors, 3] float64), so a tensor is never held whole; ``combine`` then applies the
two coefficients of the element's vector.

mergekit's base is optional: with a base_model the task vectors are interpolated (``use_base: true``, the
default here, where a base is always given), without one the models themselves (``use_base: false``).
Deviations: only float rounding (the statistics are float64; mergekit computes in the merge dtype).
"""
from __future__ import annotations

from typing import Any

import torch

from ..registry import register
from .base import Chunk, Method, Params

NORM_FLOOR = 1e-7  # mergekit's _normalize clamps a norm below this
EPS = 1e-8  # mergekit's colinearity tolerance: colinear where 1 − cos² ≤ EPS²


class NuSlerpModelParams(Params):
    weight: float = 1.0  # mergekit requires it (no default); t = w_1 / (w_0 + w_1)


class NuSlerpParams(Params):
    flatten: bool = True  # mergekit: nuslerp_flatten
    row_wise: bool = False  # mergekit: nuslerp_row_wise (vectors along the first dimension; without flatten)
    use_base: bool = True  # interpolate task vectors θ_i − θ_base (mergekit: base_model given)


def nuslerp_coefficients(t: float, sq0: torch.Tensor, sq1: torch.Tensor, dot: torch.Tensor) -> torch.Tensor:
    """(c0, c1) per vector so that nuslerp(t; v0, v1) = c0·v0 + c1·v1, from ‖v0‖², ‖v1‖², ⟨v0, v1⟩ (float64, [g]
    each) -> [2, g]."""
    norms = sq0.clamp(min=0).sqrt().clamp(min=NORM_FLOOR) * sq1.clamp(min=0).sqrt().clamp(min=NORM_FLOOR)
    cos = (dot / norms).clamp(-1, 1)
    colinear = (1 - cos.square()) <= EPS ** 2
    theta = torch.acos(torch.where(colinear, 0.0, cos))
    sin = torch.sin(theta)
    c0 = torch.where(colinear, 1.0 - t, torch.sin((1 - t) * theta) / sin)
    c1 = torch.where(colinear, t, torch.sin(t * theta) / sin)
    return torch.stack([c0, c1])


@register("nuslerp", paper="https://dl.acm.org/doi/10.1145/325165.325242")
class NuSlerp(Method):
    Params = NuSlerpParams
    ModelParams = NuSlerpModelParams
    min_models = max_models = 2
    uses_base = True  # with use_base (the default); see the module docstring
    passes = 1

    def interpolation_factor(self) -> float:
        w0, w1 = self.model_values("weight").tolist()
        total = w0 + w1
        return 0.5 if abs(total) < 1e-6 else w1 / total

    def _vectors(self, chunk: Chunk) -> tuple[int, torch.Tensor | None]:
        """How many vectors the tensor splits into, and the vector of each element of the chunk (None: one)."""
        shape, numel = chunk.shape, chunk.numel
        if self.params.flatten or len(shape) < 2 or numel == 0:
            return 1, None
        elements = torch.arange(chunk.start, chunk.stop)
        if self.params.row_wise:  # vectors along dim 0: element (i0, rest) belongs to vector `rest`
            count = numel // shape[0]
            return count, elements % count
        count = numel // shape[-1]
        return count, elements // shape[-1]

    def _ends(self, base: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        return models - base if self.params.use_base else models

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        v = self._ends(base.double(), models.double())  # [2, c]
        products = torch.stack([v[0] * v[0], v[1] * v[1], v[0] * v[1]])  # [3, c]
        count, vector_of = self._vectors(chunk)
        if vector_of is None:
            return products.sum(1).unsqueeze(0)  # [1, 3]
        sums = torch.zeros(count, 3, dtype=torch.float64, device=products.device)
        return sums.index_add_(0, vector_of.to(products.device), products.T)  # [vectors, 3]

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        total = total.cpu()
        stats["c"] = nuslerp_coefficients(self.interpolation_factor(), total[:, 0], total[:, 1], total[:, 2])

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        _, vector_of = self._vectors(chunk)
        c = stats["c"].to(models.device)  # [2, vectors]
        c = (c[:, :1] if vector_of is None else c[:, vector_of.to(models.device)]).to(models.dtype)  # [2, 1|c]
        v = self._ends(base, models)
        merged = c[0] * v[0] + c[1] * v[1]
        return base + merged if self.params.use_base else merged
