"""Task arithmetic (Ilharco et al., "Editing models with task arithmetic", ICLR 2023, arXiv 2212.04089):

    τ_i = θ_i − θ_base,     θ = θ_base + λ · Σ_i w_i τ_i        (÷ Σ_i w_i when ``normalize``)

``w_i`` is each model's ``weight`` (its λ_i in the paper); a negative weight negates a task ("forgetting
via negation", Sec. 3 of the paper). ``lambda`` scales the sum (mergekit's meaning).
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..registry import register
from .base import Chunk, Method, Params


class TaskArithmeticModelParams(Params):
    weight: float = 1.0


class TaskArithmeticParams(Params):
    scale: float = Field(1.0, alias="lambda")
    normalize: bool = False


@register("task_arithmetic", paper="https://arxiv.org/abs/2212.04089")
class TaskArithmetic(Method):
    Params = TaskArithmeticParams
    affine_in = "scale"
    ModelParams = TaskArithmeticModelParams

    def coefficients(self) -> tuple[torch.Tensor, float]:
        """θ = base + scale·Σ w_i (θ_i − base) = (1 − scale·Σ w_i)·base + Σ (scale·w_i)·θ_i: the models'
        coefficients [n] (float64) and the base's."""
        weights = self.model_values("weight")  # [n]
        total = float(weights.sum())
        scale = self.params.scale / (total if self.params.normalize and abs(total) > 1e-8 else 1.0)
        coefficients = scale * weights
        return coefficients, 1.0 - float(coefficients.sum())

    def output_reveals_nonfinite_inputs(self, dtype: torch.dtype) -> bool:
        coefficients, beta = self.coefficients()  # as addmv will see them: a beta of 0 skips the base entirely
        return bool((coefficients.to(dtype) != 0).all()) and bool(torch.tensor(beta, dtype=dtype) != 0)

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        coefficients, beta = self.coefficients()  # one pass over the models
        return torch.addmv(base, models.t(), coefficients.to(models), beta=beta)
