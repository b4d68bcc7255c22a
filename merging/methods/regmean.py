"""RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023,
arXiv 2212.09849). For every linear layer y = W x (PyTorch weight W [out, in]), the merged weight minimises
the summed regression error of the layer's outputs on each task's own inputs X_i [rows, in]:

    W* = argmin_W Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖²   ⇒   W*ᵀ = (Σ_i G_i)^{-1} Σ_i G_i W_iᵀ,     G_i = X_iᵀ X_i  [in, in]

with the paper's regularisation of the Gram matrices (off-diagonal entries scaled by α ∈ [0, 1]):

    G̃_i = α·G_i + (1 − α)·diag(G_i)

(α = 1: the plain least-squares solution; α = 0: a per-input-feature weighted average).

A convolution (``nn.Conv2d``, weight [out, in/g, kh, kw], g groups) is a linear layer on its receptive-field
patches: the rows of X_i are the patches of every example and output position, and each group k solves its
own system with its channels' patches (d = in/g·kh·kw): W_k*ᵀ = (Σ_i G̃_i,k)^{-1} Σ_i G̃_i,k W_i,kᵀ. A depthwise
convolution thus solves one d = kh·kw system per channel. (The paper merges linear layers only; this is the
same least-squares problem for the layers a CNN is made of.) Every other mergeable tensor (biases,
embeddings, normalisation weights) is the uniform average (1/n) Σ_i θ_i, as in the paper.

Statistics: G_i is collected with forward hooks on ``objective.model(task_i)`` while candidate i's tensors run
on task i's ``"proxy"`` batches (``merging.statistics.input_grams``). ``gram: mean`` divides G_i by its number
of input rows (so each task weighs the same whatever its proxy size; the reference implementations
bloomberg/dataless-model-merging and FusionBench do this), ``gram: sum`` keeps the literal X_iᵀX_i.
``ridge`` = r > 0 adds a pull towards the uniform average W̄ = (1/n) Σ_i W_i:

    W* = argmin_W Σ_i tr((W − W_i) G̃_i (W − W_i)ᵀ) + ρ‖W − W̄‖²_F
       ⇒   W*ᵀ = (Σ_i G̃_i + ρI)^{-1} (Σ_i G̃_i W_iᵀ + ρ W̄ᵀ)

with ρ = r·mean(diag Σ_i G̃_i) over the whole layer, so an input feature that is zero on every task's proxy
data (a dead ReLU6 channel of a CNN) gets the average instead of a singular system (off by default: a
singular system is an error).

Defaults: α = 0.9. α is a tuned hyper-parameter: FusionBench's base config uses 0.1, FW-Merging's code 1.0;
set it explicitly to reproduce a paper table. Layers are the ``nn.Linear`` and zero-padded ``nn.Conv2d``
modules whose weight is mergeable (GPT-2's ``Conv1D`` [in, out] is not covered).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ..errors import MergeError
from ..objective import Objective
from ..registry import register_data_driven
from ..statistics import Grams, Tensors, check_candidates, input_grams, paired_tasks, uniform_average
from .base import DataDrivenInputs, DataDrivenResult, Params

PAPER = "https://arxiv.org/abs/2212.09849"


class RegMeanParams(Params):
    alpha: float = Field(0.9, ge=0.0, le=1.0)  # off-diagonal scale of each Gram matrix
    gram: Literal["mean", "sum"] = "mean"  # G_i / rows_i (reference code) or the literal X_iᵀX_i
    ridge: float = Field(0.0, ge=0.0)  # pull towards the average, relative to mean(diag Σ G̃_i)


def regularise_gram(gram: Tensor, alpha: float) -> Tensor:
    """G̃ = α·G + (1 − α)·diag(G), per matrix.  [..., d, d] -> [..., d, d]."""
    return alpha * gram + (1.0 - alpha) * torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))


def regmean_weight(weights: Sequence[Tensor], grams: Sequence[Tensor], alpha: float = 1.0, ridge: float = 0.0,
                   name: str = "weight") -> Tensor:
    """The RegMean closed form for one layer, W = ((Σ G̃_i)^{-1} Σ G̃_i W_iᵀ)ᵀ, solved in float64.

    A linear layer: weights n × [out, in], grams n × [in, in]. A convolution: weights n × [out, in/g, kh, kw],
    grams n × [g, d, d] (d = in/g·kh·kw, ``merging.statistics.conv_patches``): group k's output channels
    (rows k·out/g … (k+1)·out/g − 1, flattened to [out/g, d]) are solved with group k's Grams. Returns the
    weights' shape and dtype."""
    if len(weights) != len(grams) or not weights:
        raise MergeError(f"'{name}': {len(weights)} weight(s) but {len(grams)} Gram matrix(ces)")
    shape = tuple(weights[0].shape)
    groups = grams[0].shape[0] if grams[0].dim() == 3 else 1
    d = grams[0].shape[-1]
    if shape[0] % groups or weights[0].numel() != shape[0] * d:
        raise MergeError(f"'{name}': a weight of shape {shape} does not fit Gram matrices of shape "
                         f"{tuple(grams[0].shape)}")
    wide = dict(dtype=torch.float64, device=weights[0].device)
    lhs = torch.zeros(groups, d, d, **wide)  # Σ G̃_i  [g, d, d]
    rhs = torch.zeros(groups, d, shape[0] // groups, **wide)  # Σ G̃_i W_iᵀ  [g, d, out/g]
    for i, (w, g) in enumerate(zip(weights, grams)):
        if tuple(g.shape) != tuple(grams[0].shape):
            raise MergeError(f"'{name}': Gram matrix {i} has shape {tuple(g.shape)}, expected "
                             f"{tuple(grams[0].shape)} for a weight of shape {tuple(w.shape)}")
        g_reg = regularise_gram(g.to(**wide).reshape(groups, d, d), alpha)  # [g, d, d]
        lhs += g_reg
        rhs += g_reg @ w.double().reshape(groups, -1, d).transpose(1, 2)  # [g, d, out/g]
    if ridge > 0:
        rho = ridge * torch.diagonal(lhs, dim1=-2, dim2=-1).mean()
        mean_t = sum(w.double().reshape(groups, -1, d).transpose(1, 2) for w in weights) / len(weights)
        lhs += rho * torch.eye(d, **wide)
        rhs += rho * mean_t  # [g, d, out/g]
    try:
        merged_t = torch.linalg.solve(lhs, rhs)  # [g, d, out/g]
    except RuntimeError as error:  # torch.linalg.LinAlgError: singular Σ G̃_i
        raise MergeError(f"'{name}': the summed Gram matrix is singular (an input feature never varies on any "
                         f"task's proxy data?); set `ridge` > 0 or give more proxy data ({error})") from None
    return merged_t.transpose(1, 2).reshape(shape).to(weights[0].dtype)


def candidate_grams(objective: Objective, candidate: Tensors, task: str, params: RegMeanParams,
                    layers: Sequence[str] | None = None) -> dict[str, Tensor]:
    """G per linear / convolution weight name (of ``layers`` only, when given) while ``candidate`` runs on
    ``task`` (÷ rows for ``gram: mean``)."""
    grams: Grams = input_grams(objective, candidate, task, layers=layers)
    return {w: g / grams.rows[w] if params.gram == "mean" else g for w, g in grams.gram.items()}


def collect_grams(objective: Objective, candidates: Sequence[Tensors], tasks: Sequence[str],
                  params: RegMeanParams) -> list[dict[str, Tensor]]:
    """G_i per linear / convolution weight name, candidate i on task i (÷ rows for ``gram: mean``)."""
    return [candidate_grams(objective, candidate, task, params) for candidate, task in zip(candidates, tasks)]


def regmean_merge(objective: Objective, candidates: Sequence[Tensors], params: RegMeanParams | None = None,
                  *, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Merge ``candidates`` (candidate i fine-tuned on ``tasks[i]``, default ``objective.tasks``) with RegMean:
    the closed form above for every mergeable ``nn.Linear`` / ``nn.Conv2d`` weight, the uniform average
    elsewhere."""
    params = params or RegMeanParams()
    names = check_candidates(candidates)
    tasks = paired_tasks(objective, candidates, tasks)
    grams = collect_grams(objective, candidates, tasks, params)
    layers = set(grams[0])
    for i, g in enumerate(grams):
        if set(g) != layers:
            raise MergeError(f"task '{tasks[i]}' sees layers {sorted(g)}, task '{tasks[0]}' sees "
                             f"{sorted(layers)}: RegMean needs the same mergeable layers in every task model")
    if not layers:
        raise MergeError("no nn.Linear or nn.Conv2d module of the task models has its weight among the mergeable "
                         f"tensors ({names[:5]}{'…' if len(names) > 5 else ''}); RegMean would be a plain average")
    merged = uniform_average(candidates, [n for n in names if n not in layers])
    for weight in sorted(layers):
        merged[weight] = regmean_weight([c[weight] for c in candidates], [g[weight] for g in grams],
                                        params.alpha, params.ridge, name=weight)
    return {name: merged[name] for name in names}


def _merge(inputs: DataDrivenInputs) -> DataDrivenResult:
    objective, tasks = inputs.paired()
    return regmean_merge(objective, inputs.bodies(), inputs.params, tasks=tasks), {}


register_data_driven("regmean", PAPER, RegMeanParams, _merge,
                     data="proxy: inputs of each candidate's own task (Gram matrices of every linear and convolution layer)")
