"""What a domain (text classifiers, image classifiers, …) supplies to the shared benchmark machinery of
``merging.benchmark``: its tasks and their examples, how a task model is loaded and saved, how examples
become a batch, and the features of the linear-probe reference. Fine-tuning, evaluation, the merge methods,
result tables and the scaling claims are written once against this interface.

A batch is a dict of tensors with a ``labels`` entry; the model is called as ``model(**inputs)`` on the
other entries and returns logits ([b, num_labels]) or an object with a ``logits`` attribute (transformers).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from merging.errors import MergeError

if TYPE_CHECKING:
    from .pool import PoolConfig


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Literal["classification", "regression"]
    num_labels: int  # 1 for regression
    metric: Literal["accuracy", "matthews", "f1_acc", "pearson_spearman"]
    label_names: tuple[str, ...] = ()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's training loss, a mean over the batch: cross-entropy on ``logits`` [b, num_labels]; mean
        squared error of ``logits`` [b, 1] against the targets for regression."""
        if self.kind == "regression":
            return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float())
        return torch.nn.functional.cross_entropy(logits, labels.long())


class Domain(ABC):
    """One domain's plug-in; ``name`` names its cache folder (``cache_dir()/<name>``) and its method configs
    (``configs/<name>/methods``)."""

    name: str
    statistics: tuple[str, ...] = ()  # regexes of running statistics (BatchNorm): never merged, see ``finish``

    @abstractmethod
    def spec(self, pool: PoolConfig, task: str) -> TaskSpec: ...

    @abstractmethod
    def examples(self, pool: PoolConfig, task: str, split: str) -> Sequence[Any]:
        """The examples of ``split`` (train, validation, test, proxy); each has a ``label``."""

    @abstractmethod
    def load_model(self, pool: PoolConfig, folder: Path, task: str, fresh_head: bool = False) -> torch.nn.Module:
        """Task ``task``'s model from the weights in ``folder``, in eval mode; with ``fresh_head`` a new head of
        the task's size replaces the folder's own (base model -> task model)."""

    @abstractmethod
    def save_model(self, model: torch.nn.Module, processor: Any, folder: Path) -> None:
        """Write ``model`` (and what its inputs need, e.g. the tokenizer) so ``load_model`` reads it."""

    @abstractmethod
    def processor(self, pool: PoolConfig, folder: Path) -> Any:
        """What turns examples into inputs (a tokenizer, image transforms), as saved beside the model."""

    @abstractmethod
    def collate(self, pool: PoolConfig, processor: Any, examples: Sequence[Any], train: bool = False
                ) -> dict[str, torch.Tensor]:
        """One batch of ``examples`` with ``labels``; ``train`` turns on training-time augmentation."""

    @abstractmethod
    def features(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled body features [b, d] (no head) for the linear-probe reference."""

    def cost(self, pool: PoolConfig, task: str, processor: Any) -> float:
        """Relative compute of fine-tuning ``task`` (used to deal tasks to parallel workers): train examples."""
        return float(len(self.examples(pool, task, "train")))

    def given_folder(self, pool: PoolConfig, task: str, source: Path) -> Path:
        """Where a checkpoint given in the pool YAML (``source``, resolved) is read from: itself, unless the
        domain must first rewrite it (e.g. with the tensor names its models use in memory)."""
        return source

    sort_key: Callable[[Any], float] | None = None
    """Evaluation order inside a task (text: length, so batches pad little); None keeps the split's order
    (and its storage, e.g. one picture tensor). Metrics are order-free."""

    def prepare(self, pool: PoolConfig) -> None:
        """Build the pool's offline data sets ahead of time (they are otherwise built on first use)."""

    def finish(self, pool: PoolConfig, body: dict[str, torch.Tensor], candidates: list[Path],
               statistic_names: list[str], mode: str = "average") -> dict[str, torch.Tensor]:
        """Fill the ``statistics`` tensors of a merged body (e.g. BatchNorm running statistics) from the merged
        ``candidates``' checkpoints, as ``mode`` says (``--statistics`` on the command line); called only
        when the body has statistics."""
        raise MergeError(f"domain '{self.name}' declares statistics {self.statistics} but no way to fill them")
