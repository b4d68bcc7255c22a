"""A toy Objective (merging/objective.py) for the data-driven methods: per task, a linear body shared by every
task (``body.weight`` [d, d], ``body.bias`` [d], the mergeable parameters) and a fixed linear head of the
task's own (``head.weight`` [1, d]); targets come from a task-specific body, so each task's "fine-tuned"
checkpoint is known exactly and the loss is a convex quadratic in the body."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from merging.objective import functional_logits, seed_of


def draw(x: torch.Tensor, y: torch.Tensor, n: int, batch_size: int, seed) -> tuple[list[int], list[dict]]:
    """``n`` rows of (x, y) drawn without replacement by ``seed``, and them as labelled batches."""
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed_of(seed)))[:n]
    return rows.tolist(), [{"x": x[rows[i:i + batch_size]], "labels": y[rows[i:i + batch_size]]}
                           for i in range(0, n, batch_size)]


class ToyModel(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.body = torch.nn.Linear(d, d)
        self.head = torch.nn.Linear(d, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # [b, 1]


class ToyObjective:
    """``n_tasks`` regression tasks on inputs in R^d; task t's optimum body is ``optimum[t]``."""

    def __init__(self, n_tasks: int = 3, d: int = 4, n: int = 64, batch_size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tasks = [f"t{i}" for i in range(n_tasks)]
        self.base = {"body.weight": torch.randn(d, d, generator=g), "body.bias": torch.zeros(d)}
        self.optimum = {t: {"body.weight": self.base["body.weight"] + torch.randn(d, d, generator=g),
                            "body.bias": torch.randn(d, generator=g)} for t in self.tasks}
        self._models: dict[str, ToyModel] = {}
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.batch_size = batch_size
        self.drawn: list[tuple[str, list[int]]] = []  # (task, rows) of every ``sample`` call, in order
        for t in self.tasks:
            model = ToyModel(d)
            with torch.no_grad():
                model.head.weight.copy_(torch.randn(1, d, generator=g))
                model.body.weight.copy_(self.optimum[t]["body.weight"])
                model.body.bias.copy_(self.optimum[t]["body.bias"])
            x = torch.randn(n, d, generator=g)
            with torch.no_grad():
                y = model(x).squeeze(-1)  # [n], noiseless: the task's own body is a minimiser
            self._models[t] = model.eval()
            self._data[t] = (x, y)

    def model(self, task: str) -> torch.nn.Module:
        return self._models[task]

    def batches(self, task: str, split: str):
        x, y = self._data[task]
        for i in range(0, len(x), self.batch_size):
            batch = {"x": x[i:i + self.batch_size]}
            if split == "proxy":
                batch["labels"] = y[i:i + self.batch_size]
            yield batch

    def sample(self, task: str, n: int, batch_size: int, seed):
        """``n`` of the task's examples drawn without replacement by ``seed``, batched (labelled)."""
        rows, batches = draw(*self._data[task], n, batch_size, seed)
        self.drawn.append((task, rows))
        return batches

    def logits(self, task: str, params: Mapping[str, torch.Tensor], batch) -> torch.Tensor:
        return functional_logits(self._models[task], params, {"x": batch["x"]})

    def loss(self, task: str, logits: torch.Tensor, batch) -> torch.Tensor:
        return torch.nn.functional.mse_loss(logits.squeeze(-1), batch["labels"])
