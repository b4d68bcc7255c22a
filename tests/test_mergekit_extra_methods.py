"""mergekit 0.1.5's sce, nearswap and arcee_fusion: each against a plain whole-tensor torch reference of mergekit's
formula (or hand-worked numbers), run chunk by chunk through ``merge_in_memory``, and their corner cases."""
import math

import pytest
import torch
from conftest import merge_method
from pydantic import ValidationError

from merging.registry import get_method

merge = merge_method


@pytest.fixture
def pool(tensor_pool):
    return tensor_pool


def test_registered_with_a_paper_the_base_and_their_model_counts():
    for name, counts in [("sce", (1, None)), ("nearswap", (1, 1)), ("arcee_fusion", (1, 1))]:
        spec = get_method(name)
        cls = spec.method_class
        assert spec.paper.startswith("https://")
        assert cls.uses_base and (cls.min_models, cls.max_models) == counts


# ---- SCE ----------------------------------------------------------------------------------------------
def sce_reference(base, models, select_topk):
    """mergekit's sce on whole tensors; ties in the variance ranking go to the first in flat order."""
    tvs = torch.stack([m - base for m in models])  # [n, ...]
    n = tvs.shape[0]
    if select_topk < 1:
        var = tvs.var(0, unbiased=False).reshape(-1)
        k = int(torch.count_nonzero(var) * select_topk)  # a float32 product, as mergekit
        mask = torch.zeros_like(var)
        mask[torch.argsort(var, descending=True, stable=True)[:k]] = 1
        tvs = tvs * mask.reshape(base.shape)
    majority = torch.where(tvs.sum(0) >= 0, 1.0, -1.0)
    omega = tvs.square().reshape(n, -1).mean(1)
    weights = torch.full((n,), 1 / n) if abs(omega.sum().item()) < 1e-6 else omega / omega.sum()
    erased = weights.reshape(n, *[1] * base.dim()) * (tvs.sign() == majority)
    return base + (tvs * erased).sum(0) / erased.sum(0).clamp(min=1e-6)


def test_sce_hand_example():
    base = torch.zeros(4)
    models = [torch.tensor([1.0, 2.0, 0.0, -3.0]), torch.tensor([3.0, -2.0, 0.0, -5.0])]
    # no selection: ω = [(1 + 4 + 9)/4, (9 + 4 + 25)/4] = [3.5, 9.5] -> w = [3.5, 9.5]/13; element 1 sums to 0
    # and elects +, where only model 1 agrees; element 2: nobody agrees (τ = 0), 0/1e-6 = 0
    out = merge("sce", base, models)
    assert out.tolist() == pytest.approx([(3.5 * 1 + 9.5 * 3) / 13, 2.0, 0.0, (3.5 * -3 + 9.5 * -5) / 13])
    # select_topk 0.5: variances [1, 4, 0, 1], 3 nonzero, k = ⌊1.5⌋ = 1 keeps element 1 alone;
    # ω = [4/4, 4/4] -> w = [0.5, 0.5]; + elected, model 1 alone agrees: 0.5·2/0.5
    assert merge("sce", base, models, select_topk=0.5, chunk_size=1).tolist() == [0.0, 2.0, 0.0, 0.0]


@pytest.mark.parametrize("select_topk", [1.0, 0.8, 0.5, 0.3, 0.05, 0.0])
@pytest.mark.parametrize("chunk_size", [5, None])
def test_sce_matches_the_reference(pool, select_topk, chunk_size):
    base, models = pool
    out = merge("sce", base, models, select_topk=select_topk, chunk_size=chunk_size)
    assert torch.allclose(out, sce_reference(base, models, select_topk), atol=1e-6)


@pytest.mark.parametrize("chunk_size", [5, 7, None])
def test_sce_keeps_exactly_k_when_variances_tie_the_first_in_flat_order(chunk_size):
    torch.manual_seed(1)
    base = torch.zeros(10, 6)
    models = [torch.randint(-1, 2, (10, 6)).float() for _ in range(3)]  # variances from a few values: many ties
    var = torch.stack(models).var(0, unbiased=False).reshape(-1)
    k = int(torch.count_nonzero(var) * 0.4)
    assert (var == var.sort(descending=True).values[k - 1]).sum() > 1  # the k-th variance is tied
    out = merge("sce", base, models, select_topk=0.4, chunk_size=chunk_size)
    assert torch.allclose(out, sce_reference(base, models, 0.4), atol=1e-6)


def test_sce_select_count_is_mergekits_float32_product():
    # 100 elements of distinct nonzero variance; 0.57 · 100 is 57 in float32 (mergekit), 56.99… in float64
    base = torch.zeros(100)
    spread = torch.arange(1, 101, dtype=torch.float32)
    out = merge("sce", base, [spread, -spread], select_topk=0.57, chunk_size=9)
    assert int(100 * 0.57) == 56 and int((out != 0).sum()) == 57
    assert torch.equal(out, sce_reference(base, [spread, -spread], 0.57))


def test_sce_one_model():
    base, model = torch.zeros(6), torch.tensor([0.5, -1.0, 0.0, 2.0, -0.25, 1.0])
    assert torch.equal(merge("sce", base, [model]), model)  # w = 1: the model
    # one model has no variance: nothing is selected and the merge is the base (as mergekit)
    assert torch.equal(merge("sce", base, [model], select_topk=0.9), base)


def test_sce_select_zero_is_the_base(pool):
    base, models = pool
    assert torch.equal(merge("sce", base, models, select_topk=0.0, chunk_size=5), base)


def test_sce_weights_are_uniform_when_the_mean_squares_sum_below_1e_6():
    base = torch.zeros(1)
    # ω = [1e-8, 9e-8], Σ ω = 1e-7 < 1e-6: uniform weights, the plain mean of the agreeing task vectors
    small = merge("sce", base, [torch.tensor([1e-4]), torch.tensor([3e-4])])
    assert small.item() == pytest.approx(2e-4, rel=1e-5)
    # ten times larger: Σ ω = 1e-5, weights ω/Σω = [0.1, 0.9]
    large = merge("sce", base, [torch.tensor([1e-3]), torch.tensor([3e-3])])
    assert large.item() == pytest.approx(0.1 * 1e-3 + 0.9 * 3e-3, rel=1e-5)


def test_sce_clamps_the_agreeing_weight_sum_at_1e_6():
    # ω = [2000²/2, 1/2]: w₂ = 0.5/2000000.5 ≈ 2.5e-7; element 1 has model 2 alone agreeing, so it gets
    # w₂·1 / max(w₂, 1e-6) ≈ 0.25, not 1
    out = merge("sce", torch.zeros(2), [torch.tensor([2000.0, 0.0]), torch.tensor([0.0, 1.0])], chunk_size=1)
    assert out.tolist() == pytest.approx([2000.0, 0.5 / 2000000.5 / 1e-6], rel=1e-5)


def test_sce_select_topk_must_lie_in_zero_one():
    params = get_method("sce").Params
    assert params().select_topk == 1.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            params(select_topk=bad)


# ---- NearSwap -----------------------------------------------------------------------------------------
def nearswap_reference(base, model, t):
    weight = (t / (base - model).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * model + (1 - weight) * base


def test_nearswap_hand_example():
    base = torch.tensor([0.0, 0.0, 1.0, 2.0, -1.0])
    model = torch.tensor([0.25, 1.0, 1.0, 4.0, -1.5])
    # |Δ| = [0.25, 1, 0, 2, 0.5]; w = clamp(0.5/|Δ|, 0, 1) = [1, 0.5, 1 (÷1e-6), 0.25, 1]
    out = merge("nearswap", base, [model], t=0.5, chunk_size=2)
    assert out.tolist() == [0.25, 0.5, 1.0, 0.25 * 4 + 0.75 * 2, -1.5]


@pytest.mark.parametrize("t", [0.0, 1e-3, 0.05, 0.2, 10.0])
def test_nearswap_matches_the_reference(pool, t):
    base, models = pool
    out = merge("nearswap", base, models[:1], t=t, chunk_size=5)
    assert torch.equal(out, nearswap_reference(base, models[0], t))


def test_nearswap_t_zero_is_the_base_and_a_large_t_the_model(pool):
    base, models = pool
    assert torch.equal(merge("nearswap", base, models[:1], t=0.0), base)
    assert torch.equal(merge("nearswap", base, models[:1], t=1e9), models[0])


def test_nearswap_t_is_required_and_not_negative():
    params = get_method("nearswap").Params
    for bad in ({}, {"t": -0.1}):
        with pytest.raises(ValidationError):
            params(**bad)


# ---- Arcee Fusion -------------------------------------------------------------------------------------
def arcee_fusion_reference(base, model):
    """mergekit's arcee_fusion on whole tensors, with the exact quantiles (mergekit's own below 10⁶ elements)."""
    p = torch.softmax(model, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    importance = (model - base).abs() * kl
    ordered = importance.reshape(-1).sort().values
    low, median, high = (ordered[int(x * (ordered.numel() - 1))] for x in (0.25, 0.5, 0.75))
    return base + (model - base) * (importance >= median + 1.5 * (high - low)).float(), importance


def test_arcee_fusion_hand_example():
    # rows [0, 0] -> [x, 0], x = 1..10: importance x·KL(x) grows with x in column 0 and is 0 in column 1
    # (unchanged). N = 20: Q(.25) = Q(.5) = 0 (ranks 4, 9: the ten zeros), Q(.75) = rank 14, the fifth
    # smallest positive, x = 5 (5·KL = 3.26); the threshold 1.5·3.26 = 4.90 keeps x = 8, 9, 10 (5.52, 6.23,
    # 6.93; x = 7 gives 4.80)
    x = torch.arange(1.0, 11.0)
    base, model = torch.zeros(10, 2), torch.stack([x, torch.zeros(10)], dim=1)
    expected = torch.zeros(10, 2)
    expected[7:, 0] = x[7:]
    assert torch.equal(merge("arcee_fusion", base, [model], chunk_size=5), expected)


@pytest.mark.parametrize("shape", [(16, 12), (40,), (3, 5, 4)])
@pytest.mark.parametrize("chunk_size", [5, 24, None])
def test_arcee_fusion_matches_the_reference(shape, chunk_size):
    torch.manual_seed(2)
    base = torch.randn(shape)
    model = base + 0.01 * torch.randn(shape)
    out = merge("arcee_fusion", base, [model], chunk_size=chunk_size)
    expected, _ = arcee_fusion_reference(base, model)
    assert torch.allclose(out, expected, atol=1e-7)
    assert 0 < int((out != base).sum()) < out.numel()


def test_arcee_fusion_ranks_the_negative_importances_rounding_leaves():
    # nearly equal rows: rounding gives some rows a KL a little below 0; which rows depends on the CPU's exp and
    # log, so the first of these constructions whose first quartile is negative (most seeds are) is the case
    for seed in range(20):
        torch.manual_seed(seed)
        base = torch.randn(16, 12)
        model = base + 1e-4 * torch.randn(16, 12)
        model[3] = base[3]  # an unchanged row: exact zeros
        expected, importance = arcee_fusion_reference(base, model)
        ordered = importance.reshape(-1).sort().values
        if ordered[int(0.25 * 191)] < 0 <= ordered[int(0.5 * 191)]:
            break
    else:
        pytest.fail("no construction gave a negative first quartile on this CPU")
    assert torch.allclose(merge("arcee_fusion", base, [model], chunk_size=5), expected, atol=1e-9)


def test_arcee_fusion_of_mostly_unchanged_rows():
    # 12 of 16 rows unchanged: every quartile is an exact zero, the threshold is 0 and every element of a
    # non-negative importance takes the model's value
    torch.manual_seed(3)
    base = torch.randn(16, 12)
    model = base.clone()
    model[:4] += 0.05 * torch.randn(4, 12)
    expected, importance = arcee_fusion_reference(base, model)
    out = merge("arcee_fusion", base, [model], chunk_size=5)
    assert torch.equal(out, expected)
    assert torch.equal(out != base, (importance >= 0) & (model != base))


def test_arcee_fusion_of_the_base_itself_is_the_base(pool):
    base, _ = pool
    assert torch.equal(merge("arcee_fusion", base, [base.clone()], chunk_size=5), base)


def test_arcee_fusion_quantiles_are_exact_beyond_mergekits_sample_size():
    # 1.2·10⁶ elements: mergekit estimates the quartiles from 10⁶ random draws; here they are exact
    torch.manual_seed(4)
    base = torch.randn(1200, 1000)
    model = base + 0.01 * torch.randn(1200, 1000)
    expected, _ = arcee_fusion_reference(base, model)
    out = merge("arcee_fusion", base, [model], chunk_size=100_000)
    assert torch.allclose(out, expected, atol=1e-7)
    assert math.isclose(float((out != base).float().mean()), float((expected != base).float().mean()))
