"""FroM for LoRA adapters (Li et al., "FroM: Frobenius norm-based data-free adaptive model merging",
EMNLP Findings 2025, arXiv 2506.02478, LoRA variant), per adapted module:

    θ_i = s_i · B_i · A_i                         task vector of adapter i (s_i its LoRA scaling)
    w_i = ‖θ_i‖_F^k / Σ_j ‖θ_j‖_F^k               (k = 0: uniform; k → ∞: the largest-norm adapter)
    min_{A [r, in], B [out, r]}  L(A, B) = Σ_i w_i ‖θ_i − B·A‖_F²

solved by alternating least squares from A₀ ~ N(0, σ²):

    B ← (Σ_i w_i θ_i Aᵀ)(Σ_i w_i A Aᵀ)^†,     A ← (Σ_i w_i BᵀB)^†(Σ_i w_i Bᵀ θ_i)

(† the Moore–Penrose pseudo-inverse), stopping when the loss rises (the previous iterate is kept), when
its relative decrease (L_{t−1} − L_t) / L_{t−1} falls below ``tol``, or after ``max_iters``. The merged
update is α · B · A, with α folded into B. Since Σ w_i = 1, L = ‖θ* − B·A‖² + const with
θ* = Σ w_i θ_i the full-model FroM merge, so the optimum is the best rank-r approximation of θ*.

Everything is computed in factored form, never forming a dense θ_i (memory O(r·(in + out))):

    θ_i Aᵀ = s_i B_i (A_i Aᵀ)          Bᵀ θ_i = s_i (Bᵀ B_i) A_i
    ‖θ_i‖² = s_i² tr((B_iᵀB_i)(A_iA_iᵀ))   ⟨θ_i, BA⟩ = s_i tr((BᵀB_i)(A_iAᵀ))   ‖BA‖² = tr((BᵀB)(AAᵀ))

Defaults: k = 1 (as the ``from`` method; the paper's recommended k could not be retrieved here, set it
explicitly to reproduce a paper table); σ = 1 (ALS is invariant to the scale of A₀, so σ only matters for
round-off); output rank = the largest input rank; the output folder is a peft adapter written with
lora_alpha = rank (scaling 1), B carrying α.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from pydantic import Field

from ..errors import MergeError
from ..io.lora import LoraAdapter, check_adapters
from ..logs import progress_bar
from ..registry import register_adapter_method
from ..tensor_ops import frobenius_weights
from .base import AdapterMerge, Factors, Params, chunk_seed

PAPER = "https://arxiv.org/abs/2506.02478"
PINV_RTOL = 1e-12  # float64 Gram matrices: singular values below 1e-12·σ_max are round-off, treated as 0


class FromLoraParams(Params):
    """The config schema of ``method: from_lora`` (models are peft LoRA adapter folders)."""

    rank: int | None = Field(None, gt=0)
    k: float = 1.0
    alpha: float = 1.0
    max_iters: int = Field(100, gt=0)
    sigma: float = Field(1.0, gt=0)
    tol: float = Field(1e-6, ge=0)


def _pinv(gram: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of a symmetric PSD Gram matrix [r, r]."""
    return torch.linalg.pinv(gram, rtol=PINV_RTOL, hermitian=True)


def task_vector_norms(factors: Sequence[Factors], scalings: Sequence[float]) -> torch.Tensor:
    """‖θ_i‖_F with θ_i = s_i B_i A_i, as s_i √tr((B_iᵀB_i)(A_iA_iᵀ)) in float64. -> [n]."""
    squares = [s * s * ((b.double().T @ b.double()) * (a.double() @ a.double().T)).sum()  # tr(GB·GA), both symmetric
               for (a, b), s in zip(factors, scalings)]
    return torch.stack(squares).clamp(min=0).sqrt()  # [n]


def _check_module(factors: Sequence[Factors], scalings: Sequence[float], rank: int) -> tuple[int, int]:
    if not factors or len(factors) != len(scalings):
        raise MergeError(f"from_lora: got {len(factors)} factor pairs and {len(scalings)} scalings; expected "
                         "the same positive number")
    if int(rank) != rank or rank < 1:
        raise MergeError(f"from_lora: rank={rank!r}; expected a positive integer")
    out_dim, in_dim = factors[0][1].shape[0], factors[0][0].shape[1]
    for i, (a, b) in enumerate(factors):
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_dim or b.shape[0] != out_dim or a.shape[0] != b.shape[1]:
            raise MergeError(f"from_lora: factor pair {i} has A {tuple(a.shape)}, B {tuple(b.shape)}; expected "
                             f"A [r_i, {in_dim}] and B [{out_dim}, r_i]")
    return out_dim, in_dim


def from_lora_module(factors: Sequence[Factors], scalings: Sequence[float], rank: int, k: float,
                     max_iters: int, sigma: float, tol: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """FroM-LoRA for one module: ALS for rank-``rank`` (A, B) minimising Σ_i w_i ‖s_i B_i A_i − B A‖_F².

    factors: [(A_i [r_i, in], B_i [out, r_i])], scalings: [s_i]. Returns the accepted A [rank, in],
    B [out, rank] (float32, without α) and the losses of the accepted iterations, with Σ w_i = 1
    (non-increasing: an iteration that raises the loss ends the loop and is discarded).
    """
    _, in_dim = _check_module(factors, scalings, rank)
    if max_iters < 1 or sigma <= 0 or tol < 0:
        raise MergeError(f"from_lora: max_iters={max_iters}, sigma={sigma}, tol={tol}; expected max_iters >= 1, "
                         "sigma > 0, tol >= 0")
    a_s = [a.double() for a, _ in factors]  # [r_i, in]
    b_s = [b.double() for _, b in factors]  # [out, r_i]
    norms = task_vector_norms(factors, scalings)  # [n]
    weights = frobenius_weights(norms, k)  # [n], Σ = 1
    ws = [float(w) * float(s) for w, s in zip(weights, scalings)]  # w_i·s_i: every θ_i enters linearly
    energy = float(weights @ norms.square())  # Σ w_i ‖θ_i‖²

    def fit_b(a: torch.Tensor) -> torch.Tensor:  # a: [r, in] -> [out, r]
        theta_at = sum(c * (b_i @ (a_i @ a.T)) for c, a_i, b_i in zip(ws, a_s, b_s))  # Σ w_i θ_i Aᵀ: [out, r]
        return theta_at @ _pinv(a @ a.T)  # (Σ w_i) A Aᵀ = A Aᵀ: [r, r]

    def fit_a(b: torch.Tensor) -> torch.Tensor:  # b: [out, r] -> [r, in]
        bt_theta = sum(c * ((b.T @ b_i) @ a_i) for c, a_i, b_i in zip(ws, a_s, b_s))  # Σ w_i Bᵀθ_i: [r, in]
        return _pinv(b.T @ b) @ bt_theta  # [r, r] @ [r, in]

    def loss(a: torch.Tensor, b: torch.Tensor) -> float:  # Σ w_i‖θ_i‖² − 2Σ w_i⟨θ_i, BA⟩ + ‖BA‖²
        cross = sum(c * ((b.T @ b_i) * (a_i @ a.T).T).sum() for c, a_i, b_i in zip(ws, a_s, b_s))  # tr(XY) = Σ X∘Yᵀ
        fit = ((b.T @ b) * (a @ a.T)).sum()  # ‖BA‖², both Grams symmetric
        return max(energy - 2 * float(cross) + float(fit), 0.0)

    a = torch.randn(rank, in_dim, generator=generator, dtype=torch.float64) * sigma  # A₀: [rank, in]
    accepted: tuple[torch.Tensor, torch.Tensor] | None = None
    history: list[float] = []
    for _ in range(max_iters):
        b = fit_b(a)  # [out, rank]
        a_next = fit_a(b)  # [rank, in]
        current = loss(a_next, b)
        if history and current > history[-1]:
            break  # the loss rose: keep the previous iterate
        previous = history[-1] if history else None
        accepted, a = (a_next, b), a_next
        history.append(current)
        if current == 0.0 or (previous is not None and previous - current <= tol * previous):
            break
    assert accepted is not None  # the first iteration is always accepted
    return accepted[0].float(), accepted[1].float(), history


def _merged_modules(adapters: Sequence[LoraAdapter], names: list[str], rank: int, k: float, alpha: float,
                    max_iters: int, sigma: float, seed: int,
                    tol: float) -> Iterator[tuple[str, Factors, list[float], float]]:
    """Yield (name, (A, α·B), loss history, Σ w_i‖θ_i‖²) per module; module ``name`` draws A₀ from a
    generator seeded by (seed, name), so its result does not depend on which other modules exist."""
    for name in names:
        factors = [adapter.factors[name] for adapter in adapters]
        scalings = [adapter.scalings[name] for adapter in adapters]
        generator = torch.Generator().manual_seed(chunk_seed(seed, name, 0))
        a, b, history = from_lora_module(factors, scalings, rank, k, max_iters, sigma, tol, generator)
        norms = task_vector_norms(factors, scalings)  # [n]
        energy = float(frobenius_weights(norms, k) @ norms.square())
        yield name, (a, alpha * b), history, energy


def default_rank(adapters: Sequence[LoraAdapter]) -> int:
    """The largest rank of any module of any adapter."""
    return max(a.shape[0] for adapter in adapters for a, _ in adapter.factors.values())


def from_lora(adapters: Sequence[LoraAdapter], params: FromLoraParams, *, seed: int = 0, progress: bool = False
              ) -> AdapterMerge:
    """FroM-LoRA over every module of ``adapters`` (the registered adapter merge): the factors, written with
    lora_alpha = rank (scaling 1, B carrying α), and a summary: module count, rank, mean final loss, mean final
    loss relative to Σ w_i‖θ_i‖², mean accepted iterations."""
    names = check_adapters(adapters, "from_lora")
    rank = default_rank(adapters) if params.rank is None else params.rank
    p = params.model_dump(exclude={"rank"})
    merged: dict[str, Factors] = {}
    finals, relatives, iterations = [], [], []
    modules = _merged_modules(adapters, names, rank, p["k"], p["alpha"], p["max_iters"], p["sigma"], seed, p["tol"])
    for name, factors, history, energy in progress_bar(modules, total=len(names), desc="from_lora", unit="module",
                                               disable=not progress):
        merged[name] = factors
        finals.append(history[-1])
        relatives.append(history[-1] / energy if energy > 0 else 0.0)
        iterations.append(len(history))
    summary = {"modules": len(merged), "rank": rank, **p, "seed": seed, "final_loss_mean": sum(finals) / len(finals),
               "relative_loss_mean": sum(relatives) / len(relatives),
               "iterations_mean": sum(iterations) / len(iterations)}
    return AdapterMerge(merged, rank, float(rank), summary)


register_adapter_method("from_lora", PAPER, FromLoraParams, from_lora)
