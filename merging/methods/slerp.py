"""SLERP between two models, tensor by tensor (Shoemake, "Animating rotation with quaternion curves",
SIGGRAPH 1985; used for LLM merging by mergekit, arXiv 2403.13257):

    cos θ = ⟨v0, v1⟩ / (‖v0‖ ‖v1‖),   θ(t) = sin((1−t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1

with v0 = models[0] (t = 0) and v1 = models[1] (t = 1), falling back to (1−t)·v0 + t·v1 when the two
are nearly colinear (|cos θ| > ``colinear_threshold``, mergekit's 0.9995).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from ..registry import register
from ..tensor_ops import slerp_coefficients
from .base import Chunk, Method, Params


class SlerpParams(Params):
    t: float = Field(ge=0, le=1)
    colinear_threshold: float = Field(0.9995, gt=0, le=1)


@register("slerp", paper="https://dl.acm.org/doi/10.1145/325165.325242")
class Slerp(Method):
    Params = SlerpParams
    min_models = max_models = 2
    uses_base = False  # the two ends are the models (mergekit's base_model is listed as the first)
    passes = 1

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        v = models.double()  # [2, c]
        return torch.stack([v[0] @ v[0], v[1] @ v[1], v[0] @ v[1]])  # [3]

    def conclude(self, pass_index: int, total: torch.Tensor, stats: dict[str, Any], numel: int) -> None:
        sq0, sq1, dot = total.tolist()
        cos = dot / math.sqrt(sq0 * sq1) if sq0 > 0 and sq1 > 0 else 1.0
        stats["c0"], stats["c1"] = slerp_coefficients(self.params.t, cos, self.params.colinear_threshold)

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        return stats["c0"] * models[0] + stats["c1"] * models[1]
