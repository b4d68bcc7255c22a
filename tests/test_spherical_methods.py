"""nuslerp, multislerp and karcher (mergekit 0.1.5's spherical methods): each against an independent reference
written out here on whole tensors (the steps of mergekit's algorithm, float64), run through ``merge_in_memory``
with small chunks so that the streamed statistics are exercised, plus hand-worked values and corner cases."""
import itertools
import math

import pytest
import torch
from conftest import merge_method
from pydantic import ValidationError

from merging.errors import MergeError
from merging.registry import get_method


def merge(name, base, models, *, chunk_size=5, **params):
    return merge_method(name, base, models, chunk_size=chunk_size, **params)


def weights(*values):
    return [{"weight": v} for v in values]


@pytest.fixture
def pool():
    torch.manual_seed(0)
    base = torch.randn(6, 7, dtype=torch.float64)
    return base, [base + s * torch.randn(6, 7, dtype=torch.float64) for s in (0.3, 0.5, 0.2, 0.4)]


# ---- nuslerp ----------------------------------------------------------------------------------------------
def nuslerp_reference(t, v0, v1, flatten, row_wise):
    """mergekit's nuslerp on whole tensors: unit vectors (norm floored at 1e-7) along the last dimension after
    flattening or moving dim 0 last, linear where 1 − cos² ≤ 1e-16."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(-1, keepdim=True).clamp(-1, 1)
    out = torch.empty(torch.broadcast_shapes(v0.shape, cos.shape), dtype=v0.dtype)
    for index in itertools.product(*map(range, cos.shape[:-1])):
        c = cos[index].item()
        if 1 - c * c <= 1e-16:
            out[index] = (1 - t) * v0[index] + t * v1[index]
        else:
            theta = math.acos(c)
            out[index] = (math.sin((1 - t) * theta) * v0[index] + math.sin(t * theta) * v1[index]) / math.sin(theta)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True), (True, True)])
@pytest.mark.parametrize("use_base", [True, False])
@pytest.mark.parametrize("shape", [(6, 7), (3, 4, 5), (9,)])
def test_nuslerp_matches_the_reference_in_chunks(flatten, row_wise, use_base, shape):
    torch.manual_seed(1)
    base = torch.randn(shape, dtype=torch.float64)
    m0, m1 = base + 0.4 * torch.randn(shape, dtype=torch.float64), base + 0.7 * torch.randn(shape, dtype=torch.float64)
    t = 0.8 / (0.4 + 0.8)
    if use_base:
        expected = base + nuslerp_reference(t, m0 - base, m1 - base, flatten, row_wise)
    else:
        expected = nuslerp_reference(t, m0, m1, flatten, row_wise)
    for chunk_size in (5, None):
        out = merge("nuslerp", base, [m0, m1], model_params=weights(0.4, 0.8), chunk_size=chunk_size,
                    flatten=flatten, row_wise=row_wise, use_base=use_base)
        assert torch.allclose(out, expected, atol=1e-12, rtol=0), (chunk_size, (out - expected).abs().max())


def test_nuslerp_hand_example_orthogonal_unit_vectors_midway():
    out = merge("nuslerp", torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], chunk_size=1)
    # θ_base = 0, Ω = π/2, t = 1/2: sin(π/4)/sin(π/2) · (v0 + v1)
    assert torch.allclose(out, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-7)


def test_nuslerp_interpolation_factor_from_the_weights_and_half_when_they_cancel():
    base, v0, v1 = torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = merge("nuslerp", base, [v0, v1], model_params=weights(1.0, 2.0))  # t = 2/3: angle 60° from v0
    assert torch.allclose(out, torch.tensor([math.cos(math.pi / 3), math.sin(math.pi / 3)]), atol=1e-6)
    out = merge("nuslerp", base, [v0, v1], model_params=weights(1.0, -1.0))  # |w0 + w1| < 1e-6: t = 1/2
    assert torch.allclose(out, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    out = merge("nuslerp", base, [v0, v1], model_params=weights(0.0, 3.0))  # t = 1: the second model
    assert torch.allclose(out, v1, atol=1e-6)


def test_nuslerp_colinear_task_vectors_interpolate_linearly(pool):
    base, models = pool
    tau = models[0] - base
    m0, m1 = base + tau, base + 3 * tau
    out = merge("nuslerp", base, [m0, m1], model_params=weights(3.0, 1.0))  # t = 1/4
    assert torch.allclose(out, base + 0.75 * tau + 0.25 * 3 * tau, atol=1e-12)
    out = merge("nuslerp", base, [m0, base - 2 * tau], model_params=weights(3.0, 1.0))  # antiparallel: linear too
    assert torch.allclose(out, base + 0.75 * tau - 0.25 * 2 * tau, atol=1e-12)


def test_nuslerp_a_zero_task_vector_counts_as_orthogonal_as_in_mergekit(pool):
    base, models = pool
    tau = models[1] - base
    out = merge("nuslerp", base, [base.clone(), models[1]], model_params=weights(1.0, 1.0))
    # v0 = 0 (norm floored at 1e-7): cos = 0, Ω = π/2, v = sin(tπ/2)·v1
    assert torch.allclose(out, base + math.sin(math.pi / 4) * tau, atol=1e-12)


def test_nuslerp_rows_are_independent_one_colinear_row_is_linear():
    base = torch.zeros(2, 3)
    m0 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    m1 = torch.tensor([[0.0, 1.0, 0.0], [2.0, 4.0, 6.0]])
    out = merge("nuslerp", base, [m0, m1], flatten=False, chunk_size=2)
    expected = torch.tensor([[math.sqrt(0.5), math.sqrt(0.5), 0.0], [1.5, 3.0, 4.5]])
    assert torch.allclose(out, expected, atol=1e-6)
    out = merge("nuslerp", base.T.contiguous(), [m0.T.contiguous(), m1.T.contiguous()], flatten=False,
                row_wise=True, chunk_size=2)
    assert torch.allclose(out, expected.T, atol=1e-6)  # row_wise: the vectors are the columns


def test_nuslerp_schema():
    cls = get_method("nuslerp").method_class
    assert (cls.min_models, cls.max_models, cls.uses_base) == (2, 2, True)
    assert cls.Params().model_dump() == {"flatten": True, "row_wise": False, "use_base": True}
    assert cls.ModelParams().weight == 1.0
    with pytest.raises(ValidationError):
        cls.Params(nuslerp_flatten=False)  # mergekit's names are the translation's business


# ---- multislerp -------------------------------------------------------------------------------------------
def multislerp_reference(models, w, base=None, normalize=True, eps=1e-8):
    """mergekit's multislerp step by step on whole tensors: unit vectors, their weighted mean, the tangent
    vectors at it, the exponential map, and the weighted mean norm."""
    if len(models) == 1:
        return models[0]
    x = torch.stack([m.reshape(-1) for m in models]).double()
    if base is not None:
        x = x - base.reshape(-1)
    w = torch.tensor(w, dtype=torch.float64)
    if normalize:
        w = w / w.sum()
    norms = x.norm(dim=-1, keepdim=True)
    u = x / (norms + eps)
    mean = (w[:, None] * u).sum(0)
    if mean.norm() < eps:
        assert len(models) == 2
        out = w[0] * x[0] + w[1] * x[1]
    else:
        mean = mean / mean.norm()
        tangents = u - (u @ mean)[:, None] * mean
        tangent = (w[:, None] * tangents).sum(0)
        size = tangent.norm() + eps
        out = (mean * torch.cos(size) + tangent * torch.sin(size) / size) * (norms.squeeze(-1) * w).sum()
    if base is not None:
        out = out + base.reshape(-1)
    return out.reshape(models[0].shape)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("use_base", [True, False])
@pytest.mark.parametrize("normalize,eps", [(True, 1e-8), (False, 1e-8), (True, 0.1)])
def test_multislerp_matches_the_reference_in_chunks(pool, n, use_base, normalize, eps):
    base, models = pool
    w = [0.5, 1.0, 0.25, 2.0][:n]
    expected = multislerp_reference(models[:n], w, base if use_base else None, normalize, eps)
    for chunk_size in (5, None):
        out = merge("multislerp", base, models[:n], model_params=weights(*w), chunk_size=chunk_size,
                    normalize=normalize, eps=eps, use_base=use_base)
        assert torch.allclose(out, expected, atol=1e-12, rtol=0), (chunk_size, (out - expected).abs().max())


def test_multislerp_hand_example_orthogonal_unit_vectors():
    out = merge("multislerp", torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    # u = the vectors, weights 1/2: mean direction (1, 1)/√2, mean norm 1
    assert torch.allclose(out, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    out = merge("multislerp", torch.zeros(2), [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])],
                model_params=weights(1.0, 1.0))
    # the direction weighs the unit vectors, not the raw ones; the norm is the mean norm 3
    assert torch.allclose(out, 3 * torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)


def test_multislerp_one_model_is_copied(pool):
    base, models = pool
    out = merge("multislerp", base, models[:1], model_params=weights(0.3))
    assert torch.equal(out, models[0])


def test_multislerp_two_antipodal_task_vectors_fall_back_to_the_weighted_sum(pool):
    base, models = pool
    tau = models[0] - base
    out = merge("multislerp", torch.zeros_like(base), [tau, -tau], model_params=weights(1.0, 1.0), use_base=False)
    assert torch.equal(out, torch.zeros_like(base))  # 0.5·τ − 0.5·τ
    out = merge("multislerp", torch.zeros_like(base), [tau, -tau], model_params=weights(1.0, 1.0),
                normalize=False, use_base=False)
    assert torch.equal(out, torch.zeros_like(base))


def test_multislerp_more_antipodal_vectors_that_cancel_are_an_error(pool):
    base, models = pool
    tau = models[0] - base
    with pytest.raises(MergeError, match="balance out"):
        merge("multislerp", base, [base + tau, base - tau, base + tau, base - tau])


def test_multislerp_weights_summing_to_zero_with_normalize_are_refused(pool):
    base, models = pool
    with pytest.raises(MergeError, match="sum to 0"):
        merge("multislerp", base, models[:2], model_params=weights(1.0, -1.0))
    out = merge("multislerp", base, models[:2], model_params=weights(1.0, -1.0), normalize=False)
    expected = multislerp_reference(models[:2], [1.0, -1.0], base, normalize=False)
    assert torch.allclose(out, expected, atol=1e-12)


def test_multislerp_colinear_task_vectors_keep_the_direction_and_average_the_norms(pool):
    base, models = pool
    tau = models[0] - base
    out = merge("multislerp", base, [base + tau, base + 3 * tau], model_params=weights(1.0, 3.0))
    assert torch.allclose(out, base + (0.25 * 1 + 0.75 * 3) * tau, atol=1e-12)


def test_multislerp_schema():
    cls = get_method("multislerp").method_class
    assert (cls.min_models, cls.max_models, cls.uses_base) == (1, None, True)
    assert cls.Params().model_dump() == {"normalize": True, "eps": 1e-8, "use_base": True}
    with pytest.raises(ValidationError):
        cls.Params(eps=0.0)


# ---- karcher ----------------------------------------------------------------------------------------------
def karcher_reference(models, max_iter=10, tol=1e-5):
    """mergekit's karcher_merge_tensors on whole flattened tensors, equal weights 1/n."""
    if len(models) == 1:
        return models[0]
    n = len(models)
    flat = [m.reshape(-1).double() for m in models]
    norms = [f.norm() for f in flat]
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return torch.zeros_like(models[0])
    a = [1.0 / len(valid)] * len(valid)
    units = [flat[i] / norms[i] for i in valid]
    mean = sum(ai * u for ai, u in zip(a, units))
    mean = units[0].clone() if mean.norm() < tol else mean / mean.norm()
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for ai, u in zip(a, units):
            dot = torch.clamp(mean @ u, -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta < tol:
                continue
            tangent += ai * theta / torch.sin(theta) * (u - dot * mean)
        size = tangent.norm()
        if size < tol:
            break
        mean = torch.cos(size) * mean + torch.sin(size) * tangent / size
        if mean.norm() > tol:
            mean = mean / mean.norm()
    return (sum(norms) / n * mean).reshape(models[0].shape)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("max_iter,tol", [(10, 1e-5), (0, 1e-5), (1, 1e-5), (3, 0.05), (100, 1e-9)])
def test_karcher_matches_the_reference_in_chunks(pool, n, max_iter, tol):
    base, models = pool
    expected = karcher_reference(models[:n], max_iter, tol)
    for chunk_size in (5, None):
        out = merge("karcher", base, models[:n], chunk_size=chunk_size, max_iter=max_iter, tol=tol)
        assert torch.allclose(out, expected, atol=1e-12, rtol=0), (chunk_size, (out - expected).abs().max())


def test_karcher_spread_directions_need_the_iterations(pool):
    torch.manual_seed(3)
    models = [torch.randn(6, 7, dtype=torch.float64) * s for s in (1.0, 2.0, 0.5)]  # far apart on the sphere
    converged = merge("karcher", models[0], models, max_iter=100, tol=1e-12)
    first = merge("karcher", models[0], models, max_iter=0)
    assert not torch.allclose(converged, first, atol=1e-4)  # the iteration moves the mean
    assert torch.allclose(converged, karcher_reference(models, 100, 1e-12), atol=1e-12)
    # at the Karcher mean μ the weighted log maps sum to zero
    mu = (converged / converged.norm()).reshape(-1)
    tangent = torch.zeros_like(mu)
    for m in models:
        u = m.reshape(-1) / m.norm()
        phi = torch.arccos((mu @ u).clamp(-1, 1))
        tangent += phi / torch.sin(phi) * (u - (mu @ u) * mu)
    assert tangent.norm() < 1e-9


def test_karcher_hand_example_orthogonal_vectors():
    out = merge("karcher", torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])])
    # the geodesic midpoint of the unit vectors, (1, 1)/√2, times the mean norm 2
    assert torch.allclose(out, torch.tensor([math.sqrt(2.0), math.sqrt(2.0)]), atol=1e-6)


def test_karcher_ignores_the_base_and_copies_one_model(pool):
    base, models = pool
    assert torch.equal(merge("karcher", base, models[:3]), merge("karcher", 100 * base, models[:3]))
    assert torch.equal(merge("karcher", base, models[:1]), models[0])


def test_karcher_corner_cases(pool):
    _, models = pool
    zero = torch.zeros_like(models[0])
    # a zero model is left out of the direction but counts in the mean norm (1/n each)
    out = merge("karcher", zero, [zero, models[0], models[1]])
    expected = karcher_reference([models[0], models[1]]) * 2 / 3
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.allclose(out, karcher_reference([zero, models[0], models[1]]), atol=1e-12)
    assert torch.equal(merge("karcher", zero, [zero, zero]), zero)  # nothing valid: 0
    assert torch.allclose(merge("karcher", zero, [models[2]] * 3), models[2], atol=1e-12)  # identical: itself
    colinear = merge("karcher", zero, [models[2], 3 * models[2]])
    assert torch.allclose(colinear, 2 * models[2], atol=1e-12)



@pytest.mark.parametrize("seed", range(8))
def test_karcher_antipodal_models_keep_the_first_direction(seed):
    # the mean of the units vanishes, so the first model's unit vector is the start; the antipode's log map
    # φ/sin φ · (u − dμ) is ∞ · 0, exactly 0 in mergekit (u = −μ elementwise), so nothing moves
    torch.manual_seed(seed)
    m = torch.randn(5, 3, dtype=torch.float64) * (seed + 1)
    zero = torch.zeros_like(m)
    for models, scale in (([m, -m], 1.0), ([m, -2 * m], 1.5), ([-4 * m, m], 2.5)):
        expected = karcher_reference(models)
        assert torch.allclose(expected, scale * m * models[0].sign()[0, 0] * m.sign()[0, 0], atol=1e-12)
        assert torch.allclose(merge("karcher", zero, models), expected, atol=1e-12)


def test_karcher_schema():
    cls = get_method("karcher").method_class
    assert (cls.min_models, cls.max_models, cls.uses_base) == (1, None, False)
    assert cls.Params().model_dump() == {"max_iter": 10, "tol": 1e-5}
    with pytest.raises(ValidationError):
        cls.Params(max_iter=2.5)
    with pytest.raises(ValidationError):
        cls.Params(tol=-1.0)
    with pytest.raises(ValidationError):
        cls.ModelParams(weight=1.0)  # mergekit's karcher has no weights


# ---- the streaming engine -----------------------------------------------------------------------------------
@pytest.fixture
def checkpoints(checkpoint_folders):
    return checkpoint_folders


@pytest.mark.parametrize("method,count,parameters,model_params", [
    ("nuslerp", 2, {"flatten": False}, weights(0.3, 0.6)),
    ("nuslerp", 2, {"row_wise": True, "flatten": False, "use_base": False}, weights(1.0, 2.0)),
    ("multislerp", 3, {}, weights(0.2, 0.5, 0.3)),
    ("karcher", 3, {"max_iter": 20}, None),
])
def test_the_engine_streams_the_same_merge(checkpoints, method, count, parameters, model_params):
    from safetensors.torch import load_file

    from merging.config import validate_config
    from merging.run import run_merge

    root, (base, *models) = checkpoints
    models = models[:count]
    cfg = validate_config({"method": method, "base": str(base), "parameters": parameters, "chunk_size": 16,
                           "models": [{"model": str(m), "parameters": (model_params or [{}] * count)[i]}
                                      for i, m in enumerate(models)]})
    run_merge(cfg, root / "out", overwrite=True, progress=False)
    out = load_file(root / "out" / "model.safetensors")
    b, ms = load_file(base / "model.safetensors"), [load_file(m / "model.safetensors") for m in models]
    for name in b:
        expected = merge(method, b[name], [m[name] for m in ms], model_params=model_params, chunk_size=None,
                         **parameters)
        assert torch.allclose(out[name], expected, atol=1e-6), name
