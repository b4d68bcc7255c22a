"""Arcee Fusion (Arcee AI; no paper: mergekit's reference is https://arcee.ai), per tensor as mergekit 0.1.5
computes it (mergekit/merge_methods/arcee_fusion.py): the model's change is taken only on its most important
elements, importance being the change's size times the KL divergence of the row it lies in,

    Δ = θ − θ_base   (θ the one merged model)
    for each row r (along the last dimension; a 1-D tensor is one row):
        p = softmax(θ_r) + ε,  q = softmax(θ_base,r) + ε,  ε = 1e-8,   KL_r = Σ_j p_j log(p_j / q_j)
    I_j = |Δ_j| · KL_r(j)
    Q(x) = I_(⌊x·(N−1)⌋), the order statistic of the N importances sorted ascending (0-based)
    τ = Q(0.5) + 1.5 · (Q(0.75) − Q(0.25))
    θ_merged = θ_base + Δ ⊙ 1[I ≥ τ]

A row's KL needs the whole row, so every chunk holds whole rows (``row_aligned``) and I is computed chunk by
chunk. The three order statistics are exact, streamed in two passes with TIES's k-th largest machinery
(merging/topk.py), which ranks magnitudes: I is ≥ 0 in exact arithmetic, but rounding leaves rows of nearly
equal softmaxes with a KL a little below 0, so negative and non-negative importances are ranked as two rows
(pass 1: their histograms and the counts of negative and of zero importances, which say in which row and at
which rank each order statistic lies; pass 2: the members of each statistic's bin). An order statistic that
falls among exact zeros (unchanged elements) needs no members.

Deviations from mergekit: for a tensor of more than 10⁶ elements mergekit estimates the three quantiles from 10⁶
elements drawn at random (with replacement, unseeded: runs differ); here they are always the exact order
statistics of the whole tensor (which the draws estimate), so the two agree exactly up to 10⁶ elements. The order
statistics are found among float32 values (a float64 compute dtype rounds I first; float32, bfloat16 and float16
are exact). As in mergekit, the mask is float32, so a bfloat16 or float16 Δ ⊙ mask is added to the base in
float32.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import register
from ..topk import BinMembers, bin_histogram, bin_members, locate_bin, threshold_from_members
from .base import Chunk, Method, NoParams

SHIFT = 20  # histogram bins of 1/8 octave (merging/topk.py)
EPS = 1e-8  # mergekit: added to both softmaxes
QUANTILES = (0.25, 0.5, 0.75)
IQR_FACTOR = 1.5
NO_BIN = -1  # a bin no bit pattern falls in: the order statistic is an exact zero, no members needed


def importance(chunk: Chunk, base: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """I_j = |θ_j − θ_base,j| · KL_r(j) over the whole rows of one chunk, in the compute dtype. [c], [c] -> [c]."""
    width = chunk.shape[-1] if len(chunk.shape) >= 2 else chunk.stop - chunk.start
    a, b = base.reshape(-1, max(width, 1)), model.reshape(-1, max(width, 1))  # [rows, width]
    p = F.softmax(b, dim=-1) + EPS
    q = F.softmax(a, dim=-1) + EPS
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)  # [rows, 1]
    return ((b - a).abs() * kl).reshape(-1)


def quantile_indices(numel: int) -> list[int]:
    """⌊x·(N−1)⌋ for x = 0.25, 0.5, 0.75 (exact integers; mergekit's float32 product is exact for N ≤ 2²⁴)."""
    return [(numel - 1) // 4, (numel - 1) // 2, 3 * (numel - 1) // 4]


def signed_rows(values: torch.Tensor) -> torch.Tensor:
    """Row 0: −I where I < 0 (else 0); row 1: I where I ≥ 0 (else 0), as float32. [c] -> [2, c]."""
    values = values.float()
    negative = values < 0
    return torch.stack([torch.where(negative, -values, 0.0), torch.where(negative, 0.0, values)])


@register("arcee_fusion", paper="https://arcee.ai")
class ArceeFusion(Method):
    Params = NoParams
    min_models = max_models = 1
    row_aligned = True
    passes = 2

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> Any:
        scores = importance(chunk, base, models[0])  # [c]
        rows = signed_rows(scores)  # [2, c]
        if pass_index == 0:
            counts = torch.stack([(scores < 0).sum(), (scores == 0).sum()]).view(2, 1)  # negatives, zeros
            return torch.cat([bin_histogram(rows, SHIFT), counts], dim=1)  # [2, bins + 1]
        return bin_members(rows[stats["rows"]], stats["bin"], SHIFT)  # 3 tensors, one per order statistic

    def accumulate(self, total: Any, part: Any) -> Any:
        if isinstance(part, list):  # pass 2: bin members are collected, not summed
            return (total if total is not None else BinMembers(len(part))).add(part)
        return super().accumulate(total, part)

    def conclude(self, pass_index: int, total: Any, stats: dict[str, Any], numel: int) -> None:
        if pass_index == 1:
            magnitudes = threshold_from_members(total.rows(), stats["k_left"])  # [3] float32
            stats["quantiles"] = torch.where(stats["rows"] == 0, -magnitudes, magnitudes)  # Q(.25), Q(.5), Q(.75)
            return
        total = total.cpu()
        negatives, zeros = int(total[0, -1]), int(total[1, -1])
        positives = numel - negatives - zeros
        rows, ks = [], []
        for index in quantile_indices(numel):  # 0-based ascending rank
            if index < negatives:  # the (index+1)-th most negative: the (index+1)-th largest of row 0
                rows.append(0)
                ks.append(index + 1)
            else:  # among the non-negatives, ascending rank index − negatives: a k-th largest of row 1
                rows.append(1)
                ks.append(numel - index)
        stats["rows"] = torch.tensor(rows)
        k = torch.tensor(ks)
        bins, k_left = locate_bin(total[stats["rows"], :-1], k)
        zero = (stats["rows"] == 1) & (k > positives)  # an exact zero: skip its bin (which holds every zero)
        stats["bin"] = torch.where(zero, NO_BIN, bins)
        stats["k_left"] = k_left

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        scores = importance(chunk, base, models[0])  # [c]
        low, median, high = stats["quantiles"].to(scores)
        threshold = median + IQR_FACTOR * (high - low)
        mask = (scores >= threshold).float()
        return base + (models[0] - base) * mask
