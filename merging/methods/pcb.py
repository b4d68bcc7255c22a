"""PCB-merging, Parameter Competition Balancing (Du et al., NeurIPS 2024, arXiv 2410.02396; official code
duguodong7/pcb-merging, pcb-merging.py ``PCB_merge`` and nlp_source_code/utils/merge_utils.py
``task_para_att_merge``). Each task vector τ_i is a row over the whole model (``scope: model``, the official
rule; ``tensor``: per tensor), d its length, n the number of tasks:

    A_i = clip(|τ_i|, a_i, z_i)   with a_i, z_i the ⌊c·d⌋-th and (⌊(1 − c)·d⌋ − 1)-th smallest |τ_i| (outliers cut)
    τ̃_i = sgn(τ_i) ⊙ A_i
    intra_i = exp(n · ((A_i − a_i) / (z_i − a_i))²)                   (intra-balancing: its own magnitudes)
    inter_i = tanh(τ_i ⊙ Σ_j τ_j)                                     (inter-balancing: agreement with all)
    b_i = intra_i ⊙ inter_i
    s_i = (max(b_i, q_i) − q_i) / (max b_i − q_i)   with q_i the ⌊(1 − r)·d⌋-th smallest b_i (the top r kept)
    θ = θ_base + λ · Σ_i τ̃_i ⊙ s_i / max(Σ_i s_i, 1e-12)

with c = ``clip`` (0.01 in the official NLP and ViT code; 1e-4 in pcb-merging.py) and r = ``ratio`` (pcb_ratio;
0.1 the function default, 0.05 for ViTs). A zero range (z_i = a_i, or max b_i = q_i) gives 0 where the official
code divides 0 by 0. (The ViT script vision_source_code/pcb.py balances with the normalised clipped values
instead of τ; not followed here.)

Streaming: four passes give the order statistics exactly (merging/topk.py): a histogram and the bin members of
|τ_i| for a_i and z_i, then of b_i (signed, ``order_keys``) for q_i and max b_i; exact zeros are counted, not
collected, so a sparse task vector costs no memory. ``combine`` then needs only the chunk. A model-scope merge reads the model five times, whatever its size.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..registry import register
from ..tensor_ops import task_vectors
from ..topk import (
    BinMembers,
    bin_histogram,
    bin_members,
    key_histogram,
    key_members,
    kth_largest_with_zeros,
    locate_bin,
    order_keys,
    values_of_keys,
)
from .base import Chunk, Method, Params


class PcbParams(Params):
    ratio: float = Field(0.1, gt=0, le=1)
    clip: float = Field(0.01, ge=0, lt=0.5)
    scale: float = Field(1.0, alias="lambda")
    scope: Literal["model", "tensor"] = "model"


def normalised(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(x − low) / (high − low) per row, 0 where high = low. [n, c], [n], [n] -> [n, c]."""
    span = (high - low).unsqueeze(1)
    return torch.where(span > 0, (values - low.unsqueeze(1)) / torch.where(span > 0, span, 1), 0)


@register("pcb", paper="https://arxiv.org/abs/2410.02396")
class Pcb(Method):
    Params = PcbParams
    affine_in = "scale"
    min_models = 2
    passes = 4

    def __init__(self, params: PcbParams, model_params: list[Params]) -> None:
        super().__init__(params, model_params)
        self.scope = params.scope
        self.shift = 20 if params.scope == "tensor" else 16  # finer bins when pooling a whole model

    def clipped(self, tvs: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
        """A_i = |τ_i| clipped to [a_i, z_i]. [n, c] -> [n, c]."""
        low, high = stats["low"].to(tvs).unsqueeze(1), stats["high"].to(tvs).unsqueeze(1)
        return torch.minimum(torch.maximum(tvs.abs(), low), high)

    def balance(self, tvs: torch.Tensor, clipped: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
        """b_i = intra_i ⊙ inter_i. [n, c] -> [n, c]."""
        intra = torch.exp(len(tvs) * normalised(clipped, stats["low"].to(tvs), stats["high"].to(tvs)).square())
        return intra * torch.tanh(tvs * tvs.sum(0))

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> Any:
        tvs = task_vectors(base, models).float()  # [n, c]
        if pass_index == 0:
            return bin_histogram(tvs, self.shift)
        if pass_index == 1:  # exact zeros are counted by the histogram, never collected
            return [[row[row != 0] for row in bin_members(tvs, stats[f"{end}_bin"], self.shift)]
                    for end in ("low", "high")]
        keys = order_keys(self.balance(tvs, self.clipped(tvs, stats), stats))  # [n, c]
        if pass_index == 2:
            return key_histogram(keys, self.shift)
        return [[row[(row != 0) & (row != -1)] for row in key_members(keys, stats[f"{end}_bin"], self.shift)]
                for end in ("cut", "top")]  # keys 0 and -1 are +0.0 and -0.0

    def accumulate(self, total: Any, part: Any) -> Any:
        if isinstance(part, list):  # member passes: two sets of per-row members (a chunk's, or a tensor's)
            part = [rows.rows() if isinstance(rows, BinMembers) else rows for rows in part]
            total = total or [BinMembers(len(rows)) for rows in part]
            return [members.add(rows) for members, rows in zip(total, part)]
        return super().accumulate(total, part)

    def conclude(self, pass_index: int, total: Any, stats: dict[str, Any], numel: int) -> None:
        n = len(self.model_params)

        def rank(ascending_index: int) -> torch.Tensor:  # the k of "k-th largest" for an ascending index
            return torch.full((n,), numel - ascending_index, dtype=torch.int64)

        if pass_index in (0, 2):
            ends = {0: {"low": int(self.params.clip * numel), "high": int((1 - self.params.clip) * numel) - 1},
                    2: {"cut": int((1 - self.params.ratio) * numel), "top": numel - 1}}[pass_index]
            histogram = total.cpu()
            for end, index in ends.items():
                stats[f"{end}_bin"], stats[f"{end}_left"] = locate_bin(histogram, rank(max(index, 0)))
                stats[f"{end}_count"] = histogram.gather(1, stats[f"{end}_bin"].unsqueeze(1)).squeeze(1)
        else:
            as_values = (lambda row: row.view(torch.float32)) if pass_index == 1 else values_of_keys
            for end, members in zip(("low", "high") if pass_index == 1 else ("cut", "top"), total):
                stats[end] = kth_largest_with_zeros([as_values(row) for row in members.rows()],
                                                    stats[f"{end}_left"], stats[f"{end}_count"])

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        tvs = task_vectors(base, models).float()  # [n, c]
        clipped = self.clipped(tvs, stats)
        balance = self.balance(tvs, clipped, stats)
        cut, top = stats["cut"].to(tvs), stats["top"].to(tvs)
        scores = normalised(torch.maximum(balance, cut.unsqueeze(1)), cut, top)
        merged = (tvs.sign() * clipped * scores).sum(0) / scores.sum(0).clamp(min=1e-12)  # [c]
        return base + self.params.scale * merged.to(base)
