"""The subspace merges (TSV-M, ISO-C, ISO-CTS, CART, STAR, WUDI) against hand-worked examples and against
references written out here step by step in NumPy (float64) from the papers' formulas."""
import numpy as np
import pytest
import torch
from conftest import merge_method

from merging.errors import MergeError

merge = merge_method


@pytest.fixture
def matrices():
    """A base [6, 5] and 3 fine-tuned models with full-rank task matrices (float64)."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 5))
    return torch.tensor(base), [torch.tensor(base + 0.1 * rng.normal(size=(6, 5))) for _ in range(3)]


def np_polar(m):
    u, _, vh = np.linalg.svd(m, full_matrices=False)
    return u @ vh


def task_matrices(base, models):
    return [(m - base).numpy() for m in models]


# ---- TSV-M ---------------------------------------------------------------------------------------------
def test_tsv_m_equals_the_written_out_reference(matrices):
    base, models = matrices
    taus, k = task_matrices(base, models), 5 // 3  # r = 5, n = 3: one component per task
    svds = [np.linalg.svd(t, full_matrices=False) for t in taus]
    left = np.concatenate([u[:, :k] for u, _, _ in svds], 1)
    sigma = np.concatenate([s[:k] for _, s, _ in svds])
    right = np.concatenate([vh[:k] for _, _, vh in svds], 0)
    expected = base.numpy() + 0.7 * np_polar(left) @ np.diag(sigma) @ np_polar(right)
    assert np.allclose(merge("tsv_m", base, models, **{"lambda": 0.7}).numpy(), expected, atol=1e-10)


def test_tsv_m_leaves_orthogonal_low_rank_tasks_as_their_sum():
    """Task matrices of rank k = r/n in mutually orthogonal row and column spaces: nothing to decorrelate."""
    base = torch.zeros(4, 4, dtype=torch.float64)
    models = [torch.diag(torch.tensor([3.0, 1.0, 0, 0], dtype=torch.float64)),
              torch.diag(torch.tensor([0, 0, -2.0, 5.0], dtype=torch.float64))]
    assert torch.allclose(merge("tsv_m", base, models), models[0] + models[1], atol=1e-12)


def test_tsv_m_keeps_the_base_where_the_rank_is_below_the_task_count(matrices):
    base, models = matrices
    column = base[:, :1]  # [6, 1]: rank 1 < 3 tasks, so k = 0
    assert torch.equal(merge("tsv_m", column, [m[:, :1] for m in models]), column)


def test_non_matrix_tensors_take_the_mean_task_vector_scaled():
    base, models = torch.zeros(3), [torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])]
    for name in ("tsv_m", "iso_c", "iso_cts", "star", "wudi"):
        assert merge(name, base, models, **{"lambda": 2.0}).tolist() == [4.0, 4.0, 4.0]


def test_conv_kernels_are_matrices_only_with_matrices_nd(matrices):
    base, models = matrices
    base4, models4 = base.reshape(6, 5, 1, 1), [m.reshape(6, 5, 1, 1) for m in models]
    as_matrix = merge("iso_c", base, models)
    assert torch.allclose(merge("iso_c", base4, models4, matrices="nd").reshape(6, 5), as_matrix, atol=1e-12)
    averaged = base + torch.stack([m - base for m in models]).mean(0)
    assert torch.allclose(merge("iso_c", base4, models4).reshape(6, 5), averaged, atol=1e-12)


# ---- ISO-C / ISO-CTS -----------------------------------------------------------------------------------
def test_iso_c_flattens_the_spectrum_of_the_sum():
    base = torch.zeros(2, 2, dtype=torch.float64)
    models = [torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)),
              torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))]  # sum diag(3, 1): σ̄ = 2
    assert torch.allclose(merge("iso_c", base, models), 2 * torch.eye(2, dtype=torch.float64), atol=1e-12)


def test_iso_cts_equals_the_written_out_reference():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(12, 10))
    taus = [0.1 * rng.normal(size=(12, 10)) for _ in range(3)]
    f, n, r = 0.5, 3, 10
    own = round((r - int(f * r)) / n)  # round(5 / 3) = 2
    common = r - n * own  # 4
    u, s, vh = np.linalg.svd(sum(taus), full_matrices=False)
    u_c = u[:, :common]
    parts = [np.linalg.svd(t - u_c @ u_c.T @ t, full_matrices=False) for t in taus]
    left = np.concatenate([p[0][:, :own] for p in parts] + [u_c], 1)
    right = np.concatenate([p[2][:own] for p in parts] + [vh[:common]], 0)
    sigma_mean = np.concatenate([p[1][:own] for p in parts] + [s[:common]]).mean()
    expected = base + 1.5 * sigma_mean * np_polar(left) @ np_polar(right)
    out = merge("iso_cts", torch.tensor(base), [torch.tensor(base + t) for t in taus], common_fraction=f,
                **{"lambda": 1.5})
    assert np.allclose(out.numpy(), expected, atol=1e-10)


def test_iso_cts_without_task_directions_is_iso_c(matrices):
    base, models = matrices  # r = 5, f = 0.9: k0 = 4, s = round(1 / 3) = 0
    assert torch.allclose(merge("iso_cts", base, models, common_fraction=0.9), merge("iso_c", base, models),
                          atol=1e-12)


# ---- CART ----------------------------------------------------------------------------------------------
def test_cart_equals_the_written_out_reference(matrices):
    base, models = matrices
    thetas = [m.numpy() for m in models]
    average = sum(thetas) / 3
    k = max(1, int(0.4 * 5))  # 2

    def rank_k(m):
        u, s, vh = np.linalg.svd(m, full_matrices=False)
        return u[:, :k] @ np.diag(s[:k]) @ vh[:k]

    expected = average + 1.3 * sum(rank_k(t - average) for t in thetas)
    out = merge("cart", base, models, rank_ratio=0.4, **{"lambda": 1.3})
    assert np.allclose(out.numpy(), expected, atol=1e-10)


def test_cart_at_full_rank_is_the_average_and_ignores_the_base(matrices):
    base, models = matrices
    average = torch.stack(models).mean(0)
    assert torch.allclose(merge("cart", base, models, rank_ratio=1.0), average, atol=1e-12)
    assert torch.allclose(merge("cart", base + 5, models, rank_ratio=0.2), merge("cart", base, models, rank_ratio=0.2))


# ---- STAR ----------------------------------------------------------------------------------------------
def test_star_truncates_to_eta_percent_of_the_nuclear_norm_and_rescales():
    base = torch.zeros(4, 4, dtype=torch.float64)
    model = torch.diag(torch.tensor([5.0, 3.0, 1.5, 0.5], dtype=torch.float64))  # Σσ = 10; 40 % → rank 1
    expected = torch.diag(torch.tensor([10.0, 0, 0, 0], dtype=torch.float64))  # 5 · 10/5: nuclear norm kept
    assert torch.allclose(merge("star", base, [model], eta=40.0), expected, atol=1e-12)
    # 85 %: 5 + 3 = 8 < 8.5, so rank 3 (9.5 ≥ 8.5), values × 10/9.5
    expected = torch.diag(torch.tensor([5.0, 3.0, 1.5, 0], dtype=torch.float64) * 10 / 9.5)
    assert torch.allclose(merge("star", base, [model], eta=85.0), expected, atol=1e-12)
    # two models: their truncated matrices averaged; a zero task matrix stays zero
    assert torch.allclose(merge("star", base, [model, base], eta=40.0),
                          torch.diag(torch.tensor([5.0, 0, 0, 0], dtype=torch.float64)), atol=1e-12)


def test_star_at_100_percent_is_the_average(matrices):
    base, models = matrices
    expected = base + torch.stack([m - base for m in models]).mean(0)
    assert torch.allclose(merge("star", base, models, eta=100.0), expected, atol=1e-10)


# ---- WUDI ----------------------------------------------------------------------------------------------
def official_loss(merged, taus):
    """Σ_i ‖(τ − τ_i) τ_iᵀ‖_F² / ‖τ_i‖_F², as the paper writes it (autograd differentiates it here)."""
    return sum(((merged - t) @ t.T).square().sum() / t.square().sum() for t in taus)


def test_wudi_adam_equals_adam_on_the_official_loss_by_autograd(matrices):
    base, models = matrices
    taus = [m - base for m in models]
    reference = sum(taus).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([reference], lr=1e-3)
    for _ in range(25):
        optimizer.zero_grad()
        official_loss(reference, taus).backward()
        optimizer.step()
    out = merge("wudi", base, models, steps=25, lr=1e-3)
    assert torch.allclose(out - base, reference.detach(), atol=1e-10)
    assert official_loss(out - base, taus) < official_loss(sum(taus), taus)


def test_wudi_closed_form_is_the_minimiser(matrices):
    base, models = matrices
    taus = [m - base for m in models]
    solved = (merge("wudi", base, models, solver="closed_form") - base).requires_grad_(True)
    official_loss(solved, taus).backward()
    assert solved.grad.abs().max() < 1e-9
    assert official_loss(solved, taus) < official_loss(merge("wudi", base, models, steps=50, lr=1e-3) - base, taus)


def test_wudi_with_no_steps_is_task_arithmetic(matrices):
    base, models = matrices
    assert torch.allclose(merge("wudi", base, models, steps=0), base + sum(m - base for m in models), atol=1e-12)


# ---- parameters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("iso_cts", {"common_fraction": 0.0}), ("star", {"eta": 0.0}),
                                         ("cart", {"rank_ratio": 1.5}), ("tsv_m", {"matrices": "3d"})])
def test_out_of_range_parameters_are_refused(matrices, name, params):
    base, models = matrices
    with pytest.raises((MergeError, ValueError)):
        merge(name, base, models, **params)


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts", "cart", "star", "wudi"])
def test_half_precision_inputs_are_decomposed_in_float32(matrices, name):
    base, models = matrices
    params = {"steps": 3, "lr": 1e-3} if name == "wudi" else {}
    wide = merge(name, base.float(), [m.float() for m in models], **params)
    out = merge(name, base.bfloat16(), [m.bfloat16() for m in models], **params)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), wide, atol=0.05)  # bf16 inputs and output, float32 math in between


def test_cart_with_rank_ratio_zero_is_the_average(matrices):
    base, models = matrices
    assert torch.allclose(merge("cart", base, models, rank_ratio=0.0), torch.stack(models).mean(0))
