"""Merging n LoRA adapters of one base model into one adapter, in either of two spaces.

Adapter i adds ΔW_i = s_i · B_i · A_i to base weight W (A_i [r, in], B_i [out, r], s_i = lora_alpha / r;
merging/io/lora.py).

**Product space** (``space: product``). The mergeable tensor of a module is ΔW itself: any per-tensor method
(task arithmetic, TIES, DARE, …) or FW-Merging works on {ΔW_i} with base 0, and the merged ΔW* is
re-factored to rank ``rank`` by the truncated SVD (Eckart–Young: the best rank-r approximation in Frobenius
norm; FroM-LoRA on the single "adapter" ΔW* has the same optimum, merging/methods/from_lora.py):

    ΔW* = U Σ Vᵀ,   B = U_r Σ_r^{1/2},   A = Σ_r^{1/2} V_rᵀ,   written with lora_alpha = r (scaling 1)

The relative error ‖ΔW* − B·A‖_F / ‖ΔW*‖_F of every module is reported; it is 0 when rank ≥ rank(ΔW*)
(a linear merge of n rank-r adapters has rank ≤ n·r).

**Factor space** (``space: factors``, the official FW-Merging LoRA code, hmarkc/FW-Merging
generative/merge.py). The mergeable tensors are the factors A and B of every module, merged as separate
tensors with base 0; the result (A*, B*) is an adapter of the same rank and lora_alpha, and its update is
s·B*·A*, cross-terms B_i·A_j included (task arithmetic gives s·(λΣB_i)(λΣA_j)). All adapters must share the
rank and the scaling.

Memory: one module at a time — the n candidates' ΔW (or factors) of that module, never the whole model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from .errors import MergeError
from .io.lora import LoraAdapter, check_adapters
from .methods.base import Factors, Method, merge_in_memory

Space = Literal["product", "factors"]


ARPACK_MIN_SIDE = 256  # below this a full SVD is as fast as ARPACK


def top_singular(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` largest singular triplets (u [out, k], s [k] descending, vh [k, in]) of a float64 ``delta``.
    Large matrices use ARPACK (scipy ``svds``, tol 0: converged to machine precision, seeded start vector),
    which costs a few hundred products with ``delta`` instead of a full SVD: a 16-adapter TA merge of a
    4096 × 4096 module takes 8.5 s against 49 s on one thread (scripts/bench_lora_merge.py). Small
    matrices, a ``k`` close to the side, or an ARPACK failure take ``torch.linalg.svd``."""
    side = min(delta.shape)
    if side >= ARPACK_MIN_SIDE and k < side - 1:
        import numpy as np
        from scipy.sparse.linalg import ArpackError, svds

        try:
            u, s, vh = svds(delta.numpy(), k=k, tol=0, v0=np.random.default_rng(0).standard_normal(side))
        except ArpackError:
            pass
        else:
            order = np.argsort(s)[::-1].copy()
            return (torch.from_numpy(u[:, order].copy()), torch.from_numpy(s[order].copy()),
                    torch.from_numpy(vh[order].copy()))
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # [out, m], [m], [m, in]
    return u[:, :k], s[:k], vh[:k]


def refactor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A [rank, in], B [out, rank], relative error) with B·A the best rank-``rank`` approximation of
    ``delta`` [out, in] (``top_singular``); singular values are split evenly, √σ to each factor; rank >
    min(out, in) pads with zero rows/columns (the adapter keeps its declared rank). The error is
    ‖ΔW − B·A‖_F / ‖ΔW‖_F = √(1 − Σ_{i≤r} σ_i² / ‖ΔW‖_F²)."""
    if delta.dim() != 2:
        raise MergeError(f"refactor: ΔW has shape {tuple(delta.shape)}; expected [out, in]")
    if int(rank) != rank or rank < 1:
        raise MergeError(f"refactor: rank={rank!r}; expected a positive integer")
    a = torch.zeros(rank, delta.shape[1], dtype=torch.float64)  # [rank, in]
    b = torch.zeros(delta.shape[0], rank, dtype=torch.float64)  # [out, rank]
    delta = delta.double()
    total = float(delta.square().sum())
    if total == 0:
        return a.float(), b.float(), 0.0
    keep = min(rank, *delta.shape)
    u, s, vh = top_singular(delta, keep)
    root = s.clamp_min(0).sqrt()  # [keep]
    a[:keep] = root[:, None] * vh
    b[:, :keep] = u * root[None, :]
    error = max(total - float(s.square().sum()), 0.0) / total
    return a.float(), b.float(), error ** 0.5


class DeltaSource:
    """Adapter i's ΔW_i = s_i·B_i·A_i per base parameter name, formed on ``read`` (a TensorSource)."""

    def __init__(self, adapter: LoraAdapter, names: Sequence[str]) -> None:
        self.adapter, self.names = adapter, list(names)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.adapter.delta_shape(name)

    def read(self, name: str) -> torch.Tensor:
        return self.adapter.delta(name)  # [out, in]


def factor_names(names: Sequence[str]) -> list[str]:
    """'<module>.weight' -> '<module>.lora_A', '<module>.lora_B' (the factor-space tensor names)."""
    return [f"{n[:-len('.weight')]}.lora_{which}" for n in names for which in "AB"]


class FactorSource:
    """Adapter i's factors as separate tensors '<module>.lora_A' [r, in] and '<module>.lora_B' [out, r]."""

    def __init__(self, adapter: LoraAdapter, names: Sequence[str]) -> None:
        self.adapter, self.names = adapter, factor_names(names)

    def _get(self, name: str) -> torch.Tensor:
        module, which = name.rsplit(".lora_", 1)
        a, b = self.adapter.factors[f"{module}.weight"]
        return a if which == "A" else b

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def read(self, name: str) -> torch.Tensor:
        return self._get(name)


class ZeroSource:
    """All-zero tensors of given shapes (the base of task-vector candidates), made on ``read``."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes, self.names = dict(shapes), list(shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def read(self, name: str) -> torch.Tensor:
        return torch.zeros(self.shapes[name])


def sources(adapters: Sequence[LoraAdapter], space: Space, labels: Sequence[str]
            ) -> tuple[ZeroSource, dict[str, DeltaSource | FactorSource]]:
    """The zero base and the candidates of ``space`` (checked: same modules and shapes; for ``factors`` the
    same rank and scaling), keyed by ``labels``."""
    names = check_adapters(adapters, f"LoRA merge ({space} space)")
    if space == "factors":
        first = adapters[0]
        for adapter in adapters:
            for name in names:
                if adapter.factors[name][0].shape != first.factors[name][0].shape:
                    raise MergeError(f"factor-space merge: adapter '{adapter.path}' has rank "
                                     f"{adapter.factors[name][0].shape[0]} at '{name}' but '{first.path}' has "
                                     f"{first.factors[name][0].shape[0]}; A and B are merged as tensors, so "
                                     "every adapter needs the same rank (use space: product)")
                if adapter.scalings[name] != first.scalings[name]:
                    raise MergeError(f"factor-space merge: adapter '{adapter.path}' has scaling "
                                     f"{adapter.scalings[name]} at '{name}' but '{first.path}' has "
                                     f"{first.scalings[name]}; expected equal lora_alpha / r (use space: product)")
        candidates = {label: FactorSource(a, names) for label, a in zip(labels, adapters)}
    elif space == "product":
        candidates = {label: DeltaSource(a, names) for label, a in zip(labels, adapters)}
    else:
        raise MergeError(f"LoRA merge space '{space}'; expected 'product' or 'factors'")
    first_source = next(iter(candidates.values()))
    return ZeroSource({n: first_source.shape(n) for n in first_source.names}), candidates


def to_factors(theta: Mapping[str, torch.Tensor], space: Space, rank: int
               ) -> tuple[dict[str, Factors], dict[str, float]]:
    """Merged tensors of ``space`` -> ({base parameter name: (A, B)}, {name: relative re-factoring error}).
    Product space re-factors each ΔW to ``rank`` (``refactor``); factor space pairs the merged A and B."""
    factors, errors = {}, {}
    if space == "product":
        for name, delta in theta.items():
            a, b, errors[name] = refactor(delta, rank)
            factors[name] = (a, b)
    else:
        for name in theta:
            if name.endswith(".lora_A"):
                module = name[:-len(".lora_A")]
                factors[f"{module}.weight"] = (theta[name], theta[f"{module}.lora_B"])
    return factors, errors


def merge_deltas(adapters: Sequence[LoraAdapter], method: Method, rank: int, seed: int = 0
                 ) -> tuple[dict[str, Factors], dict[str, float]]:
    """A per-tensor ``method`` on ΔW_1..ΔW_n of each module (base 0), re-factored to ``rank``: the merged
    adapter's factors (scaling 1) and each module's relative re-factoring error."""
    base, candidates = sources(adapters, "product", [str(a.path) for a in adapters])
    factors, errors = {}, {}
    for name in base.names:
        deltas = [c.read(name) for c in candidates.values()]  # n × [out, in]
        merged = merge_in_memory(method, base.read(name), deltas, name=name, seed=seed)  # [out, in]
        a, b, errors[name] = refactor(merged, rank)
        factors[name] = (a, b)
        del deltas, merged
    return factors, errors


def merged_weights(space: Space, weights: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
                   scaling: float = 1.0) -> dict[str, torch.Tensor]:
    """The base weights the merged tensors ``params`` stand for (differentiable in ``params``):
    product: W + ΔW; factors: W + scaling·B·A, in W's dtype. ``weights``: the base's weights by name."""
    if space == "product":
        return {name: weights[name] + delta.to(weights[name].dtype) for name, delta in params.items()}
    out = {}
    for name, tensor in params.items():
        if name.endswith(".lora_A"):
            module = name[:-len(".lora_A")]
            w = weights[f"{module}.weight"]
            out[f"{module}.weight"] = w + (scaling * (params[f"{module}.lora_B"] @ tensor)).to(w.dtype)
    return out
