"""BatchNorm running statistics of a merged CNN. A merge method combines weights; the running mean and
variance of each BatchNorm layer are statistics of the activations, which change with the weights, so they
are not merged like weights (task arithmetic on variances can even make them negative). Two ways to fill
them (the "REPAIR"/"reset BN" observation: Jordan et al. 2023, arXiv 2211.08403):

- ``average``: the mean of the merged checkpoints' statistics (no data);
- ``reestimate``: the merged model's own statistics on unlabelled images, the cumulative average over the
  batches (``momentum=None``), with every other module in eval mode (no dropout or drop-connect).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from .errors import MergeError

STATISTICS = (r"\.running_mean$", r"\.running_var$", r"\.num_batches_tracked$")
MODES = ("average", "reestimate")


def is_statistic(name: str) -> bool:
    return any(re.search(pattern, name) for pattern in STATISTICS)


def average_statistics(checkpoints: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of each floating statistic over ``checkpoints``; integer counters (num_batches_tracked) take the
    first checkpoint's value."""
    first = checkpoints[0]
    return {name: (torch.stack([c[name] for c in checkpoints]).mean(0) if first[name].is_floating_point()
                   else first[name].clone()) for name in first}


@torch.no_grad()
def reestimate_statistics(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
                          ) -> dict[str, torch.Tensor]:
    """Reset every BatchNorm layer of ``model`` and recompute its statistics as the cumulative average over
    ``batches`` (inputs only, ``model(**batch)``); returns them by state-dict name. ``model`` is left in eval
    mode with its layers' momenta restored."""
    norms = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    momenta = {name: m.momentum for name, m in norms.items()}
    model.eval()
    for m in norms.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
        m.train()
    seen = 0
    for batch in batches:
        model(**batch)
        seen += 1
    if not seen:
        raise MergeError("no batches to re-estimate BatchNorm statistics on")
    for name, m in norms.items():
        m.momentum = momenta[name]
        m.eval()
    return {name: tensor.clone() for name, tensor in model.state_dict().items() if is_statistic(name)}
