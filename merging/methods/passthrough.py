"""Passthrough (mergekit's ``passthrough``): one model's tensor as it is, optionally scaled,

    θ = s · θ_1        (s = ``scale``, per model; 1 when not given)

No merge by itself: with ``slices`` (merging/slices.py) it assembles a model from layer ranges of others, the
layer-stacking "frankenmerges" (e.g. SOLAR's depth up-scaling, Kim et al. 2023, arXiv 2312.15166).
"""
from __future__ import annotations

from typing import Any

import torch

from ..registry import register
from .base import Chunk, Method, Params


class PassthroughModelParams(Params):
    scale: float = 1.0


@register("passthrough", paper="https://arxiv.org/abs/2312.15166")
class Passthrough(Method):
    ModelParams = PassthroughModelParams
    min_models = max_models = 1
    uses_base = False

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        scale = self.model_params[0].scale
        return models[0] if scale == 1.0 else models[0] * scale
