"""What a domain supplies to the data-driven merge methods (FW-Merging, AdaMerging, RegMean, Fisher, greedy
soup): its tasks, each task's model (a template whose parameters the merge replaces), batches, and the loss.
The methods never see a dataset, a tokenizer or a head: a new domain implements this protocol, never a copy
of a method.

Parameters are passed by name as a mapping ``{name: tensor}`` of the *mergeable* parameters (the body; each
task keeps its own head inside ``model(task)``); ``logits`` runs the task's model with those tensors in place
of its own (``torch.func.functional_call``), so gradients flow to them.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import torch

from .errors import MergeError

Batch = Mapping[str, Any]


class Objective(Protocol):
    tasks: list[str]

    def model(self, task: str) -> torch.nn.Module:
        """The task's model (body + its own head), in eval mode; the same object on every call, so forward
        hooks registered on its modules see every ``logits`` call of that task."""
        ...

    def batches(self, task: str, split: str) -> Iterable[Batch]:
        """Batches of ``split``: ``"proxy"`` (labelled, the few examples data-driven methods may use) or
        ``"unlabelled"`` (test inputs without labels, for AdaMerging's entropy)."""
        ...

    def logits(self, task: str, params: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The task model's outputs on ``batch`` with ``params`` in place of its mergeable parameters."""
        ...

    def loss(self, task: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean loss of ``logits`` on the labelled ``batch`` (cross-entropy; MSE for regression)."""
        ...

    # Optional, for the methods that draw fresh labelled data (FW soft's fresh proxies, AdaMerging's labelled
    # loss): ``sample(task, n, batch_size, seed) -> list[Batch]``, n labelled TRAINING examples drawn without
    # replacement by ``seed`` (an int or a tuple of ints and strings), in batches of ``batch_size``.
    # Optional, for the routed merges (Twin-Merging's router): ``features(task, params, batch) -> [b, d]``, the
    # pooled body features (no head) of the task's model with ``params`` in place, without gradients.


def sample_batches(objective: Objective, task: str, n: int, batch_size: int, seed: int | tuple[Any, ...]
                   ) -> list[Batch]:
    """``objective.sample(...)`` (see the protocol); an objective without it is a MergeError."""
    sample = getattr(objective, "sample", None)
    if sample is None:
        raise MergeError(f"{type(objective).__name__} cannot draw training examples (no sample method), which "
                         "this merge needs (FW soft's fresh proxies and cross_entropy inner loss, a router's examples)")
    batches = list(sample(task, n, batch_size, seed))
    if not batches:
        raise MergeError(f"task '{task}': no training examples to draw")
    return batches


def batch_features(objective: Objective, task: str, params: Mapping[str, torch.Tensor], batch: Batch
                   ) -> torch.Tensor:
    """``objective.features(...)`` (see the protocol); an objective without it is a MergeError."""
    features = getattr(objective, "features", None)
    if features is None:
        raise MergeError(f"{type(objective).__name__} gives no body features (no features method), which a "
                         "router needs")
    return features(task, params, batch)


def seed_of(seed: int | tuple[Any, ...]) -> int:
    """A 63-bit torch seed from an int or a tuple of ints and strings (stable across runs and processes)."""
    digest = hashlib.blake2b(repr(seed).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def functional_logits(model: torch.nn.Module, params: Mapping[str, torch.Tensor], inputs: Mapping[str, Any]
                      ) -> torch.Tensor:
    """``model(**inputs)`` with ``params`` replacing the parameters of the same names (others stay the
    model's own); outputs with a ``logits`` attribute (transformers) are unwrapped."""
    out = torch.func.functional_call(model, dict(params), args=(), kwargs=dict(inputs), strict=False)
    return out.logits if hasattr(out, "logits") else out
