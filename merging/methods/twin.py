"""Twin-Merging (Lu et al., "Twin-Merging: Dynamic Integration of Modular Expertise in Model Merging", NeurIPS
2024, arXiv 2406.15479; official code LZY-the-boys/Twin-Merging, discriminative/twin_merge.py ``extract_twin_vector``
and ``run_twin_vector``, discriminative/router.py, discriminative/sparsify.py ``svd``). A routed merge: the result
is a body per input, not one set of weights (merging/methods/base.py ``RoutedModel``).

1. Shared knowledge: one data-free merge of the candidates (``shared``, default task arithmetic with λ = 0.29 as
   the official GLUE run), θ_shared.
2. Exclusive knowledge of candidate t: E_t = SVD_r(θ_t − θ_shared) per weight matrix, the best rank-r
   approximation with r = ⌊rank_ratio · min(m, q)⌋ (official: mask_rate 0.9, so 10 % of the rank; r = 0 drops the
   matrix's part), the full difference elsewhere (vectors: norms, biases).
3. Router: an MLP on the pooled body features of the *shared* model (``Objective.features``; text: the mean of the
   last hidden states, as the official router; tensors left out of the merge, such as biases kept per task with
   ``--merge-biases false``, are the task model's own there, as at evaluation) — Linear d→h, BatchNorm, LeakyReLU, Dropout, Linear h→h,
   BatchNorm, LeakyReLU, Dropout, Linear h→T, h = 2d — trained with cross-entropy to name the candidate whose
   task an input comes from (AdamW, lr 5e-4, batch 1024, 50 epochs, as the official ``train_router``).
4. Inference, input by input: w(x) = softmax(router(features of x)), θ(x) = θ_shared + Σ_t w_t(x) E_t.

Deviations: the router trains on ``router_examples`` fresh training examples per task (official: the first 5,500
of each GLUE train split) and keeps its last epoch (the official Trainer keeps the epoch with the best accuracy on
the evaluation set, which is the test data). The official code never merges biases (each task's own); here the
pool's settings decide, as for every method. Every input is routed on its own (the official GLUE evaluation
rebuilds the weights per example too); nothing is averaged over a batch, whose examples share a task here.
Running statistics (BatchNorm) are not routed: every input uses the candidates' average, under which the router
is trained too.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ..errors import MergeError
from ..objective import Objective, batch_features, sample_batches
from ..registry import register_routed
from .base import DataDrivenInputs, Params, RoutedModel, Tensors, merge_in_memory, per_tensor_method
from .subspace import low_rank

PAPER = "https://arxiv.org/abs/2406.15479"

logger = logging.getLogger(__name__)


class TwinMergingParams(Params):
    shared: Literal["task_arithmetic", "ties", "dare_ties"] = "task_arithmetic"
    shared_params: dict[str, Any] = Field(default_factory=lambda: {"lambda": 0.29})
    rank_ratio: float = Field(0.1, ge=0, le=1)
    matrices: Literal["2d", "nd"] = "2d"  # nd: conv kernels as [out, in·kh·kw] matrices
    router_examples: int = Field(1000, ge=1)  # fresh training examples per task
    router_epochs: int = Field(50, ge=1)
    router_lr: float = Field(5e-4, gt=0)
    router_batch_size: int = Field(1024, ge=2)  # BatchNorm needs two rows
    router_dropout: float = Field(0.5, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _shared_merge(self) -> TwinMergingParams:
        per_tensor_method(self.shared, self.shared_params, 1, "shared_params")  # a ValueError names the key
        return self


def exclusive_part(difference: torch.Tensor, rank_ratio: float, matrices: str = "2d") -> tuple[torch.Tensor, int]:
    """E = SVD_r(θ_t − θ_shared) on a weight matrix (r = ⌊rank_ratio · min(m, q)⌋; with ``matrices: nd`` a
    kernel [out, in, kh, kw] is the matrix [out, in·kh·kw]), the difference itself elsewhere; and the numbers
    stored for it (r·(m + q) for the factors, at most m·q; numel elsewhere)."""
    shape = difference.shape
    if difference.dim() == 2 or (difference.dim() > 2 and matrices == "nd"):
        m, q = shape[0], math.prod(shape[1:])
        rank = int(rank_ratio * min(m, q))
        if rank == 0:
            return torch.zeros_like(difference), 0
        stored = min(rank * (m + q), m * q)  # factors, or the matrix itself where they would be larger
        return low_rank(difference.reshape(m, q).float(), rank).reshape(shape).to(difference.dtype), stored
    return difference.clone(), difference.numel()


class Router(torch.nn.Module):
    """The official router MLP: features [b, d] -> logits [b, T] over the experts."""

    def __init__(self, d: int, experts: int, dropout: float) -> None:
        super().__init__()
        h = 2 * d
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d, h), torch.nn.BatchNorm1d(h), torch.nn.LeakyReLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(h, h), torch.nn.BatchNorm1d(h), torch.nn.LeakyReLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(h, experts))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def train_router(features: torch.Tensor, labels: torch.Tensor, experts: int, p: TwinMergingParams
                 ) -> tuple[Router, list[float]]:
    """A router fit by cross-entropy on (features [N, d], expert labels [N]); seeded by ``p.seed``. Returns it in
    eval mode and the training loss of each epoch."""
    if len(labels) < 2:
        raise MergeError(f"twin_merging: {len(labels)} router example(s); the router's BatchNorm needs at least 2")
    with torch.random.fork_rng(), torch.enable_grad():
        torch.manual_seed(p.seed)
        router = Router(features.shape[1], experts, p.router_dropout)
        optimizer = torch.optim.AdamW(router.parameters(), lr=p.router_lr)
        losses = []
        router.train()
        for _ in range(p.router_epochs):
            order, total = torch.randperm(len(labels)), 0.0
            for start in range(0, len(labels), p.router_batch_size):
                rows = order[start:start + p.router_batch_size]
                if len(rows) < 2:  # a last single row: BatchNorm needs two
                    continue
                loss = torch.nn.functional.cross_entropy(router(features[rows]), labels[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
            losses.append(total / len(labels))
    return router.eval(), losses


def router_data(objective: Objective, tasks: list[str], shared: Tensors, p: TwinMergingParams
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features under the shared body of ``p.router_examples`` fresh training examples of each task, labelled by
    the task's index (its expert)."""
    features, labels = [], []
    for index, task in enumerate(tasks):
        for batch in sample_batches(objective, task, p.router_examples, 64, (p.seed, "twin-router", task)):
            features.append(batch_features(objective, task, shared, batch).float())
            labels.append(torch.full((len(features[-1]),), index))
    return torch.cat(features), torch.cat(labels)


def twin_merging(inputs: DataDrivenInputs) -> RoutedModel:
    """The shared body, the experts' compressed exclusive parts and the router (module docstring)."""
    p: TwinMergingParams = inputs.params
    objective, tasks = inputs.paired()
    experts = len(inputs.candidates)
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise MergeError(f"twin_merging routes an input to its task's expert: task(s) {repeated} have several "
                         "candidates; give one checkpoint per task")
    method = per_tensor_method(p.shared, p.shared_params, experts, "shared_params")  # checked by the params
    base = inputs.base_tensors()
    shared, exclusive, stored = {}, {}, 0
    for name, b in base.items():
        models = [source.read(name).float() for source in inputs.candidates.values()]
        shared[name] = merge_in_memory(method, b.float(), models, name=name, seed=p.seed)
        parts = [exclusive_part(m - shared[name], p.rank_ratio, p.matrices) for m in models]
        if any(part.any() for part, _ in parts):  # a tensor no expert changes stays θ_shared for every input
            exclusive[name] = torch.stack([part for part, _ in parts])  # [T, *shape]
        stored += sum(n for _, n in parts)
    dense = sum(t.numel() for t in base.values()) * experts
    logger.info("Twin-Merging: shared body and %d exclusive parts (%.1f %% of their full differences stored)",
                experts, 100 * stored / dense)
    features, labels = router_data(objective, tasks, shared, p)
    logger.info("Twin-Merging: router on %d examples' features [%d]", len(labels), features.shape[1])
    router, losses = train_router(features, labels, experts, p)
    with torch.no_grad():
        accuracy = (router(features).argmax(-1) == labels).float().mean().item()
    logger.info("Twin-Merging: router trained, loss %.4f, training accuracy %.3f", losses[-1], accuracy)
    log = {"router": {"examples": len(labels), "features": features.shape[1], "train_loss": losses,
                      "train_accuracy": accuracy},
           "exclusive_stored_fraction": stored / dense}
    return RoutedModel(shared, exclusive, tasks, router, log)


register_routed("twin_merging", PAPER, TwinMergingParams, twin_merging,
                data="training examples of each candidate's task (router), their body features")
