"""Task metrics shared by every domain, and the FW-Merging / Twin-Merging normalised score.

GLUE conventions: CoLA Matthews correlation; SST-2/MNLI/QNLI/RTE accuracy; MRPC/QQP mean(accuracy, F1);
STS-B mean(Pearson, Spearman). All scores are returned in [0, 100] (correlations ×100). The metrics themselves
are scikit-learn's and scipy's.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ..errors import MergeError

Metric = Literal["accuracy", "matthews", "f1_acc", "pearson_spearman"]


def _numpy(values: torch.Tensor):
    return values.detach().cpu().double().numpy()


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float(accuracy_score(_numpy(labels), _numpy(predictions)))


def binary_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """F1 of the positive class (label 1) against every other label; 0 when there is no positive prediction or
    label."""
    return float(f1_score(_numpy(labels) == 1, _numpy(predictions) == 1, zero_division=0.0))


def matthews(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Matthews correlation (Gorodkin 2004); 0 when it is undefined."""
    return float(matthews_corrcoef(_numpy(labels), _numpy(predictions)))


def _correlation(statistic: Callable[..., Any], x: torch.Tensor, y: torch.Tensor) -> float:
    """``statistic(x, y).statistic``; 0 where a correlation is undefined (fewer than 2 values, a constant input)."""
    if len(x) < 2:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        value = float(statistic(_numpy(x), _numpy(y)).statistic)
    return 0.0 if math.isnan(value) else value


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    return _correlation(stats.pearsonr, x, y)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of the ranks, ties given their average rank."""
    return _correlation(stats.spearmanr, x, y)


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
