"""KnOTS (Stoica et al., "Model merging with SVD to tie the KnOTS", ICLR 2025, arXiv 2410.19735; official code
gstoica27/KnOTS, task_merger.py ``SVDMerger`` and masking_ops.py ``ties_masking`` / ``masked_merge``): LoRA
adapters are merged in a shared basis. Per adapted module, with ΔW_i = s_i B_i A_i [out, in] (s_i the adapter's
lora_alpha / r, 1 in every official config):

    [ΔW_1 | … | ΔW_n] = U diag(σ) [V_1 | … | V_n]ᵀ    (thin SVD of the column-wise concatenation; the k columns of
                                                      U with σ_j > ``threshold`` kept, k ≤ n·r)
    P_i = diag(σ) V_iᵀ = Uᵀ ΔW_i  [k, in]             (so ΔW_i = U P_i exactly: a common basis U)
    P = merge(P_1 … P_n),   ΔW = U P

``merge: ties`` (KnOTS-TIES): each task's P (over every module, ``scope: model``, as the official code; or per
module) keeps its top ``density`` fraction of magnitudes (⌊density · c⌋ + 1, the official count), signs are
elected by the sum (a zero sum takes the majority sign), P = λ · the mean of the agreeing entries (divided by how many tasks agree, at least 1);
``merge: task_arithmetic``: the trimmed P_i summed, P = λ Σ_i P̂_i (density 1: plain task arithmetic, ΔW = λ Σ_i ΔW_i). ``drop_rate`` p > 0 first applies
DARE to each P_i (m ⊙ P_i / (1 − p), m ~ Bernoulli(1 − p), seeded per module): KnOTS-DARE-TIES. Defaults: the
official ViT-B/16 KnOTS-TIES config (density 0.2, λ 0.6).

The result is again a LoRA adapter: B = U, A = P, zero-padded to the largest k of any module (rank ≤ n·r),
written with lora_alpha = rank (scaling 1). U comes from the n·r × n·r problem, never from the [out, n·in]
concatenation: with B_cat = [s_1 B_1 … s_n B_n] = Q R (QR), the concatenation's left singular vectors are Q W
for R D Rᵀ = W Λ Wᵀ, D = blockdiag(A_i A_iᵀ), and σ = √Λ (float64).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from ..errors import MergeError
from ..io.lora import LoraAdapter, check_adapters
from ..registry import register_adapter_method
from ..tensor_ops import disjoint_merge, random_keep_mask
from .base import AdapterMerge, Chunk, Factors, Params

PAPER = "https://arxiv.org/abs/2410.19735"


class KnotsParams(Params):
    merge: Literal["ties", "task_arithmetic"] = "ties"
    density: float = Field(0.2, gt=0, le=1)
    scope: Literal["model", "module"] = "model"
    drop_rate: float = Field(0.0, ge=0, lt=1)
    scale: float = Field(0.6, alias="lambda")
    threshold: float = Field(1e-5, ge=0)


def shared_basis(factors: Sequence[Factors], scalings: Sequence[float],
                 threshold: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """U [out, k] (the left singular vectors of [ΔW_1 | … | ΔW_n] with σ > threshold, σ descending) and the
    coordinates P_i = Uᵀ ΔW_i [k, in], in float64."""
    bs = torch.cat([s * b.double() for (_, b), s in zip(factors, scalings)], 1)  # [out, n·r]
    q, r = torch.linalg.qr(bs)  # [out, n·r], [n·r, n·r]
    d = torch.block_diag(*[a.double() @ a.double().T for a, _ in factors])  # [n·r, n·r]
    eigenvalues, w = torch.linalg.eigh(r @ d @ r.T)  # ascending
    keep = eigenvalues.clamp(min=0).sqrt() > threshold
    u = q @ w[:, keep].flip(1)  # [out, k], σ descending
    coordinates = []
    for (a, b), s in zip(factors, scalings):
        coordinates.append(((u.T @ b.double()) * s) @ a.double())  # [k, in]: Uᵀ ΔW_i
    return u, coordinates


def trimmed(values: torch.Tensor, density: float) -> torch.Tensor:
    """Each row's entries at or above its (c − ⌊density · c⌋)-th smallest magnitude (the official
    ``topk_values_mask``: ⌊density · c⌋ + 1 of them, ties included), the rest 0. [n, c] -> [n, c]."""
    columns = values.shape[1]
    k = int(density * columns)
    if density >= 1 or k >= columns or columns == 0:
        return values
    threshold = values.abs().kthvalue(columns - k, dim=1, keepdim=True).values  # [n, 1]
    return values * (values.abs() >= threshold)


def merge_coordinates(stacked: torch.Tensor, params: KnotsParams) -> torch.Tensor:
    """P from the tasks' flattened coordinates: trimmed, then summed (task_arithmetic) or TIES's elected-sign
    disjoint mean (a zero sum takes the majority sign of the others, 0 if they tie, as the official
    ``resolve_zero_signs``), times λ. [n, c] -> [c]."""
    stacked = trimmed(stacked, params.density)
    if params.merge == "task_arithmetic":
        return params.scale * stacked.sum(0)
    sign = stacked.sum(0).sign()  # [c]
    sign[sign == 0] = sign.sum().sign()
    return params.scale * disjoint_merge(stacked, torch.ones(len(stacked)), sign, normalize=True)


def knots(adapters: Sequence[LoraAdapter], params: KnotsParams, *, seed: int = 0, progress: bool = False
          ) -> AdapterMerge:
    """KnOTS over every module of ``adapters`` (the registered adapter merge)."""
    names = check_adapters(adapters, "knots")
    bases, coordinates = {}, {}
    for name in names:
        factors = [adapter.factors[name] for adapter in adapters]
        u, p = shared_basis(factors, [adapter.scalings[name] for adapter in adapters], params.threshold)
        stacked = torch.stack([c.reshape(-1) for c in p])  # [n, k·in]
        if params.drop_rate > 0:
            draws = Chunk(name, tuple(stacked.shape[1:]), 0, stacked.shape[1], seed).uniform(len(stacked))
            keep = random_keep_mask(draws, torch.full((len(stacked),), 1 - params.drop_rate, dtype=torch.float64))
            stacked = stacked * keep.to(stacked) / (1 - params.drop_rate)
        bases[name], coordinates[name] = u, stacked
    rank = max(u.shape[1] for u in bases.values())
    if rank == 0:
        raise MergeError("knots: every adapter's update is zero (no singular value above the threshold)")
    if params.scope == "model":  # one trim and one election over every module's coordinates
        sizes = [c.shape[1] for c in coordinates.values()]
        merged_p = dict(zip(names, merge_coordinates(torch.cat(list(coordinates.values()), 1), params).split(sizes)))
    else:
        merged_p = {name: merge_coordinates(c, params) for name, c in coordinates.items()}
    merged: dict[str, Factors] = {}
    for name in names:
        u = bases[name]
        pad = rank - u.shape[1]
        p = merged_p[name].reshape(u.shape[1], adapters[0].factors[name][0].shape[1])  # [k, in] (k may be 0)
        merged[name] = (torch.nn.functional.pad(p, (0, 0, 0, pad)).float(),
                        torch.nn.functional.pad(u, (0, pad)).float())  # A [rank, in], B [out, rank]
    summary = {"modules": len(names), "rank": rank, **params.model_dump(by_alias=True), "seed": seed}
    return AdapterMerge(merged, rank, float(rank), summary)


register_adapter_method("knots", PAPER, KnotsParams, knots)
