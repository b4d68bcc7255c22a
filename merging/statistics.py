"""Statistics the data-driven merge methods collect through the ``Objective`` protocol (merging/objective.py),
and the checks they share. Every collector is a function of ``(objective, params, task)``: it runs the task's
model with ``params`` in place of its mergeable tensors and never touches a dataset, a tokenizer or a head.
Under ``accelerate launch`` each process collects sums over its share of the batches (merging/distributed.py)
and the sums are all-reduced before any division, so the result is the single-process one up to rounding.

* ``input_grams``      — per ``nn.Linear`` / ``nn.Conv2d`` whose weight is mergeable: G = XᵀX of the layer's
                          inputs X (rows = every position of every example; a convolution's rows are its
                          receptive-field patches, per group), for RegMean (Jin et al., arXiv 2212.09849).
* ``diagonal_fisher``  — F = (1/N) Σ_j (∂ℓ_j/∂θ)², per-example squared gradients, for Fisher merging
                          (Matena & Raffel, arXiv 2111.09832).

Parameters are mappings ``{name: tensor}`` of the mergeable ("body") tensors; candidate i is paired with task i.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from . import distributed
from .errors import MergeError
from .objective import Batch, Objective

Tensors = Mapping[str, Tensor]


# ---- checks shared by every data-driven method ------------------------------------------------------
def check_candidates(candidates: Sequence[Tensors], base: Tensors | None = None) -> list[str]:
    """The mergeable names (sorted); every candidate (and ``base``) must hold the same names and shapes and
    finite values, otherwise a MergeError names the candidate, tensor and shapes."""
    if len(candidates) == 0:
        raise MergeError("no candidate models to merge: pass at least one {name: tensor} mapping")
    reference = dict(base) if base is not None else dict(candidates[0])
    names = sorted(reference)
    if not names:
        raise MergeError("the candidate models hold no tensors to merge")
    labelled = [("base", base)] if base is not None else []
    for label, tensors in labelled + [(f"candidate {i}", c) for i, c in enumerate(candidates)]:
        missing, extra = set(names) - set(tensors), set(tensors) - set(names)
        if missing or extra:
            raise MergeError(f"{label}: tensor names differ from {'the base' if base is not None else 'candidate 0'}"
                             f"; missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name in names:
            t = tensors[name]
            if tuple(t.shape) != tuple(reference[name].shape):
                raise MergeError(f"{label}: tensor '{name}' has shape {tuple(t.shape)}, expected "
                                 f"{tuple(reference[name].shape)}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise MergeError(f"{label}: tensor '{name}' holds NaN or Inf values")
    return names


def paired_tasks(objective: Objective, candidates: Sequence[Tensors], tasks: Sequence[str] | None) -> list[str]:
    """The task each candidate's statistics are collected on: ``tasks`` (default ``objective.tasks``), one per
    candidate, each a task of the objective."""
    chosen = list(objective.tasks if tasks is None else tasks)
    unknown = [t for t in chosen if t not in objective.tasks]
    if unknown:
        raise MergeError(f"unknown task(s) {unknown}; the objective's tasks are {list(objective.tasks)}")
    if len(chosen) != len(candidates):
        raise MergeError(f"{len(candidates)} candidate(s) but {len(chosen)} task(s) {chosen}: candidate i's "
                         "statistics are collected on task i, pass `tasks=` with one task per candidate")
    return chosen


def uniform_average(candidates: Sequence[Tensors], names: Sequence[str]) -> dict[str, Tensor]:
    """θ = (1/n) Σ_i θ_i per tensor (in float32 or wider, returned in each tensor's dtype)."""
    out = {}
    for name in names:
        first = candidates[0][name]
        wide = torch.promote_types(first.dtype, torch.float32)
        out[name] = (torch.stack([c[name].to(wide) for c in candidates]).mean(0)).to(first.dtype)  # [*shape]
    return out


def batches_of(objective: Objective, task: str, split: str) -> Iterator[Batch]:
    """``objective.batches(task, split)``; an empty split is an error naming the task."""
    empty = True
    for batch in objective.batches(task, split):
        empty = False
        yield batch
    if empty:
        raise MergeError(f"task '{task}' has no '{split}' batches; the data-driven methods need some")


def batch_rows(batch: Batch) -> int:
    """The batch size n: the leading dimension of the first tensor value of the batch that has one."""
    first = next((v for v in batch.values() if isinstance(v, Tensor) and v.dim() > 0), None)
    if first is None:
        raise MergeError(f"cannot split a batch without tensor values into examples (keys {sorted(batch)})")
    return first.shape[0]


def slice_batch(batch: Batch, start: int, stop: int, n: int | None = None) -> Batch:
    """Rows [start, stop) of a batch of n rows (``batch_rows``): every tensor whose leading dimension is n is
    sliced, every list/tuple of length n too; other values (scalars, shared tensors) are passed unchanged."""
    n = batch_rows(batch) if n is None else n

    def pick(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
            return value[start:stop]
        if isinstance(value, (list, tuple)) and len(value) == n:
            return type(value)(value[start:stop])
        return value

    return {key: pick(value) for key, value in batch.items()}


def split_examples(batch: Batch) -> list[Batch]:
    """One single-example batch per example (``slice_batch`` rows [j, j+1))."""
    n = batch_rows(batch)
    return [slice_batch(batch, j, j + 1, n) for j in range(n)]


def local_rows(batch: Batch) -> Batch | None:
    """This process's contiguous share of the batch's rows (``distributed.row_range``): the batch itself with
    one process, None when the share is empty."""
    if distributed.world_size() == 1:
        return batch
    n = batch_rows(batch)
    start, stop = distributed.row_range(n)
    return slice_batch(batch, start, stop, n) if stop > start else None


# ---- RegMean: input Gram matrices of the mergeable linear and convolution layers -----------------------
@dataclass(frozen=True)
class Grams:
    """``gram[w]``: Σ_rows xᵀx of the inputs of the layer whose weight is named ``w``, float64: [in, in] for an
    ``nn.Linear``; [groups, d, d] for an ``nn.Conv2d``, x a receptive-field patch of one group (d = in/groups ·
    kh · kw, one row per example and output position). ``rows[w]``: how many rows went into it."""

    gram: dict[str, Tensor]
    rows: dict[str, int]


Regression = torch.nn.Linear | torch.nn.Conv2d


def regression_modules(model: torch.nn.Module, names: Sequence[str]) -> dict[str, Regression]:
    """``{weight name: module}`` for every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` whose weight is in ``names``."""
    wanted = set(names)
    found = {}
    for module_name, module in model.named_modules():
        weight = f"{module_name}.weight" if module_name else "weight"
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and weight in wanted:
            found[weight] = module
    return found


def gram_shape(module: Regression) -> tuple[int, ...]:
    """[in, in] for a linear layer, [groups, in/groups · kh · kw, same] for a convolution."""
    if isinstance(module, torch.nn.Linear):
        return (module.in_features, module.in_features)
    d = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
    return (module.groups, d, d)


def _same_padding(size: int, out: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) zero padding that gives ``out`` positions, the extra one after (TensorFlow "SAME")."""
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv_patches(module: torch.nn.Conv2d, x: Tensor, output: Tensor) -> Tensor:
    """The receptive-field patches of a Conv2d call, per group: [groups, N·oh·ow, in/groups · kh · kw], ordered
    like ``weight[o].flatten()``, so that output[n, o, p] = patches[g(o), (n, p)] · weight[o].flatten() + bias[o].

    Padding: the module's own zero padding when it yields the output's size, else the TensorFlow "SAME" split
    that does (convolutions that pad inside ``forward``, e.g. EfficientNet's ``Conv2dDynamicSamePadding``).
    The caller checks the reconstruction against the output once per layer."""
    if module.padding_mode != "zeros":
        raise MergeError(f"RegMean supports zero-padded convolutions only, not padding_mode "
                         f"'{module.padding_mode}'")
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    (ih, iw), (oh, ow) = x.shape[-2:], output.shape[-2:]
    padding = module.padding if isinstance(module.padding, tuple) else (0, 0)
    own = [(i + 2 * p - d * (k - 1) - 1) // s + 1
           for i, p, d, k, s in ((ih, padding[0], dh, kh, sh), (iw, padding[1], dw, kw, sw))]
    if isinstance(module.padding, tuple) and own == [oh, ow]:
        x = torch.nn.functional.pad(x, [padding[1], padding[1], padding[0], padding[0]])
    else:
        top, bottom = _same_padding(ih, oh, kh, sh, dh)
        left, right = _same_padding(iw, ow, kw, sw, dw)
        x = torch.nn.functional.pad(x, [left, right, top, bottom])
    cols = torch.nn.functional.unfold(x, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # [N, in·kh·kw, L]
    if cols.shape[-1] != oh * ow:
        raise MergeError(f"cannot rebuild the {oh}x{ow} output positions of a {kh}x{kw} convolution (stride "
                         f"{(sh, sw)}) from a {ih}x{iw} input")
    n, groups = cols.shape[0], module.groups
    cols = cols.reshape(n, groups, -1, oh * ow)  # [N, g, d, L]
    return cols.permute(1, 0, 3, 2).reshape(groups, n * oh * ow, -1)  # [g, N·L, d]


def _check_patches(name: str, module: torch.nn.Conv2d, patches: Tensor, output: Tensor) -> None:
    """patches · weightᵀ + bias must be the module's output: anything else (a custom convolution) is an error."""
    groups = module.groups
    weight = module.weight.detach().reshape(groups, -1, patches.shape[-1]).to(patches.dtype)  # [g, out/g, d]
    rebuilt = patches @ weight.transpose(1, 2)  # [g, rows, out/g]
    actual = output.detach().permute(0, 2, 3, 1).reshape(-1, groups, weight.shape[1]).transpose(0, 1)
    if module.bias is not None:
        actual = actual - module.bias.detach().reshape(groups, 1, -1).to(actual.dtype)
    if not torch.allclose(rebuilt, actual.to(rebuilt.dtype), rtol=1e-3, atol=1e-3 * float(actual.abs().max()) + 1e-5):
        raise MergeError(f"convolution '{name}': its output is not a zero-padded convolution of its input "
                         "(a custom forward?), so its input Gram matrices cannot be collected")


@torch.no_grad()
def input_grams(objective: Objective, params: Tensors, task: str, split: str = "proxy",
                layers: Sequence[str] | None = None) -> Grams:
    """G = XᵀX of each mergeable linear / Conv2d layer's inputs (of ``layers`` only, when given) while
    ``objective.logits(task, params, ·)`` runs over ``split``'s batches (forward hooks on
    ``objective.model(task)``). Linear inputs [..., in] are flattened to rows; convolution inputs to
    receptive-field patches per group (``conv_patches``). A layer called several times per forward contributes
    every call. Data-parallel: each process runs its share of the batches; the Grams, row and call counts are
    all-reduced."""
    modules = regression_modules(objective.model(task), list(params) if layers is None else list(layers))
    grams: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    calls: dict[str, int] = {}

    def hook_for(weight: str):
        def hook(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0].detach()
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            if isinstance(module, torch.nn.Conv2d):
                x = conv_patches(module, x, output)  # [g, rows, d]
                if weight not in calls:
                    _check_patches(weight, module, x, output)
            else:
                x = x.reshape(-1, x.shape[-1])  # [rows, in]
            xtx = (x.transpose(-2, -1) @ x).double()  # [in, in] or [g, d, d]
            grams[weight] = grams[weight] + xtx if weight in grams else xtx
            rows[weight] = rows.get(weight, 0) + x.shape[-2]
            calls[weight] = calls.get(weight, 0) + 1
        return hook

    handles = [module.register_forward_hook(hook_for(weight)) for weight, module in modules.items()]
    try:
        for batch in distributed.shard(batches_of(objective, task, split)):
            objective.logits(task, params, batch)
    finally:
        for handle in handles:
            handle.remove()
    if distributed.world_size() > 1:  # every process reduces every layer, also those its share never reached
        local = {w: grams[w] if w in grams else torch.zeros(gram_shape(m), dtype=torch.float64,
                                                             device=params[w].device) for w, m in modules.items()}
        local, counts = distributed.all_reduce_sum(
            (local, {w: [rows.get(w, 0), calls.get(w, 0)] for w in modules}))
        grams = {w: g for w, g in local.items() if counts[w][1] > 0}
        rows = {w: c[0] for w, c in counts.items() if c[1] > 0}
    silent = sorted(set(modules) - set(grams))
    if silent:
        raise MergeError(f"task '{task}': layer(s) {silent} never ran on the '{split}' batches, so their "
                         "input Gram matrices are unknown")
    return Grams(grams, rows)


# ---- Fisher merging: diagonal Fisher from per-example gradients ---------------------------------------
def diagonal_fisher(objective: Objective, params: Tensors, task: str,
                    kind: Literal["empirical", "expected"] = "empirical", split: str = "proxy") -> dict[str, Tensor]:
    """Diagonal Fisher of the task model at ``params``, averaged over the N examples of ``split``:

    * ``empirical``: F = (1/N) Σ_j (∂ℓ_j/∂θ)², ℓ_j = ``objective.loss`` on example j alone. With cross-entropy
      ℓ_j = −log p(y_j|x_j) (the empirical Fisher); with MSE (regression) it is the squared gradient of the loss.
    * ``expected``: F = (1/N) Σ_j Σ_c p(c|x_j) (∂ log p(c|x_j)/∂θ)², the expectation over the model's own
      predictive distribution (the "exact" Fisher of Matena & Raffel's code); needs per-example logits [1, C]
      with C > 1; one-output (regression) tasks use the empirical rule.

    Per-example gradients come from one forward/backward per example (the batch is split with
    ``split_examples``), so batch-level statistics never mix examples. Returns float32 tensors (wider if the
    parameters are), zero where a parameter does not affect the loss. Data-parallel: each process runs its
    share of the batches; Σ_j and N are all-reduced before the division.
    """
    leaves = {name: t.detach().requires_grad_(True) for name, t in params.items()}
    order = list(leaves)
    total = {name: torch.zeros(t.shape, dtype=torch.promote_types(t.dtype, torch.float32), device=t.device)
             for name, t in leaves.items()}
    count = 0
    for batch in distributed.shard(batches_of(objective, task, split)):
        for example in split_examples(batch):
            with torch.enable_grad():
                logits = objective.logits(task, leaves, example)  # [1, C] (or [1, ..., C])
                if kind == "empirical" or logits.shape[-1] == 1:
                    terms = [(1.0, objective.loss(task, logits, example))]
                else:
                    if logits.dim() != 2 or logits.shape[0] != 1:
                        raise MergeError(f"task '{task}': the expected Fisher needs per-example logits [1, C], got "
                                         f"{tuple(logits.shape)}; use kind='empirical'")
                    log_p = torch.log_softmax(logits[0], dim=-1)  # [C]
                    terms = [(float(p), log_p[c]) for c, p in enumerate(log_p.detach().exp().tolist())]
                for index, (weight, value) in enumerate(terms):
                    grads = torch.autograd.grad(value, [leaves[n] for n in order], allow_unused=True,
                                                retain_graph=index < len(terms) - 1)
                    for name, grad in zip(order, grads):
                        if grad is not None:
                            total[name].add_(grad.to(total[name].dtype).square(), alpha=weight)  # [*shape]
            count += 1
    total, count = distributed.all_reduce_sum((total, count))
    return {name: t / count for name, t in total.items()}


def finite_or_error(value: float, what: str) -> float:
    """``value`` as a float; NaN/Inf is a MergeError naming ``what``."""
    value = float(value)
    if not math.isfinite(value):
        raise MergeError(f"{what} is {value}; expected a finite number")
    return value
