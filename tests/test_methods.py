"""Every registered method: its formula on a hand-worked example and the properties the paper implies.
Methods run through ``merge_in_memory``, the same code the streaming engine runs chunk by chunk."""
import pytest
import torch
from conftest import merge_method

from merging.errors import MergeError
from merging.registry import get_method, known_methods, methods

merge = merge_method


@pytest.fixture
def pool(tensor_pool):
    return tensor_pool


# ---- average ----------------------------------------------------------------------------------------
def test_average_hand_example():
    out = merge("average", torch.zeros(2), [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])],
                model_params=[{"weight": 1}, {"weight": 3}])
    assert out.tolist() == [2.5, 5.0]  # (1·1 + 3·3)/4, (2 + 18)/4


# ---- task arithmetic --------------------------------------------------------------------------------
def test_task_arithmetic_hand_example():
    base = torch.tensor([1.0, 1.0])
    out = merge("task_arithmetic", base, [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])],
                model_params=[{"weight": 0.5}, {"weight": 0.25}], **{"lambda": 2.0})
    assert out.tolist() == [2.0, 2.0]  # 1 + 2(0.5·1 + 0.25·0), 1 + 2(0 + 0.25·2)


def test_task_arithmetic_one_model_weight_one_returns_it_exactly(pool):
    base, models = pool
    assert torch.equal(merge("task_arithmetic", base, models[:1]), models[0])


def test_task_arithmetic_negative_weight_negates_the_task(pool):
    base, models = pool
    out = merge("task_arithmetic", base, models[:1], model_params=[{"weight": -1.0}])
    assert torch.allclose(out, base - (models[0] - base), atol=1e-6)


# ---- TIES -------------------------------------------------------------------------------------------
def test_ties_hand_example():
    base = torch.zeros(4)
    models = [torch.tensor([3.0, -1.0, 0.5, 2.0]), torch.tensor([-2.0, -4.0, 0.1, 1.0])]
    # density 0.5 keeps 2 of 4: τ̂1 = [3, 0, 0, 2], τ̂2 = [-2, -4, 0, 0]
    # signs by mass: [+, -, +(tie), +]; disjoint mean: [3, -4, 0, 2]
    assert merge("ties", base, models, density=0.5).tolist() == [3.0, -4.0, 0.0, 2.0]


@pytest.mark.parametrize("chunk_size", [None, 7, 1])
def test_ties_keeps_exactly_k_when_magnitudes_tie_the_first_in_flat_order(chunk_size):
    # one model (no election): τ = [1, -2, 2, 2, 0.5, -2, 2, 1, 2, 3]; density 0.4 keeps k = 4 of 10: the 3,
    # then 3 of the six elements tied at |τ| = 2, the first three in flat order (indices 1, 2, 3)
    tau = torch.tensor([1.0, -2.0, 2.0, 2.0, 0.5, -2.0, 2.0, 1.0, 2.0, 3.0])
    out = merge("ties", torch.zeros(10), [tau], density=0.4, chunk_size=chunk_size)
    order = torch.argsort(tau.abs(), descending=True, stable=True)[:4]  # reference: a stable sort, first k
    expected = torch.zeros(10)
    expected[order] = tau[order]
    assert out.tolist() == expected.tolist() == [0, -2, 2, 2, 0, 0, 0, 0, 0, 3]


def test_ties_density_below_one_element_still_keeps_the_largest():
    tau = torch.tensor([0.1, -0.5, 0.2, 0.3])  # density 0.1 · 4 elements < 1: mergekit keeps one, the largest
    assert merge("ties", torch.zeros(4), [tau], density=0.1).tolist() == [0.0, -0.5, 0.0, 0.0]


def test_weighted_ties_elects_and_divides_by_weights_as_mergekit_not_by_counts_as_peft():
    # τ1 = [1, -1] (w 0.9), τ2 = [-1, -1] (w 0.4), no trim. mergekit and here: sign of Σ w_i τ_i = [+, -],
    # divide by Σ w_i of the agreeing: [0.9/0.9, -1.3/1.3] = [1, -1]. peft's ties (add_weighted_adapter
    # ties_svd) elects on Σ τ_i (0 -> +) and divides by the count of agreeing models: [0.9/1, -1.3/2].
    out = merge("ties", torch.zeros(2), [torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -1.0])], density=1.0,
                model_params=[{"weight": 0.9}, {"weight": 0.4}])
    assert torch.allclose(out, torch.tensor([1.0, -1.0]))


def test_ties_density_one_agreeing_signs_is_the_mean(pool):
    base, _ = pool
    models = [base + torch.rand(16, 12) * s for s in (0.1, 0.2, 0.3)]  # all task vectors positive
    expected = base + torch.stack([m - base for m in models]).mean(0)
    assert torch.allclose(merge("ties", base, models, density=1.0), expected, atol=1e-6)


def test_ties_count_election_differs_from_mass():
    base = torch.zeros(1)
    models = [torch.tensor([5.0]), torch.tensor([-1.0]), torch.tensor([-1.0])]
    assert merge("ties", base, models, density=1.0, elect="mass").item() == 5.0
    assert merge("ties", base, models, density=1.0, elect="count").item() == -1.0


# ---- DARE -------------------------------------------------------------------------------------------
def test_dare_with_zero_drop_rate_is_task_arithmetic(pool):
    base, models = pool
    ta = merge("task_arithmetic", base, models, **{"lambda": 0.3})
    assert torch.allclose(merge("dare_ta", base, models, drop_rate=0.0, **{"lambda": 0.3}), ta, atol=1e-6)


def test_dare_is_seeded_and_deterministic(pool):
    base, models = pool
    a = merge("dare_ta", base, models, drop_rate=0.5, seed=3)
    assert torch.equal(a, merge("dare_ta", base, models, drop_rate=0.5, seed=3))
    assert not torch.equal(a, merge("dare_ta", base, models, drop_rate=0.5, seed=4))


def test_dare_mean_over_seeds_approaches_task_arithmetic(pool):
    base, models = pool
    ta = merge("task_arithmetic", base, models)
    mean = torch.stack([merge("dare_ta", base, models, drop_rate=0.5, seed=s) for s in range(400)]).mean(0)
    scale = (ta - base).abs().mean()
    assert (mean - ta).abs().mean() < 0.1 * scale  # the rescaled drop is unbiased
    assert (merge("dare_ta", base, models, drop_rate=0.5) - ta).abs().mean() > 0.3 * scale


def test_dare_drops_the_expected_fraction():
    base = torch.zeros(100_000)
    out = merge("dare_ta", base, [torch.ones(100_000)], drop_rate=0.9)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 10.0))  # rescaled by 1/(1−p)


def test_dare_l1_rescale_preserves_the_l1_norm(pool):
    base, models = pool
    out = merge("dare_ta", base, models[:1], drop_rate=0.6, rescale="l1")
    assert (out - base).abs().sum().item() == pytest.approx((models[0] - base).abs().sum().item(), rel=1e-4)


# ---- SLERP ------------------------------------------------------------------------------------------
def test_slerp_endpoints(pool):
    _, models = pool
    a, b = models[:2]
    assert torch.allclose(merge("slerp", a, [a, b], t=0.0), a, atol=1e-6)
    assert torch.allclose(merge("slerp", a, [a, b], t=1.0), b, atol=1e-6)


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = merge("slerp", a, [a, b], t=0.5)
    assert torch.allclose(out, torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]), atol=1e-6)


def test_slerp_linear_fallback_when_colinear():
    a = torch.tensor([1.0, 2.0])
    assert torch.allclose(merge("slerp", a, [a, 2 * a], t=0.25), 1.25 * a)


# ---- FroM -------------------------------------------------------------------------------------------
def test_from_hand_example():
    base = torch.zeros(2)
    models = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])]  # norms 1 and 3
    # k = 1: weights 1/4, 3/4 -> [0.25, 2.25]; α = 2 doubles it
    assert merge("from", base, models, k=1.0, alpha=2.0).tolist() == pytest.approx([0.5, 4.5])


def test_from_k_zero_is_the_mean_of_task_vectors(pool):
    base, models = pool
    expected = base + torch.stack([m - base for m in models]).mean(0)
    assert torch.allclose(merge("from", base, models, k=0.0), expected, atol=1e-6)


def test_dare_from_weighs_the_dropped_task_vectors_by_their_own_norms(pool):
    from merging.methods.base import chunk_seed
    from merging.tensor_ops import random_keep_mask

    base, models = pool
    tvs = torch.stack([(m - base).reshape(-1) for m in models])  # [4, 192]: one draw block
    draws = torch.rand(tuple(tvs.shape), generator=torch.Generator().manual_seed(chunk_seed(3, "tensor", 0)))
    mask = random_keep_mask(draws, torch.full((4,), 0.4, dtype=torch.float64))
    dropped = tvs * mask / 0.4  # τ̃_i
    weights = dropped.norm(dim=1) / dropped.norm(dim=1).sum()
    expected = base + (weights @ dropped).reshape(base.shape)
    assert torch.allclose(merge("from", base, models, k=1.0, drop_rate=0.6, seed=3), expected, atol=1e-6)
    # k = 0, α = n: base + Σ_i τ̃_i, i.e. dare_ta with λ = 1 on the same seeded masks, chunk by chunk
    assert torch.allclose(merge("from", base, models, k=0.0, alpha=4.0, drop_rate=0.6, seed=3, chunk_size=50),
                          merge("dare_ta", base, models, drop_rate=0.6, seed=3, chunk_size=50), atol=1e-6)


def test_from_large_k_picks_the_largest_norm_task_vector(pool):
    base, models = pool
    models = models[:3] + [base + 3 * (models[3] - base)]
    assert torch.allclose(merge("from", base, models, k=200.0), models[3], atol=1e-5)


# ---- all methods ------------------------------------------------------------------------------------
REQUIRED = {"ties": {"density": 0.3}, "dare_ta": {"drop_rate": 0.5}, "dare_ties": {"drop_rate": 0.5},
            "slerp": {"t": 0.3}, "breadcrumbs": {"density": 0.5}, "breadcrumbs_ties": {"density": 0.5},
            "della": {"density": 0.5}, "della_linear": {"density": 0.5}, "nearswap": {"t": 0.05}}
MODELS = {"slerp": 2, "nuslerp": 2, "passthrough": 1, "nearswap": 1, "arcee_fusion": 1}  # methods that take a fixed number of models


def test_random_draws_are_fixed_per_block_whatever_the_chunking():
    from merging.methods.base import DRAW_BLOCK, chunk_seed, chunks

    shape = (3, DRAW_BLOCK + 7)  # spans 4 blocks, the last one short
    whole = torch.cat([c.uniform(2) for c in chunks("w", shape, 3 * DRAW_BLOCK + 21, seed=5)], 1)
    for size in (DRAW_BLOCK, 1000, 2 * DRAW_BLOCK + 1):
        assert torch.equal(torch.cat([c.uniform(2) for c in chunks("w", shape, size, seed=5)], 1), whole)
    block = torch.rand((2, DRAW_BLOCK), generator=torch.Generator().manual_seed(chunk_seed(5, "w", 1)))
    assert torch.equal(whole[:, DRAW_BLOCK:2 * DRAW_BLOCK], block)  # block b: its own seeded torch.rand
    assert not torch.equal(whole[:, :DRAW_BLOCK], block)
    assert whole.shape == (2, 3 * (DRAW_BLOCK + 7))


@pytest.mark.parametrize("name", known_methods("per_tensor"))
def test_chunked_equals_whole_tensor(name, pool):
    """The engine's chunking never changes a result, random ones included (their draws are fixed per block)."""
    base, models = pool
    models = models[:MODELS.get(name, len(models))]
    whole = merge(name, base, models, **REQUIRED.get(name, {}))
    chunked = merge(name, base, models, chunk_size=37, **REQUIRED.get(name, {}))
    assert torch.allclose(whole, chunked, atol=1e-6)


AFFINE = [name for name in known_methods("per_tensor") if get_method(name).method_class.affine_in]


def test_the_merges_that_scale_a_task_vector_say_so():
    assert {"task_arithmetic", "ties", "dare_ties", "from", "iso_c", "iso_cts", "tsv_m", "cart", "pcb"} <= set(AFFINE)
    assert "slerp" not in AFFINE and "model_stock" not in AFFINE


@pytest.mark.parametrize("name", AFFINE)
def test_a_merge_declared_affine_in_s_is_the_line_through_its_s_0_and_s_1_merges(name, pool):
    """Method.affine_in = s: θ(s) = θ(0) + s·(θ(1) − θ(0)), other parameters fixed (random masks included)."""
    base, models = pool
    models = models[:MODELS.get(name, len(models))]
    s = get_method(name).method_class.affine_in
    at = {v: merge(name, base, models, seed=3, **REQUIRED.get(name, {}), **{s: v}) for v in (0.0, 1.0, 1.7)}
    torch.testing.assert_close(at[1.7], at[0.0] + 1.7 * (at[1.0] - at[0.0]), atol=1e-5, rtol=1e-5)


def test_every_method_has_a_paper_and_schemas():
    for spec in methods():
        assert spec.paper.startswith("https://"), spec.name
        assert spec.implementation.__module__.startswith("merging.methods."), spec.name
        assert (spec.data == "none") == (spec.kind not in ("data_driven", "routed")), spec.name
        assert spec.schemas()[0] is spec.Params and spec.Params.model_json_schema(), spec.name


# ---- Model Stock ------------------------------------------------------------------------------------
def model_stock_reference(base, models, rows):
    """Eq. 4-5 on whole tensors: t = n·cos/(1 + (n−1)·cos) from the mean pairwise cosine of the task vectors
    (over ``rows`` vectors along the last dimension), θ = t·mean θ_i + (1 − t)·θ_base."""
    tvs = [(m - base).reshape(rows, -1).double() for m in models]
    n = len(tvs)
    cos = torch.stack([torch.nn.functional.cosine_similarity(tvs[i], tvs[j], dim=-1, eps=0)
                       for i in range(n) for j in range(i + 1, n)]).mean(0)  # [rows]
    t = (n * cos / (1 + (n - 1) * cos)).unsqueeze(-1)
    merged = t * torch.stack(models).double().reshape(n, rows, -1).mean(0) + (1 - t) * base.double().reshape(rows, -1)
    return merged.reshape(base.shape).float()


@pytest.mark.parametrize("filter_wise,rows", [(False, 1), (True, 16)])
def test_model_stock_matches_its_formula_in_chunks(pool, filter_wise, rows):
    base, models = pool
    out = merge("model_stock", base, models, filter_wise=filter_wise, chunk_size=5)
    assert torch.allclose(out, model_stock_reference(base, models, rows), atol=1e-6)


def test_model_stock_of_orthogonal_task_vectors_stays_at_the_base_and_of_equal_ones_moves_to_them():
    base = torch.zeros(2)
    assert merge("model_stock", base, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]).tolist() == [0, 0]
    same = torch.tensor([0.5, -2.0])
    assert torch.allclose(merge("model_stock", base, [same, same.clone()]), same)  # cos 1: t = 1


# ---- Model Breadcrumbs ------------------------------------------------------------------------------
def breadcrumbs_reference(tau, density, gamma):
    """mergekit's magnitude_outliers on a whole tensor with a stable sort: drop the G largest and the smallest
    magnitudes, keep K = ⌊d·N⌋ (the outlier cut shrinks to N − K when needed)."""
    n = tau.numel()
    kept, outliers = int(density * n), int(gamma * n)
    bottom = max(0, n - kept - outliers)
    order = torch.argsort(tau.abs().reshape(-1), stable=True)  # ascending
    mask = torch.zeros(n)
    mask[order[bottom:bottom + kept]] = 1
    return tau * mask.reshape(tau.shape)


@pytest.mark.parametrize("density,gamma", [(0.5, 0.1), (0.9, 0.2), (0.05, 0.01)])
def test_breadcrumbs_keeps_the_rank_window_below_the_outliers(pool, density, gamma):
    base, models = pool
    out = merge("breadcrumbs", base, models, density=density, gamma=gamma, chunk_size=7,
                model_params=[{"weight": w} for w in (1.0, 0.5, 0.25, 2.0)])
    expected = base + sum(w * breadcrumbs_reference(m - base, density, gamma)
                          for w, m in zip((1.0, 0.5, 0.25, 2.0), models))
    assert torch.allclose(out, expected, atol=1e-6)


def test_breadcrumbs_on_tied_magnitudes_keeps_exactly_k():
    tau = torch.tensor([2.0, -2.0, 2.0, 1.0, 1.0, -1.0, 1.0, 0.5, 3.0, 0.1])
    out = merge("breadcrumbs", torch.zeros(10), [tau], density=0.3, gamma=0.1, chunk_size=3)
    assert int((out != 0).sum()) == 3  # K = 3 below the one outlier (3.0): the three 2s
    assert out.tolist() == [2.0, -2.0, 2.0, 0, 0, 0, 0, 0, 0, 0]


def test_breadcrumbs_ties_elects_signs_over_the_trimmed_vectors(pool):
    base, models = pool
    out = merge("breadcrumbs_ties", base, models, density=0.6, gamma=0.05, chunk_size=11)
    trimmed = torch.stack([breadcrumbs_reference(m - base, 0.6, 0.05) for m in models])
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    agree = (trimmed.sign() == sign).float()
    assert torch.allclose(out, base + (trimmed * agree).sum(0), atol=1e-6)  # normalize: false by default


# ---- DELLA ------------------------------------------------------------------------------------------
def test_della_keep_probability_rises_with_the_magnitude_rank_in_each_row():
    from merging.methods.della import rank_probabilities

    magnitudes = torch.tensor([[0.1, 0.5, 0.3, 2.0, 1.0, 3.0]])  # two rows of 3
    p = rank_probabilities(magnitudes, 3, torch.tensor([0.5]), torch.tensor([0.1]))
    # ranks (0, 2, 1) and (1, 0, 2): p = 0.4 + 0.2 · r / 2
    assert torch.allclose(p, torch.tensor([[0.4, 0.6, 0.5, 0.5, 0.4, 0.6]], dtype=torch.float64))


def test_della_chunks_hold_whole_rows():
    from merging.methods.base import chunks

    pieces = chunks("w", (16, 12), 30, seed=0, row_aligned=True)
    assert [(c.start, c.stop) for c in pieces][:2] == [(0, 24), (24, 48)] and pieces[-1].stop == 192
    assert [(c.start, c.stop) for c in chunks("b", (7,), 3, seed=0, row_aligned=True)] == [(0, 7)]


def test_della_with_zero_epsilon_is_dare_with_the_same_draws(pool):
    base, models = pool
    della = merge("della_linear", base, models, density=0.7, epsilon=0.0)
    dare = merge("dare_ta", base, models, drop_rate=0.3)
    assert torch.allclose(della, dare, atol=1e-6)


def test_della_inverse_rescale_is_unbiased():
    tau = torch.linspace(-1, 1, 400).reshape(1, 400)
    draws = torch.stack([merge("della_linear", torch.zeros(1, 400), [tau], density=0.5, epsilon=0.3, seed=s)
                         for s in range(300)])
    assert (draws != 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.allclose(draws.mean(0), tau, atol=0.25)  # E[m/p · τ] = τ
    kept = (draws != 0).float().mean(0).reshape(-1)
    assert kept[:20].mean() > kept[190:210].mean()  # |τ| large at the ends: kept more often than near 0


def test_della_refuses_a_density_window_outside_zero_one(pool):
    base, models = pool
    with pytest.raises(MergeError, match="density ± epsilon"):
        merge("della", base, models, density=0.1, epsilon=0.2)
