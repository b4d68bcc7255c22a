"""Known-value tests of the primitives, each worked by hand."""
import math

import pytest
import torch

from merging import tensor_ops as ops


def test_task_vectors_subtract_the_base():
    base = torch.tensor([1.0, 2.0])
    models = torch.tensor([[2.0, 2.0], [0.0, 5.0]])
    assert torch.equal(ops.task_vectors(base, models), torch.tensor([[1.0, 0.0], [-1.0, 3.0]]))


def test_prune_magnitude_keeps_at_or_above_threshold():
    tvs = torch.tensor([[0.5, -3.0, 2.0, -1.0]])
    assert ops.prune_magnitude(tvs, torch.tensor([2.0])).tolist() == [[0.0, -3.0, 2.0, 0.0]]


def test_elect_sign_by_mass_and_by_count():
    tvs = torch.tensor([[3.0, 1.0, 0.0], [-1.0, -0.75, 0.0], [-1.0, -0.75, 0.0]])
    # column sums: 1, -0.5, 0 (a tie goes to +1); sign counts: -1, -1, 0
    assert ops.elect_sign(tvs, "mass").tolist() == [1.0, -1.0, 1.0]
    assert ops.elect_sign(tvs, "count").tolist() == [-1.0, -1.0, 1.0]


def test_disjoint_merge_averages_only_agreeing_entries():
    weighted = torch.tensor([[2.0, -1.0, 0.0], [4.0, 3.0, 0.0], [-6.0, 5.0, 0.0]])
    sign = torch.tensor([1.0, 1.0, 1.0])
    # col 0: agree {2, 4} -> 3 ; col 1: agree {3, 5} -> 4 ; col 2: nobody -> 0
    merged = ops.disjoint_merge(weighted, torch.ones(3), sign, normalize=True)
    assert merged.tolist() == [3.0, 4.0, 0.0]
    assert ops.disjoint_merge(weighted, torch.ones(3), sign, normalize=False).tolist() == [6.0, 8.0, 0.0]


def test_disjoint_merge_divides_by_agreeing_weights():
    weights = torch.tensor([1.0, 3.0])
    weighted = torch.tensor([[1.0], [6.0]])  # w·τ with τ = (1, 2)
    assert ops.disjoint_merge(weighted, weights, torch.tensor([1.0]), True).tolist() == [7.0 / 4.0]


def test_random_keep_mask_equals_bernoulli_draws():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    mask = ops.random_keep_mask(torch.rand((2, 1000), generator=g1), torch.tensor([0.3, 0.3]))
    expected = torch.bernoulli(torch.full((2, 1000), 0.3), generator=g2)  # 0/1 floats
    assert mask.dtype == expected.dtype and torch.equal(mask, expected)


def test_slerp_coefficients_at_right_angle():
    c0, c1 = ops.slerp_coefficients(0.5, 0.0)  # θ = π/2: sin(π/4)/1 each
    assert c0 == pytest.approx(math.sqrt(0.5)) and c1 == pytest.approx(math.sqrt(0.5))


def test_slerp_coefficients_fall_back_to_linear_when_colinear():
    assert ops.slerp_coefficients(0.25, 0.99999) == (0.75, 0.25)


def test_frobenius_weights():
    norms = torch.tensor([1.0, 3.0])
    assert ops.frobenius_weights(norms, 0).tolist() == [0.5, 0.5]
    assert ops.frobenius_weights(norms, 1).tolist() == pytest.approx([0.25, 0.75])
    assert ops.frobenius_weights(norms, 2).tolist() == pytest.approx([0.1, 0.9])
    assert ops.frobenius_weights(norms, 1e4).tolist() == pytest.approx([0.0, 1.0])


def _capped_simplex_by_bisection(w: torch.Tensor) -> torch.Tensor:
    """The projection of one column onto {w ≥ 0, Σ w ≤ 1} as max(w − s, 0), s ≥ 0 the smallest shift whose
    result sums to ≤ 1 (found by bisection, float64): an independent route to the same point."""
    w = w.double()
    if w.clamp(min=0).sum() <= 1:
        return w.clamp(min=0)
    low, high = 0.0, float(w.max())
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if (w - mid).clamp(min=0).sum() > 1 else (low, mid)
    return (w - high).clamp(min=0)


def test_capped_simplex_projection_is_the_nearest_feasible_point():
    g = torch.Generator().manual_seed(0)
    w = torch.cat([3 * torch.randn(5, 40, generator=g), torch.full((5, 1), 0.1), torch.full((5, 1), -1.0)], 1)
    p = ops.project_capped_simplex(w)  # [5, 42]
    for col in range(w.shape[1]):
        torch.testing.assert_close(p[:, col].double(), _capped_simplex_by_bisection(w[:, col]), atol=1e-6, rtol=0)
    assert (p >= 0).all() and (p.sum(0) <= 1 + 1e-6).all()
    torch.testing.assert_close(p[:, 40], w[:, 40])  # feasible already (Σ = 0.5): unchanged
    assert (p[:, 41] == 0).all()  # all negative: the origin
    # optimality (variational inequality): ⟨w − p, z − p⟩ ≤ 0 for every feasible z
    z = torch.rand(5, 42, generator=g)
    z = z / (z.sum(0, keepdim=True) * (1 + torch.rand(1, 42, generator=g)))
    assert (((w - p) * (z - p)).sum(0) <= 1e-5).all()
