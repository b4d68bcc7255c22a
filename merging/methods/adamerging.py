"""AdaMerging (Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR 2024,
arXiv 2310.02575): task-arithmetic coefficients learned without labels by minimising the prediction entropy
of the merged model on each task's unlabelled test inputs.

    τ_i = θ_i − θ_base
    task-wise:   θ(λ) = θ_base + Σ_i λ_i τ_i                       λ ∈ [0, 1]^n
    layer-wise:  θ_l(λ) = θ_base,l + Σ_i λ_{i,l} τ_{i,l}           one λ per candidate and mergeable tensor l
    min_λ  Σ_t (1/|B_t|) Σ_{x∈B_t} H(softmax(f_t(x; θ(λ)))),       H(p) = −Σ_c p_c log p_c

f_t is ``objective.logits(task t)`` (so ∂H/∂λ flows through the task's real model), B_t one ``"unlabelled"``
batch of task t per step (the task's batches are cycled in order; ``entropy_batches: shuffled`` cuts them into
pieces of at most ``batch_size`` rows and draws the pieces in a fresh seeded order every pass, the paper codes'
shuffled test loader of batch 16, rows keeping their neighbours within a piece); the entropy is averaged over
every leading dimension of the logits (examples, and positions for token-level outputs) and summed over tasks.
Optimiser as the paper's code: λ initialised to 0.3, Adam (lr 1e-3), λ clamped to [0, 1] after every step, 500
steps. ``simplex: true`` projects λ instead, from its initial value on and after every step, onto
{λ ≥ 0, Σ_i λ_i ≤ 1} (per tensor for layer-wise λ; ``tensor_ops.project_capped_simplex``): θ(λ) then stays, tensor
by tensor, in the convex hull of the base and the candidates (FW-Merging soft's feasible inner step).

Regression tasks (one output, logits [..., 1]) have no predictive distribution to sharpen: they are skipped
(listed in ``AdaMergingHistory.skipped``); if every task is a regression task it is an error.

``loss: cross_entropy`` replaces the entropy by the task's labelled loss (``objective.loss``: cross-entropy, MSE
for regression) on ``batch_size`` training examples drawn afresh at every step (``objective.sample``, seeded by
``seed``, the task and the step): the supervised inner loop FW-Merging's soft variant ran for its paper's
figures (hmarkc/fusion_bench, branch master, fusion_bench/method/fw_merging/fw_soft.py: ``entropy_loss =
False``, training batches of 16; the official loader reshuffles each epoch, here each step draws anew).

Data-parallel under ``accelerate launch`` (merging/distributed.py): every process draws the same batch B_t and
runs a contiguous share of its rows; Σ_x H, |B_t| and ∂(Σ_x H/|B_t|)/∂λ are all-reduced, so every process takes
the single-process Adam step and holds the same λ.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from .. import distributed
from ..errors import MergeError
from ..objective import Batch, Objective, sample_batches, seed_of
from ..registry import register_data_driven
from ..statistics import Tensors, batch_rows, batches_of, check_candidates, local_rows, slice_batch
from ..tensor_ops import project_capped_simplex
from .base import DataDrivenInputs, DataDrivenResult, Params

PAPER = "https://arxiv.org/abs/2310.02575"


class AdaMergingParams(Params):
    granularity: Literal["task", "layer"] = "task"
    init: float = Field(0.3, ge=0.0, le=1.0)  # initial λ (FW-Soft re-runs it with 1e-2 after its first step)
    lr: float = Field(1e-3, gt=0.0)
    steps: int = Field(500, ge=0)
    clamp: bool = True  # λ clamped to [0, 1] after every step (FW-Merging soft's inner loop does not clamp)
    simplex: bool = False  # λ projected onto {λ ≥ 0, Σ_i λ_i ≤ 1} per tensor instead (the candidates' hull)
    loss: Literal["entropy", "cross_entropy"] = "entropy"  # unlabelled test entropy, or labelled train loss
    batch_size: int = Field(16, gt=0)  # examples per task and step (cross_entropy; entropy_batches: shuffled)
    entropy_batches: Literal["cycled", "shuffled"] = "cycled"  # loss entropy: the objective's batches in order,
    # or pieces of ≤ batch_size rows in a fresh seeded order every pass (the official shuffled test loader)
    seed: int = 0  # draws of the training batches (loss: cross_entropy) and the pieces' order (shuffled)


@dataclass
class AdaMergingHistory:
    """``entropy[k]``: the summed objective before update k (``steps + 1`` values, the last one at the returned
    λ; the labelled loss when ``loss`` is cross_entropy); ``per_task[k]``: its terms by task; ``lambdas``: the
    final coefficients, [n] (task-wise) or [n, L] (layer-wise, columns in the order of ``names``);
    ``skipped``: regression tasks left out of the entropy."""

    names: list[str]
    lambdas: Tensor
    entropy: list[float] = field(default_factory=list)
    per_task: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    loss: str = "entropy"


def entropy_sum(logits: Tensor) -> tuple[Tensor, int]:
    """Σ_m H(softmax(logits_m)) over every leading index m, and the number M of those indices.  [..., C] -> []."""
    log_p = torch.log_softmax(logits.float(), dim=-1)  # [..., C]
    return -(log_p.exp() * log_p).sum(), logits.numel() // max(logits.shape[-1], 1)


def merge_with(base: Tensors, task_vectors: dict[str, Tensor], lambdas: Tensor, names: list[str]
               ) -> dict[str, Tensor]:
    """θ(λ): base + Σ_i λ_i τ_i per tensor; lambdas [n] (shared by every tensor) or [n, L] (column l for
    ``names[l]``). Differentiable in ``lambdas``."""
    merged = {}
    for index, name in enumerate(names):
        lam = lambdas if lambdas.dim() == 1 else lambdas[:, index]  # [n]
        tvs = task_vectors[name]  # [n, *shape]
        merged[name] = base[name] + torch.tensordot(lam.to(tvs.dtype), tvs, dims=1)  # [*shape]
    return merged


class _Draws:
    """Fresh labelled training batches of one task: ``objective.sample`` with a seed per (run seed, task, step)."""

    def __init__(self, objective: Objective, task: str, size: int, seed: int) -> None:
        self.objective, self.task, self.size, self.seed, self.step = objective, task, size, seed, 0

    def next(self) -> Batch:
        self.step += 1
        return sample_batches(self.objective, self.task, self.size, self.size, (self.seed, self.task, self.step))[0]


class _Cycle:
    """Endless batches of one task's split: the objective's iterable, restarted when exhausted."""

    def __init__(self, objective: Objective, task: str, split: str) -> None:
        self.objective, self.task, self.split = objective, task, split
        self.iterator: Iterator[Batch] = batches_of(objective, task, split)

    def next(self) -> Batch:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = batches_of(self.objective, self.task, self.split)
            return next(self.iterator)


class _Shuffled:
    """Endless batches of one task's split as a shuffled loader gives them: the objective's batches cut into
    pieces of at most ``size`` rows, every pass over them in a new order drawn from ``seed`` and the task."""

    def __init__(self, objective: Objective, task: str, split: str, size: int, seed: int) -> None:
        self.pieces: list[Batch] = []
        for batch in batches_of(objective, task, split):
            rows = batch_rows(batch)
            self.pieces += [slice_batch(batch, start, min(start + size, rows), rows) for start in range(0, rows, size)]
        self.generator = torch.Generator().manual_seed(seed_of((seed, task, split)))
        self.order: list[int] = []

    def next(self) -> Batch:
        if not self.order:
            self.order = torch.randperm(len(self.pieces), generator=self.generator).tolist()
        return self.pieces[self.order.pop()]


def _stream(objective: Objective, task: str, params: AdaMergingParams) -> _Draws | _Cycle | _Shuffled:
    """Where task ``task``'s batch of every step comes from (``loss`` and ``entropy_batches``)."""
    if params.loss == "cross_entropy":
        return _Draws(objective, task, params.batch_size, params.seed)
    if params.entropy_batches == "shuffled":
        return _Shuffled(objective, task, "unlabelled", params.batch_size, params.seed)
    return _Cycle(objective, task, "unlabelled")


def _constrain(lambdas: Tensor, params: AdaMergingParams) -> None:
    """In place: λ onto the capped simplex per tensor (``simplex``), else clamped to [0, 1] (``clamp``)."""
    with torch.no_grad():
        if params.simplex:
            columns = lambdas if lambdas.dim() == 2 else lambdas[:, None]  # [n, L] or [n, 1]
            lambdas.copy_(project_capped_simplex(columns).reshape(lambdas.shape))
        elif params.clamp:
            lambdas.clamp_(0.0, 1.0)


def adamerging(objective: Objective, base: Tensors, candidates: Sequence[Tensors],
               params: AdaMergingParams | None = None) -> tuple[dict[str, Tensor], AdaMergingHistory]:
    """Learn the coefficients (formula above) on every task of ``objective``; returns the merged tensors
    θ(λ) at the final λ and the optimisation history."""
    params = params or AdaMergingParams()
    names = check_candidates(candidates, base)
    base = {n: base[n].detach() for n in names}
    task_vectors = {n: torch.stack([c[n].detach() - base[n] for c in candidates]) for n in names}  # [n, *shape]
    shape = (len(candidates),) if params.granularity == "task" else (len(candidates), len(names))
    device = base[names[0]].device
    lambdas = torch.full(shape, params.init, dtype=torch.float32, device=device, requires_grad=True)
    _constrain(lambdas, params)
    optimiser = torch.optim.Adam([lambdas], lr=params.lr)
    history = AdaMergingHistory(names=names, lambdas=lambdas)
    supervised = params.loss == "cross_entropy"
    history.loss = params.loss
    streams = {task: _stream(objective, task, params) for task in objective.tasks}

    for step in range(params.steps + 1):
        optimiser.zero_grad()
        terms: dict[str, float] = {}
        training = step < params.steps  # the last pass only measures the objective at the final λ
        for task in objective.tasks:
            if task in history.skipped:
                continue
            batch = local_rows(streams[task].next())  # this process's rows of the step's batch (None: none)
            total, count, one_output = None, 0, 0
            with torch.set_grad_enabled(training):
                if batch is not None:
                    # θ(λ) is rebuilt per task so that one task's activations are freed by its own backward
                    merged = merge_with(base, task_vectors, lambdas, names)
                    logits = objective.logits(task, merged, batch)  # [..., C]
                    if supervised:  # Σ over this process's rows of the labelled loss
                        count = logits.shape[0] if logits.dim() else 1
                        total = objective.loss(task, logits, batch) * count
                    else:
                        one_output = int(logits.shape[-1] == 1)
                        total, count = entropy_sum(logits)  # Σ_m H over this process's M rows
            summed, count, one_output = distributed.all_reduce_sum(
                (float(total.detach()) if total is not None else 0.0, count, one_output))
            if one_output:
                history.skipped.append(task)
                continue
            if training and total is not None:
                (total / count).backward()  # ∂ of this process's share of the task's mean entropy
            terms[task] = summed / count
        if not terms:
            raise MergeError(f"every task ({list(objective.tasks)}) has one output (regression): AdaMerging's "
                             "entropy objective needs at least one classification task")
        if training and distributed.world_size() > 1:
            grad = lambdas.grad if lambdas.grad is not None else torch.zeros_like(lambdas)
            lambdas.grad = distributed.all_reduce_sum(grad)  # [n] or [n, L]: Σ over processes
        history.per_task.append(terms)
        history.entropy.append(sum(terms.values()))
        if not training:
            break
        optimiser.step()
        _constrain(lambdas, params)

    with torch.no_grad():
        merged = merge_with(base, task_vectors, lambdas, names)
    history.lambdas = lambdas.detach().clone()
    return {n: merged[n].to(candidates[0][n].dtype) for n in names}, history


def _merge(inputs: DataDrivenInputs) -> DataDrivenResult:
    merged, history = adamerging(inputs.objective, inputs.base_tensors(), inputs.bodies(), inputs.params)
    return merged, {"entropy_first": history.entropy[0], "entropy_last": history.entropy[-1],
                    "lambdas": history.lambdas.tolist(), "skipped": history.skipped}


register_data_driven("adamerging", PAPER, AdaMergingParams, _merge,
                     data="unlabelled test inputs of every target task (loss entropy) or labelled training "
                          "batches (loss cross_entropy)")
