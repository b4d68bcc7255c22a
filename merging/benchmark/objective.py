"""A benchmark pool's ``Objective`` (merging/objective.py), for every domain: each task is its fine-tuned
model (own head), the mergeable parameters are everything outside the head, the proxy split (100 labelled
train examples per task) drives FW-Merging, RegMean and Fisher, the test inputs without their labels drive
AdaMerging's entropy, and fresh draws from the train split serve FW soft's fresh proxies and AdaMerging's
labelled loss (``sample``)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from merging.objective import Batch, functional_logits, seed_of

from .body import is_head
from .pool import PoolConfig
from .store import checkpoint_folder

SPLITS = {"proxy": "proxy", "unlabelled": "test"}  # objective split -> data split


class TaskObjective:
    """Tasks of ``pool`` with their checkpoints of fine-tuning seed ``seed``; tensors matching ``own`` (regexes,
    e.g. unmerged biases) stay each task's own like the head."""

    def __init__(self, pool: PoolConfig, seed: int, own: list[str] = (), batch_size: int = 32,
                 tasks: list[str] | None = None) -> None:
        self.pool, self.seed, self.batch_size = pool, seed, batch_size
        self.tasks = list(pool.tasks if tasks is None else tasks)
        self.own = list(own)
        self.keep = [*pool.head, *own]
        self.processor = pool.domain.processor(pool, checkpoint_folder(pool, self.tasks[0], seed))
        self._models: dict[str, torch.nn.Module] = {}
        self._batches: dict[tuple[str, str], list[dict[str, torch.Tensor]]] = {}
        self._statistics: dict[str, torch.Tensor] = {}
        self._examples: dict[tuple[str, str], Sequence[Any]] = {}

    def with_tasks(self, tasks: list[str]) -> TaskObjective:
        """The same pool, seed and kept tensors over other tasks (loaded models, batches and running statistics
        are shared)."""
        other = TaskObjective(self.pool, self.seed, self.own, self.batch_size, tasks)
        other._models, other._batches, other._statistics = self._models, self._batches, self._statistics
        other._examples = self._examples
        return other

    def use_statistics(self, statistics: Mapping[str, torch.Tensor]) -> None:
        """Running statistics (BatchNorm) every task model uses from now on, e.g. the candidates' average: what
        the merge is evaluated with, instead of the template checkpoint's own."""
        self._statistics.update(statistics)
        for model in self._models.values():
            model.load_state_dict(self._statistics, strict=False)

    def model(self, task: str) -> torch.nn.Module:
        if task not in self._models:
            model = self.pool.domain.load_model(self.pool, checkpoint_folder(self.pool, task, self.seed), task)
            model.load_state_dict(self._statistics, strict=False)
            self._models[task] = model
        return self._models[task]

    def mergeable(self) -> list[str]:
        """Names of the merged parameters (every parameter outside the head and the kept patterns)."""
        return [n for n, _ in self.model(self.tasks[0]).named_parameters() if not is_head(n, self.keep)]

    def complete(self, body: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``body`` plus the non-head buffers (e.g. position ids; never trained, the same in every model)."""
        model = self.model(self.tasks[0])
        parameters = {n for n, _ in model.named_parameters()}
        buffers = {n: t for n, t in model.state_dict().items() if n not in parameters and not is_head(n, self.keep)}
        return {**buffers, **body}

    def batches(self, task: str, split: str) -> Iterator[Batch]:
        for batch in self._encoded(task, SPLITS[split]):
            yield batch if split == "proxy" else {k: v for k, v in batch.items() if k != "labels"}

    def sample(self, task: str, n: int, batch_size: int, seed: int | tuple) -> list[Batch]:
        """``n`` labelled training examples of ``task`` drawn without replacement by ``seed``, batched."""
        if (task, "train") not in self._examples:
            self._examples[(task, "train")] = self.pool.domain.examples(self.pool, task, "train")
        examples = self._examples[(task, "train")]
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed_of(seed)))[:n].tolist()
        chosen = [examples[i] for i in order]
        return [self.pool.domain.collate(self.pool, self.processor, chosen[i:i + batch_size])
                for i in range(0, len(chosen), batch_size)]

    def logits(self, task: str, params: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return functional_logits(self.model(task), params, inputs)  # [b, num_labels]

    @torch.no_grad()
    def features(self, task: str, params: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The domain's pooled body features (``Domain.features``, the probe's) of the task's model with ``params``
        in place of its own, [b, d]."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        pooled = _Features(self.pool.domain, self.model(task))
        return torch.func.functional_call(pooled, {f"model.{n}": t for n, t in params.items()}, args=(),
                                          kwargs=inputs, strict=False)

    def loss(self, task: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.pool.domain.spec(self.pool, task).loss(logits, batch["labels"])

    def _encoded(self, task: str, split: str) -> list[dict[str, torch.Tensor]]:
        """Batches of one task's data split, built once."""
        if (task, split) not in self._batches:
            domain = self.pool.domain
            examples = domain.examples(self.pool, task, split)
            self._batches[(task, split)] = [domain.collate(self.pool, self.processor, examples[i:i + self.batch_size])
                                            for i in range(0, len(examples), self.batch_size)]
        return self._batches[(task, split)]


class _Features(torch.nn.Module):
    """``domain.features(model, inputs)`` as a module's forward, so ``functional_call`` can put tensors in place."""

    def __init__(self, domain: Any, model: torch.nn.Module) -> None:
        super().__init__()
        self.domain, self.model = domain, model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.domain.features(self.model, inputs)
