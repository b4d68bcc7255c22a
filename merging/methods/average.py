"""Uniform / weighted model soup (Wortsman et al., "Model soups", ICML 2022, arXiv 2203.05482):

    θ = Σ_i w_i θ_i / Σ_i w_i        (uniform soup: all w_i = 1)

The base model is not part of the formula; it only supplies unmerged tensors, config and tokenizer.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import MergeError
from ..registry import register
from .base import Chunk, Method, Params


class AverageModelParams(Params):
    weight: float = 1.0


class AverageParams(Params):
    normalize: bool = True  # divide by Σ w_i (False: plain weighted sum, as mergekit's linear option)


@register("average", paper="https://arxiv.org/abs/2203.05482")
class Average(Method):
    Params = AverageParams
    ModelParams = AverageModelParams
    uses_base = False

    def check(self) -> None:
        weights = self.model_values("weight")
        if self.params.normalize and float(weights.sum()) == 0:
            raise MergeError(f"the weights {weights.tolist()} sum to 0, and normalize divides by their sum; "
                             "change a weight or set normalize: false")

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        weights = self.model_values("weight").to(models)  # [n]
        merged = weights @ models  # [c]
        if self.params.normalize:
            merged = merged / weights.sum()
        return merged
