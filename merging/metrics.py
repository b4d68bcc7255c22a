"""Task metrics shared by every domain, and the FW-Merging / Twin-Merging normalised score.

GLUE conventions: CoLA Matthews correlation; SST-2/MNLI/QNLI/RTE accuracy; MRPC/QQP mean(accuracy, F1);
STS-B mean(Pearson, Spearman). All scores are returned in [0, 100] (correlations ×100).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from .errors import MergeError

Metric = Literal["accuracy", "matthews", "f1_acc", "pearson_spearman"]


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).double().mean())


def binary_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """F1 of the positive class (label 1): 2·TP / (2·TP + FP + FN)."""
    tp = float(((predictions == 1) & (labels == 1)).sum())
    fp = float(((predictions == 1) & (labels != 1)).sum())
    fn = float(((predictions != 1) & (labels == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Matthews correlation (Gorodkin 2004), from the confusion matrix C:
    (c·s − Σ_k p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)), c = trace, s = total, p/t = predicted/true counts;
    0 when a denominator is 0 (as scikit-learn)."""
    classes = int(max(int(predictions.max()), int(labels.max()))) + 1
    confusion = torch.zeros(classes, classes, dtype=torch.float64)
    confusion.index_put_((labels.long(), predictions.long()), torch.ones(len(labels), dtype=torch.float64),
                         accumulate=True)
    t, p = confusion.sum(1), confusion.sum(0)
    c, s = confusion.trace(), confusion.sum()
    denominator = ((s * s - (p * p).sum()) * (s * s - (t * t).sum())).sqrt()
    return float((c * s - (p * t).sum()) / denominator) if denominator > 0 else 0.0


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.norm() * y.norm())
    return float((x @ y) / denominator) if denominator > 0 else 0.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank."""
    values, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return ((ends - counts.double() + 1 + ends) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(_ranks(x), _ranks(y))


def score(metric: Metric, predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """The task score in [0, 100] (correlations ×100)."""
    if metric == "accuracy":
        return 100 * accuracy(predictions, labels)
    if metric == "matthews":
        return 100 * matthews(predictions, labels)
    if metric == "f1_acc":
        return 100 * (accuracy(predictions, labels) + binary_f1(predictions, labels)) / 2
    if metric == "pearson_spearman":
        return 100 * (pearson(predictions, labels) + spearman(predictions, labels)) / 2
    raise ValueError(f"unknown metric '{metric}'; expected one of accuracy, matthews, f1_acc, pearson_spearman")


def normalized_score(merged: dict[str, float], finetuned: dict[str, float], tasks: Sequence[str]) -> float:
    """Mean over tasks of 100 · merged_t / finetuned_t (FW-Merging / Twin-Merging normalisation); a task whose
    fine-tuned score is ≤ 0 makes it undefined (an error naming the tasks)."""
    undefined = [t for t in tasks if finetuned[t] <= 0]
    if undefined:
        raise MergeError(f"the fine-tuned checkpoints score {[finetuned[t] for t in undefined]} on {undefined}: "
                         "the normalised score is undefined there")
    return sum(100 * merged[t] / finetuned[t] for t in tasks) / len(tasks)
