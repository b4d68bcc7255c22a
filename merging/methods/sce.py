"""SCE, "Select, Calculate, Erase" (Wan et al., "FuseChat: Knowledge Fusion of Chat Models", arXiv 2408.07990,
Sec. 3.3), per tensor as mergekit 0.1.5 computes it (mergekit/merge_methods/sce.py):

    τ_i = θ_i − θ_base,  i = 1..n
    Select (s = ``select_topk``):  v_j = (1/n) Σ_i (τ_ij − τ̄_j)²   (population variance over the models, per element)
        k = ⌊s · #{j : v_j ≠ 0}⌋;  m_j = 1 for the k elements of largest v_j, else 0;  τ̂_i = m ⊙ τ_i
        (s = 1: τ̂_i = τ_i, no selection; k = 0, e.g. s = 0 or a single model: τ̂_i = 0 and θ = θ_base)
    Calculate:  ω_i = (1/N) Σ_j τ̂_ij²,   w_i = ω_i / Σ_l ω_l,  or w_i = 1/n where Σ_l ω_l < 1e-6
    Erase:  γ_j = +1 if Σ_i τ̂_ij ≥ 0 else −1,   e_ij = 1[sgn τ̂_ij = γ_j]   (a zero τ̂_ij never agrees)
    θ = θ_base + Σ_i w_i e_ij τ̂_ij / max(Σ_i w_i e_ij, 1e-6)

The variance ranking and ω are whole-tensor quantities, streamed in two passes with the exact k-th largest
machinery of TIES (merging/topk.py) on the one-row tensor v: pass 1 counts the nonzero v_j and histograms v's
float32 bit patterns; pass 2 collects the members of the threshold's bin (their v_j and τ_ij, in flat order) and
Σ_j τ_ij² over the elements above that bin. The k-th largest v, and so the selected set and ω, are then exact, so
``combine`` needs no third pass. With s = 1 one pass sums τ_ij²; with s = 0 there is no pass.

Deviations from mergekit: where v ties at the threshold, exactly k elements are kept, the first in flat order
(mergekit: ``torch.topk``, whose choice among ties is unspecified; the count and every element off the threshold
agree, and ω, a sum over the kept elements, differs only through the tied ones). v is ranked in float32 (a float64 compute dtype rounds it first). ω is summed in float64 (mergekit: in the
compute dtype; the bin members' τ are kept as float32), then rounded to the compute dtype and normalised there, as
mergekit does. k is computed as mergekit does, a float32 product. ``select_topk`` must lie in [0, 1] (mergekit
takes any number, and treats one above 1 as 1 and one below 0 as 0). mergekit's ``int8_mask`` only changes
mergekit's memory use and is no parameter here.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..registry import register
from ..tensor_ops import elect_sign, prune_top_k, task_vectors
from ..topk import BinMembers, bin_histogram, bin_members, locate_bin, threshold_from_members
from .base import Chunk, Method, Params

SHIFT = 20  # histogram bins of 1/8 octave (merging/topk.py)
UNIFORM_BELOW = 1e-6  # mergekit: Σ_l ω_l below this gives uniform weights
DIVISOR_FLOOR = 1e-6  # mergekit: the erased weights' sum is clamped to at least this


class SceParams(Params):
    select_topk: float = Field(1.0, ge=0, le=1)


def variance_row(tvs: torch.Tensor) -> torch.Tensor:
    """v_j, the population variance over the models of each element, as one float32 row. [n, c] -> [1, c]."""
    return tvs.var(0, unbiased=False).float().unsqueeze(0)


def select_count(nonzero: int, fraction: float) -> int:
    """k = ⌊fraction · nonzero⌋ as mergekit computes it (an int64 count times a Python float is a float32
    product, truncated)."""
    return int(torch.tensor(nonzero, dtype=torch.int64) * fraction)


def mean_squares(sum_squares: torch.Tensor, numel: int) -> torch.Tensor:
    """ω_i = Σ_j τ̂_ij² / N. [n] -> [n] float64."""
    return sum_squares.double().cpu() / max(numel, 1)


def sce_weights(omega: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w_i = ω_i / Σ_l ω_l, or 1/n where Σ_l ω_l < 1e-6, rounded as mergekit rounds them: ω and its sum in the
    compute dtype. [n] float64 -> [n] in ``dtype``."""
    omega = omega.to(dtype)
    total = omega.sum().item()
    if abs(total) < UNIFORM_BELOW:
        return torch.ones_like(omega) / omega.numel()
    return omega / total


class _Selection:
    """Pass 2's accumulator: Σ_j τ_ij² over the elements whose v lies above the threshold's bin ([n], float64),
    and the bin's members in flat order: row 0 their v bits, rows 1..n their τ_ij as float32 bits."""

    def __init__(self, n: int) -> None:
        self.above = torch.zeros(n, dtype=torch.float64)
        self.members = BinMembers(n + 1)

    def add(self, part: tuple[torch.Tensor, list[torch.Tensor]]) -> _Selection:
        above, rows = part
        self.above += above.cpu()
        self.members.add(rows)
        return self


@register("sce", paper="https://arxiv.org/abs/2408.07990")
class Sce(Method):
    Params = SceParams

    def __init__(self, params: SceParams, model_params: list[Params]) -> None:
        super().__init__(params, model_params)
        self.fraction = params.select_topk
        self.selects = self.fraction < 1
        self.passes = 0 if self.fraction == 0 else 2 if self.selects else 1

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> Any:
        tvs = task_vectors(base, models)  # [n, c]
        if not self.selects:  # the only pass: Σ_j τ_ij²
            return tvs.double().square().sum(1)  # [n]
        v = variance_row(tvs)  # [1, c]
        if pass_index == 0:
            nonzero = torch.count_nonzero(v).view(1, 1)
            return torch.cat([bin_histogram(v, SHIFT), nonzero], dim=1)  # [1, bins + 1]
        if stats["k"] == 0:  # nothing is selected
            return torch.zeros(tvs.shape[0], dtype=torch.float64), [v.new_empty(0, dtype=torch.int32)] * (
                tvs.shape[0] + 1)
        bins = (v.view(torch.int32) >> SHIFT)[0]  # [c]: v ≥ 0, so its bits order like its values
        wanted = int(stats["bin"][0])
        above = tvs[:, bins > wanted].double().square().sum(1)  # [n]
        inside = bins == wanted
        members = bin_members(v, stats["bin"], SHIFT) + list(tvs[:, inside].float().contiguous().view(torch.int32))
        return above, members

    def accumulate(self, total: Any, part: Any) -> Any:
        if isinstance(part, tuple):  # pass 2 of a selection
            return (total if total is not None else _Selection(part[0].numel())).add(part)
        return super().accumulate(total, part)

    def conclude(self, pass_index: int, total: Any, stats: dict[str, Any], numel: int) -> None:
        if not self.selects:
            stats["omega"] = mean_squares(total, numel)
            return
        if pass_index == 0:
            total = total.cpu()
            stats["k"] = k = select_count(int(total[0, -1]), self.fraction)
            if k > 0:
                stats["bin"], stats["k_left"] = locate_bin(total[:, :-1], torch.tensor([k]))
            return
        if stats["k"] == 0:
            return
        rows = total.members.rows()
        v_bits, tau = rows[0], torch.stack(rows[1:]).view(torch.float32)  # [m], [n, m]
        threshold = threshold_from_members([v_bits], stats["k_left"])  # [1] float32, > 0 as k ≤ #nonzero
        t_bits = int(threshold.view(torch.int32))
        above, tied = v_bits > t_bits, v_bits == t_bits  # [m]
        tied_left = stats["k_left"] - int(above.sum())  # [1]: tied elements kept, the first in flat order
        kept = above | (tied & (tied.cumsum(0) <= tied_left))  # [m]
        stats["omega"] = mean_squares(total.above + tau[:, kept].double().square().sum(1), numel)
        stats["threshold"], stats["tied_left"] = threshold, tied_left
        stats["exact"] = int(tied.sum()) > int(tied_left)  # else every element tied at the threshold is kept

    def selected(self, tvs: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
        """m: 1 on the k elements of largest v (ties: the first in flat order; chunks come in order). [1, c]."""
        v = variance_row(tvs)
        if not stats["exact"]:
            return v >= stats["threshold"].to(v)
        if stats["tied_left"].device != v.device:
            stats["tied_left"] = stats["tied_left"].to(v.device)
        return prune_top_k(v, stats["threshold"], stats["tied_left"]) != 0  # kept v ≥ threshold > 0

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = task_vectors(base, models)  # [n, c]
        if self.selects:
            tvs = tvs * self.selected(tvs, stats) if stats.get("k", 0) > 0 else torch.zeros_like(tvs)
        omega = stats.get("omega", torch.zeros(tvs.shape[0], dtype=torch.float64))  # s = 0: τ̂ = 0
        weights = sce_weights(omega, tvs.dtype).to(tvs.device).unsqueeze(1)  # [n, 1]
        erased = weights * (tvs.sign() == elect_sign(tvs, "mass"))  # [n, c]: w_i e_ij
        return base + (tvs * erased).sum(0) / erased.sum(0).clamp(min=DIVISOR_FLOOR)
