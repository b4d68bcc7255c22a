"""KnOTS: the shared basis against a direct SVD of the concatenated updates, and KnOTS-TIES against the paper's
steps written out here on that SVD (float64)."""
import pytest
import torch

from merging.errors import MergeError
from merging.io.lora import LoraAdapter
from merging.methods.knots import KnotsParams, knots, shared_basis

SHAPES = ((12, 5), (8, 10))  # (out, in) of two adapted modules


def adapter(seed: int, rank: int = 2, alpha: float = 4.0) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    factors = {f"m{i}.weight": (torch.randn(rank, fan_in, generator=g), torch.randn(out, rank, generator=g))
               for i, (out, fan_in) in enumerate(SHAPES)}
    return LoraAdapter(path=f"adapter{seed}", config={"r": rank, "lora_alpha": alpha}, rank=rank, alpha=alpha,
                       scaling=alpha / rank, factors=factors, scalings=dict.fromkeys(factors, alpha / rank))


def deltas(adapters, name):
    return [a.scalings[name] * a.factors[name][1].double() @ a.factors[name][0].double() for a in adapters]


def product(merge, name):
    a, b = merge.factors[name]
    return b.double() @ a.double()


def test_the_shared_basis_is_the_svd_of_the_concatenated_updates():
    adapters = [adapter(s) for s in range(3)]
    name = "m0.weight"
    u, coordinates = shared_basis([a.factors[name] for a in adapters], [a.scalings[name] for a in adapters], 1e-5)
    direct_u, sigma, _ = torch.linalg.svd(torch.cat(deltas(adapters, name), 1), full_matrices=False)
    k = int((sigma > 1e-5).sum())  # 3 adapters of rank 2: 6
    assert u.shape == (12, k) == (12, 6)
    torch.testing.assert_close(u.abs(), direct_u[:, :k].abs(), atol=1e-8, rtol=0)  # up to each column's sign
    for delta, p in zip(deltas(adapters, name), coordinates):
        torch.testing.assert_close(u @ p, delta, atol=1e-10, rtol=0)  # ΔW_i = U P_i exactly


def test_knots_task_arithmetic_without_trimming_is_task_arithmetic():
    adapters = [adapter(s) for s in range(3)]
    merge = knots(adapters, KnotsParams(merge="task_arithmetic", density=1.0, **{"lambda": 0.5}))
    assert merge.rank == 6 and merge.alpha == 6.0  # n·r, written with scaling 1
    for name in merge.factors:
        torch.testing.assert_close(product(merge, name), 0.5 * sum(deltas(adapters, name)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scope", ["model", "module"])
def test_knots_ties_follows_the_papers_steps(scope):
    adapters, density, scale = [adapter(s) for s in range(3)], 0.3, 0.6
    names = sorted(adapters[0].factors)
    bases, coords = {}, {}
    for name in names:  # the paper: SVD of [ΔW_1 | ΔW_2 | ΔW_3], Σ folded into each task's block of V
        u, s, vh = torch.linalg.svd(torch.cat(deltas(adapters, name), 1), full_matrices=False)
        k = int((s > 1e-5).sum())
        fan_in = SHAPES[names.index(name)][1]
        bases[name] = u[:, :k]
        coords[name] = torch.stack([(s[:k, None] * vh[:k, i * fan_in:(i + 1) * fan_in]).reshape(-1)
                                    for i in range(3)])  # [3, k·in]
    groups = [names] if scope == "model" else [[n] for n in names]
    expected = {}
    for group in groups:
        p = torch.cat([coords[n] for n in group], 1)  # [3, c]
        k = int(density * p.shape[1])  # the official topk_values_mask: |p| ≥ its (c − k)-th smallest, k + 1 kept
        cut = p.abs().sort(1).values[:, p.shape[1] - k - 1:p.shape[1] - k]
        p = p * (p.abs() >= cut)
        sign = p.sum(0).sign()
        sign[sign == 0] = sign.sum().sign()  # the official resolve_zero_signs("majority")
        agree = p * (p * sign > 0)
        merged = scale * agree.sum(0) / (agree != 0).sum(0).clamp(min=1)
        for n, piece in zip(group, merged.split([coords[n].shape[1] for n in group])):
            expected[n] = bases[n] @ piece.reshape(bases[n].shape[1], -1)
    merge = knots(adapters, KnotsParams(density=density, scope=scope, **{"lambda": scale}))
    for name in names:
        torch.testing.assert_close(product(merge, name), expected[name], atol=1e-5, rtol=1e-5)


def test_knots_dare_is_seeded_and_zero_updates_are_refused():
    adapters = [adapter(s) for s in range(2)]
    one = knots(adapters, KnotsParams(drop_rate=0.5), seed=1)
    again = knots(adapters, KnotsParams(drop_rate=0.5), seed=1)
    other = knots(adapters, KnotsParams(drop_rate=0.5), seed=2)
    assert all(torch.equal(one.factors[n][0], again.factors[n][0]) for n in one.factors)
    assert not all(torch.equal(one.factors[n][0], other.factors[n][0]) for n in one.factors)
    for a in adapters:
        a.factors = {n: (f[0], torch.zeros_like(f[1])) for n, f in a.factors.items()}
    with pytest.raises(MergeError, match="zero"):
        knots(adapters, KnotsParams())


@pytest.mark.parametrize("scope", ["model", "module"])
def test_a_module_no_adapter_changed_merges_to_zero(scope):
    adapters = [adapter(s) for s in range(2)]
    for a in adapters:  # m1: B = 0 in every adapter (a targeted module that never trained)
        a.factors["m1.weight"] = (a.factors["m1.weight"][0], torch.zeros_like(a.factors["m1.weight"][1]))
    merge = knots(adapters, KnotsParams(scope=scope))
    assert torch.equal(product(merge, "m1.weight"), torch.zeros(8, 10, dtype=torch.float64))
    assert product(merge, "m0.weight").abs().sum() > 0
