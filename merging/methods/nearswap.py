"""NearSwap (alchemonaut, the merge behind https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001), per
element as mergekit 0.1.5 computes it (mergekit/merge_methods/nearswap.py): the base takes the model's value where
the two are near, and keeps its own where they are far,

    w_j = clamp(t / max(|θ_base,j − θ_j|, 1e-6), 0, 1)
    θ_j = w_j · θ_j + (1 − w_j) · θ_base,j

with θ the one merged model: |difference| ≤ t swaps in the model's value, a larger one moves toward it by
t / |difference|. Element-wise, so no pass. t = 0 gives the base. Deviation from mergekit: a negative t (which
mergekit takes, and which gives the base) is refused.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..registry import register
from .base import Chunk, Method, Params

DIFFERENCE_FLOOR = 1e-6  # mergekit: |θ_base − θ| is clamped to at least this before dividing


class NearSwapParams(Params):
    t: float = Field(ge=0)


@register("nearswap", paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001")
class NearSwap(Method):
    Params = NearSwapParams
    min_models = max_models = 1

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        model = models[0]
        weight = (self.params.t / (base - model).abs().clamp(min=DIFFERENCE_FLOOR)).clamp(min=0, max=1)
        return weight * model + (1 - weight) * base
