"""RegMean++ (Nguyen et al., "RegMean++: Enhancing Effectiveness and Generalization of Regression Mean for
Model Merging", TMLR 2026, arXiv 2508.03121; official code nthehai01/RegMean-plusplus, the same as FusionBench's
fusion_bench/method/regmean_plusplus/regmean_plusplus.py ``RegMeanAlgorithmPlusPlus.run``). RegMean's closed form
per linear / convolution layer (merging/methods/regmean.py),

    W*ᵀ = (Σ_i G̃_i)^{-1} Σ_i G̃_i W_iᵀ,     G̃_i = α·G_i + (1 − α)·diag(G_i),

with the Gram matrices of a block taken on the inputs that the *merged* earlier blocks produce: blocks are merged
in the order the forward pass reaches them, and block b's G_i are collected while task i's proxy batches run
through the merged blocks before b and candidate i's own block b (so inside the block, each layer sees candidate
i's sublayers, as the official code runs the fine-tuned block on the merged input). RegMean collects every G_i on
candidate i alone.

A block is a tensor's name up to its first layer index (``merging.config.LAYER``: ``encoder.layer.3``,
``_blocks.5``); a linear or convolution layer outside the numbered blocks (a CNN's stem and head, a pooler) is
a block of its own. Every other tensor (biases, norms, embeddings) is the uniform average, as in RegMean: in a
numbered block with a layer it enters the merged model with that block; outside the blocks, or in a numbered
block without any layer (nothing to solve there), from the start. (The official code
leaves the final norm at the pre-trained value, a side effect of merging only the blocks; here it is averaged.
It also averages a ViT's patch-embedding convolution with the embeddings; here, a convolution, it is solved as
a block of its own.)
Cost: one pass over each task's proxy batches per block. Defaults as RegMean here; the official CLIP config uses
α = 0.95 on 256 training examples per task.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import LAYER
from ..errors import MergeError
from ..objective import Objective
from ..registry import register_data_driven
from ..statistics import (
    Tensors,
    batches_of,
    check_candidates,
    paired_tasks,
    regression_modules,
    uniform_average,
)
from .base import DataDrivenInputs, DataDrivenResult
from .regmean import RegMeanParams, candidate_grams, regmean_weight

PAPER = "https://arxiv.org/abs/2508.03121"


def block_of(name: str) -> str | None:
    """A tensor's numbered block, its name up to the first layer index (``encoder.layer.3``), or None outside the
    numbered blocks."""
    match = LAYER.search(name)
    return name[:match.end() - 1] if match else None


def forward_order(objective: Objective, params: Tensors, task: str, layers: Sequence[str]) -> list[str]:
    """``layers`` (linear / convolution weight names) in the order one forward pass first calls them."""
    modules = regression_modules(objective.model(task), layers)
    order: list[str] = []
    handles = [module.register_forward_hook(lambda *_, w=weight: order.append(w) if w not in order else None)
               for weight, module in modules.items()]
    try:
        with torch.no_grad():
            objective.logits(task, params, next(iter(batches_of(objective, task, "proxy"))))
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(layers) - set(order))
    if missing:
        raise MergeError(f"layers {missing[:5]} are never called on task '{task}': RegMean++ merges every "
                         "linear and convolution layer in the order the forward pass reaches it")
    return order


def merge_blocks(order: Sequence[str]) -> list[list[str]]:
    """Layers grouped into blocks, in the order the forward pass first reaches each block."""
    blocks: dict[str, list[str]] = {}
    for weight in order:
        blocks.setdefault(block_of(weight) or weight, []).append(weight)
    return list(blocks.values())


def regmean_plusplus_merge(objective: Objective, candidates: Sequence[Tensors], params: RegMeanParams | None = None,
                           *, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Merge ``candidates`` (candidate i fine-tuned on ``tasks[i]``, default ``objective.tasks``) with RegMean++:
    block by block, each block's Gram matrices on the merged earlier blocks' outputs."""
    params = params or RegMeanParams()
    names = check_candidates(candidates)
    tasks = paired_tasks(objective, candidates, tasks)
    layers = sorted(regression_modules(objective.model(tasks[0]), names))
    if not layers:
        raise MergeError("no nn.Linear or nn.Conv2d module of the task models has its weight among the mergeable "
                         f"tensors ({names[:5]}{'…' if len(names) > 5 else ''}); RegMean++ would be a plain average")
    merged = uniform_average(candidates, [n for n in names if n not in layers])
    with_layers = {block_of(n) for n in layers}  # a tensor outside them (no block, or a block without a layer)
    done = {n for n in merged if block_of(n) is None or block_of(n) not in with_layers}  # is merged from the start
    for block in merge_blocks(forward_order(objective, dict(candidates[0]), tasks[0], layers)):
        grams = [candidate_grams(objective, {n: merged[n] if n in done else candidate[n] for n in names}, task,
                                 params, layers=block)  # this block's layers only
                 for candidate, task in zip(candidates, tasks)]
        for weight in block:
            merged[weight] = regmean_weight([c[weight] for c in candidates], [g[weight] for g in grams],
                                            params.alpha, params.ridge, name=weight)
        keys = {block_of(weight) for weight in block} - {None}
        done |= set(block) | {n for n in merged if block_of(n) in keys}
    return {name: merged[name] for name in names}


def _merge(inputs: DataDrivenInputs) -> DataDrivenResult:
    objective, tasks = inputs.paired()
    return regmean_plusplus_merge(objective, inputs.bodies(), inputs.params, tasks=tasks), {}


register_data_driven("regmean_plusplus", PAPER, RegMeanParams, _merge,
                     data="proxy: inputs of each candidate's own task, through the merged earlier blocks (Gram "
                          "matrices of every linear and convolution layer)")
