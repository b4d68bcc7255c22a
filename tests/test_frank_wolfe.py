"""FW-Merging (merging/methods/frank_wolfe.py) as a specification: the iterate, the oracle, the step schedule,
the zero vertex, the merge functions, the gaps, convergence on a convex toy, and memory that does not grow
with the candidate pool."""
from __future__ import annotations

import itertools
import math
import weakref

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import save_file
from toy_objective import ToyObjective

from merging.errors import MergeError
from merging.io.candidates import CheckpointSource, InMemorySource
from merging.methods.base import DataDrivenInputs
from merging.methods.frank_wolfe import FrankWolfeParams, frank_wolfe_merge
from merging.registry import get_method
from merging.resources import CONFIGS

NAMES = ["body.weight", "body.bias"]


class StrongToy(ToyObjective):
    """The toy with the identity as every head and only ``targets`` as tasks: f_t(θ) = mean ‖(W − W_t)x + b − b_t‖²
    / d is strongly convex in the body, so ``optimum[t]`` is its unique minimiser."""

    def __init__(self, targets: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        for t in self.tasks:
            model = self._models[t]
            model.head = torch.nn.Identity()
            x, _ = self._data[t]
            with torch.no_grad():
                self._data[t] = (x, model(x))  # [n, d]
        self.tasks = list(targets)


class LinearObjective:
    """f(θ) = Σ_n ⟨c_n, θ_n⟩: the gradient is c wherever θ is."""

    def __init__(self, c: dict[str, torch.Tensor]) -> None:
        self.c, self.tasks = c, ["linear"]

    def model(self, task: str) -> torch.nn.Module:
        return torch.nn.Module()

    def batches(self, task: str, split: str):
        yield {}

    def logits(self, task, params, batch) -> torch.Tensor:
        return sum((self.c[n] * params[n]).sum() for n in self.c).reshape(1)  # [1]

    def loss(self, task, logits, batch) -> torch.Tensor:
        return logits.sum()


class QuadraticObjective(LinearObjective):
    """f(θ) = Σ_n ‖θ_n − m_n‖²: its minimiser is m."""

    def logits(self, task, params, batch) -> torch.Tensor:
        return sum(((params[n] - self.c[n]) ** 2).sum() for n in self.c).reshape(1)  # [1]


class TrackingSource:
    """A lazy candidate: each ``read`` returns a fresh copy, tracked by weak reference in the pool's ``alive``."""

    def __init__(self, tensors: dict[str, torch.Tensor], alive: weakref.WeakSet, stats: dict[str, int]) -> None:
        self.tensors, self.alive, self.stats = tensors, alive, stats
        self.names = list(tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str) -> torch.Tensor:
        tensor = self.tensors[name].clone()
        self.alive.add(tensor)
        self.stats["reads"] += 1
        self.stats["peak"] = max(self.stats["peak"], len(self.alive))
        return tensor


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def hand_objective_and_grad(obj: ToyObjective, theta: dict[str, torch.Tensor]) -> tuple[float, dict]:
    """Σ_t mean loss over all of task t's examples, and its gradient, without the library."""
    params = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
    total = 0
    for t in obj.tasks:
        x, y = obj._data[t]
        out = torch.func.functional_call(obj.model(t), params, (x,))  # [n, 1]
        total = total + torch.nn.functional.mse_loss(out.squeeze(-1), y)
    total.backward()
    return float(total.detach()), {n: p.grad for n, p in params.items()}


def test_defaults_follow_the_official_script_schedule_init_and_update():
    obj = ToyObjective()
    base, opt = obj.base, obj.optimum
    result = frank_wolfe_merge(obj, base, opt)
    p = result.params
    assert (p.scale, p.step_size, p.iterations, p.granularity, p.vertices, p.oracle) == (
        0.29, 0.1, 10, "layer", "full", "cosine")
    assert [h["gamma"] for h in result.history] == pytest.approx([0.29 * 2 / (k + 2) * 0.1 for k in range(10)])
    # replay by hand: θ_0 = base + 0.29 Σ τ_i, then θ ← θ + γ_k (s − θ) with the recorded choices
    theta = {n: base[n] + 0.29 * sum(opt[t][n] - base[n] for t in obj.tasks) for n in NAMES}
    vertex = {**opt, "initial": dict(theta), "zero": {n: torch.zeros_like(base[n]) for n in NAMES}}
    for h in result.history:
        theta = {n: theta[n] + h["gamma"] * (vertex[h["choices"][n]][n] - theta[n]) for n in NAMES}
    for n in NAMES:
        torch.testing.assert_close(result.theta[n], theta[n], rtol=1e-5, atol=1e-5)
    assert "zero" in {c for h in result.history for c in h["choices"].values()}  # the replay covered it
    assert result.final_objective < result.history[0]["objective"]


def test_first_iteration_matches_a_hand_computed_cosine_oracle_and_gap():
    obj = ToyObjective(seed=3)
    result = frank_wolfe_merge(obj, obj.base, obj.optimum, {"iterations": 1})
    theta0 = {n: obj.base[n] + 0.29 * sum(obj.optimum[t][n] - obj.base[n] for t in obj.tasks) for n in NAMES}
    value, grad = hand_objective_and_grad(obj, theta0)
    vertices = {**obj.optimum, "initial": theta0}
    expected, gap = {}, 0.0
    for n in NAMES:
        cos = {label: dot(grad[n], v[n]) / (grad[n].norm() * v[n].norm()) for label, v in vertices.items()}
        best = min(cos, key=cos.get)
        expected[n] = best if cos[best] < 0 else "zero"
        s = vertices[best][n] if cos[best] < 0 else torch.zeros_like(theta0[n])
        gap += dot(grad[n], theta0[n] - s)
    h = result.history[0]
    assert h["choices"] == expected
    assert h["objective"] == pytest.approx(value, rel=1e-5)
    assert h["gap"] == pytest.approx(gap, rel=1e-4)


def overshoot_pool(obj: StrongToy, target: str) -> dict[str, dict[str, torch.Tensor]]:
    """Every task's checkpoint plus "far" = θ_target + 2(θ_target − θ_base): from the base, the LMO first
    overshoots to "far", so reaching the target vertex takes the iterations that are under test."""
    far = {n: 3 * obj.optimum[target][n] - 2 * obj.base[n] for n in NAMES}
    return {**obj.optimum, "far": far}


def distance_ratio(obj: StrongToy, theta: dict[str, torch.Tensor], target: str) -> float:
    """‖θ − θ_target‖ / ‖θ_t0 − θ_target‖."""
    norm = lambda d: math.sqrt(sum(dot(d[n], d[n]) for n in NAMES))
    opt = obj.optimum
    return norm({n: theta[n] - opt[target][n] for n in NAMES}) / norm({n: opt["t0"][n] - opt[target][n]
                                                                        for n in NAMES})


def test_textbook_schedule_converges_to_the_target_vertex_and_closes_the_gap():
    obj = StrongToy(["t1"])
    params = {"lambda": 1.0, "eta": 1.0, "oracle": "linear", "zero_vertex": False, "init": "base",
              "init_as_vertex": False, "iterations": 120}
    result = frank_wolfe_merge(obj, obj.base, overshoot_pool(obj, "t1"), params)
    history = result.history
    assert [h["gamma"] for h in history[:3]] == pytest.approx([1, 2 / 3, 1 / 2])  # γ_k = 2/(k+2)
    assert set(history[0]["choices"].values()) == {"far"} and set(history[-1]["choices"].values()) == {"t1"}
    assert distance_ratio(obj, result.theta, "t1") < 0.01
    assert result.final_objective < 1e-3 * history[1]["objective"]
    gaps = [h["gap_max"] for h in history[1:]]  # from k = 1 on, θ_k ∈ conv(V)
    assert min(gaps) >= -1e-6 and gaps[-1] < 1e-3 * gaps[0]
    assert all(h["gap"] == pytest.approx(h["gap_max"]) for h in history)  # the linear LMO attains the max
    assert all(h["slope"] == pytest.approx(-h["gap"], rel=1e-4, abs=1e-6) for h in history)  # D = s − θ


def test_the_duality_gap_stopping_rule_ends_the_run_at_a_certified_iterate():
    obj = StrongToy(["t1"])
    params = {"lambda": 1.0, "eta": 1.0, "oracle": "linear", "zero_vertex": False, "init": "base",
              "init_as_vertex": False, "iterations": 120}
    full = frank_wolfe_merge(obj, obj.base, overshoot_pool(obj, "t1"), params).history
    tolerance = full[10]["gap_max"]
    result = frank_wolfe_merge(obj, obj.base, overshoot_pool(obj, "t1"), {**params, "stop_gap": tolerance})
    last = result.history[-1]
    assert "stopped" in last and last["gap_max"] <= tolerance and len(result.history) <= 11
    assert all("stopped" not in h and h["gap_max"] > tolerance for h in result.history[:-1])
    assert result.final_objective == pytest.approx(last["objective"])  # no step after the stop
    at_once = frank_wolfe_merge(obj, obj.base, overshoot_pool(obj, "t1"), {**params, "stop_gap": 1e12})
    assert len(at_once.history) == 1 and all(torch.equal(at_once.theta[n], obj.base[n]) for n in NAMES)


@pytest.mark.parametrize("search", ["grid", "golden"])
@pytest.mark.parametrize("oracle", ["linear", "cosine"])
def test_line_search_decreases_the_objective_monotonically(search, oracle):
    obj = StrongToy(["t2"])
    params = {"line_search": search, "oracle": oracle, "iterations": 40, "line_search_points": 12}
    result = frank_wolfe_merge(obj, obj.base, overshoot_pool(obj, "t2"), params)
    history = result.history
    assert never_rises(result)
    assert all(0 <= h["gamma"] <= 1 for h in history)
    assert all(h["gamma"] > 0 for h in history if h["slope"] < -1e-6)  # a descent direction is never wasted
    assert result.final_objective < 1e-2 * history[0]["objective"]
    assert history[-1]["gap_max"] < 1e-2 * history[0]["gap_max"]
    assert distance_ratio(obj, result.theta, "t2") < 0.05


def never_rises(result) -> bool:
    """f(θ_0) ≥ f(θ_1) ≥ … ≥ f(θ_K), up to float rounding."""
    values = [h["objective"] for h in result.history] + [result.final_objective]
    return all(b <= a + 1e-9 for a, b in itertools.pairwise(values))


def assert_in_hull(result, vertices: dict[str, dict[str, torch.Tensor]]) -> None:
    """Pairwise steps' record: per layer, weights on the simplex whose combination of the vertices is θ_K."""
    for name, weights in result.weights.items():
        assert min(weights.values()) >= 0 and sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
        rebuilt = sum(alpha * vertices[label][name] for label, alpha in weights.items())
        torch.testing.assert_close(result.theta[name], rebuilt, rtol=1e-5, atol=1e-5)


def test_pairwise_steps_keep_the_iterate_a_convex_combination_and_converge_faster():
    """Pairwise FW (steps: pairwise) on the overshoot toy: every iterate is Σ_j α_j v_j with α on the simplex
    (checked on θ_K by rebuilding it from the recorded weights), f never rises under line search, and weight
    moved off "far" and the base lets it end 100 times closer to the target than plain FW in 30 iterations."""
    obj = StrongToy(["t1"])
    pool = overshoot_pool(obj, "t1")
    params = {"oracle": "linear", "line_search": "golden", "line_search_points": 20, "zero_vertex": False,
              "init": "base", "iterations": 30}
    plain = frank_wolfe_merge(obj, obj.base, pool, params)
    result = frank_wolfe_merge(obj, obj.base, pool, {**params, "steps": "pairwise"})
    assert never_rises(result)
    assert distance_ratio(obj, result.theta, "t1") < distance_ratio(obj, plain.theta, "t1") / 100
    assert_in_hull(result, {**pool, "initial": obj.base})
    assert result.history[1]["away"] == {"far": 2}  # the first pick overshot: weight flows back from it


def test_pairwise_steps_with_layerwise_step_sizes_stay_in_the_hull_and_never_raise_f():
    obj = StrongToy(["t1"])
    pool = overshoot_pool(obj, "t1")
    result = frank_wolfe_merge(obj, obj.base, pool, {"oracle": "linear", "zero_vertex": False, "init": "base",
                                                     "iterations": 8, "steps": "pairwise",
                                                     "line_search": "layerwise", "layerwise_steps": 5})
    assert never_rises(result) and result.final_objective < 0.5 * result.history[0]["objective"]
    assert_in_hull(result, {**pool, "initial": obj.base})


def test_a_full_pairwise_step_drops_the_away_vertex_from_the_active_set():
    """A linear objective: γ_0 = 1 moves all of θ_0's weight to the best vertex of each layer (a: p, b: q), so
    the initial merge leaves those layers' active sets; in layer c θ_0 is best and stays. Then nothing moves."""
    obj, base, pool, theta0 = zero_vertex_case()
    params = {"steps": "pairwise", "oracle": "linear", "zero_vertex": False, "init": "given", "iterations": 2,
              "lambda": 1.0, "eta": 1.0}
    result = frank_wolfe_merge(obj, base, pool, params, init_tensors=theta0)
    first, second = result.history
    assert first["choices"] == {"a": "p", "b": "q", "c": "initial"} and first["dropped"] == 2
    assert result.weights == {"a": {"p": 1.0}, "b": {"q": 1.0}, "c": {"initial": 1.0}}
    for name, label in [("a", "p"), ("b", "q")]:
        torch.testing.assert_close(result.theta[name], pool[label][name])
    torch.testing.assert_close(result.theta["c"], theta0["c"])
    assert second["slope"] == 0 and second["dropped"] == 0 and result.final_objective == pytest.approx(-4 - 1 + 1)


@pytest.mark.parametrize("gamma_max", [1.0, 0.5])
def test_layerwise_step_sizes_find_each_layers_own_step(gamma_max):
    """One direction D = p − 0 whose best step is 0.25 in layer a and 0.75 in layer b: one γ for both (golden
    section) stops at 0.5 with f = 2; one γ per layer (``layerwise``) reaches both, inside [0, γ_max]."""
    m = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([3.0, 0.0])}
    pool = {"p": {"a": torch.tensor([4.0, 0.0]), "b": torch.tensor([4.0, 0.0])}}
    zeros = {n: torch.zeros(2) for n in m}
    params = {"oracle": "linear", "zero_vertex": False, "init": "given", "init_as_vertex": False, "iterations": 1,
              "lambda": 1.0, "eta": 0.5, "gamma_max": gamma_max}
    one = frank_wolfe_merge(QuadraticObjective(m), zeros, pool, {**params, "line_search": "golden",
                                                                 "line_search_points": 30}, init_tensors=zeros)
    assert one.history[0]["gamma"] == pytest.approx(0.5, abs=1e-3) and one.final_objective >= 2 - 1e-4
    per_layer = frank_wolfe_merge(QuadraticObjective(m), zeros, pool, {**params, "line_search": "layerwise",
                                                                       "layerwise_steps": 60}, init_tensors=zeros)
    low, high = per_layer.history[0]["gamma_range"]
    assert low == pytest.approx(0.25, abs=0.02) and high == pytest.approx(min(0.75, gamma_max), abs=0.02)
    assert per_layer.final_objective < (0.05 if gamma_max == 1 else (4 * 0.5 - 3) ** 2 + 0.05)
    assert per_layer.final_objective < per_layer.history[0]["objective"]


@pytest.mark.parametrize("gamma_max", [1.0, 0.5])
def test_secant_layerwise_steps_are_exact_per_layer_on_a_separable_quadratic(gamma_max):
    """The direction of the test above (best step 0.25 in layer a, 0.75 in layer b): along each layer the slope
    ⟨∇_l f(θ + γD), D_l⟩ of a separable quadratic is linear in γ, so the secant through γ = 0 and golden
    section's common step (0.5) hits each layer's own step exactly, clipped to γ_max, from one more gradient."""
    m = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([3.0, 0.0])}
    pool = {"p": {"a": torch.tensor([4.0, 0.0]), "b": torch.tensor([4.0, 0.0])}}
    zeros = {n: torch.zeros(2) for n in m}
    params = {"oracle": "linear", "zero_vertex": False, "init": "given", "init_as_vertex": False, "iterations": 1,
              "gamma_max": gamma_max, "line_search": "layerwise_secant", "line_search_points": 30}
    result = frank_wolfe_merge(QuadraticObjective(m), zeros, pool, params, init_tensors=zeros)
    assert result.history[0]["gamma_range"] == pytest.approx([0.25, min(0.75, gamma_max)], abs=1e-6)
    expected = 0.0 if gamma_max == 1 else (4 * 0.5 - 3) ** 2
    assert result.final_objective == pytest.approx(expected, abs=1e-6)


def test_layerwise_step_sizes_start_from_golden_sections_step_so_they_are_never_worse():
    """f = ‖θ − p‖² from 0 towards the one candidate p: the best step is γ = 1, which golden section evaluates
    (γ_max is a point). The per-layer Adam steps start from that common step, so however short their reach (10
    steps at lr 1e-3 from the schedule's 0.029 would stop near 0.04) they end where golden section ends."""
    m = {"a": torch.tensor([2.0, -1.0]), "b": torch.tensor([0.5, 3.0])}
    pool = {"p": {n: t.clone() for n, t in m.items()}}
    zeros = {n: torch.zeros(2) for n in m}
    params = {"oracle": "linear", "init": "given", "init_as_vertex": False, "iterations": 1, "layerwise_lr": 1e-3}
    golden = frank_wolfe_merge(QuadraticObjective(m), zeros, pool, {**params, "line_search": "golden"},
                               init_tensors=zeros)
    per_layer = frank_wolfe_merge(QuadraticObjective(m), zeros, pool, {**params, "line_search": "layerwise"},
                                  init_tensors=zeros)
    assert golden.history[0]["gamma"] == pytest.approx(1.0) and golden.final_objective == pytest.approx(0.0)
    assert per_layer.history[0]["gamma_range"] == pytest.approx([1.0, 1.0], abs=1e-3)
    assert per_layer.final_objective <= golden.final_objective + 1e-6


def zero_vertex_case():
    """Layer a: every task vector has ⟨c, τ⟩ > 0 but every full weight ⟨c, θ_i⟩ < 0 (base_a is far
    negative); layer b: q is the only descent vertex; layer c: nothing descends, in either space."""
    c = {"a": torch.tensor([1.0, 0, 0]), "b": torch.tensor([0, 1.0, 0]), "c": torch.tensor([0, 0, 1.0])}
    base = {"a": torch.tensor([-5.0, 0, 0]), "b": torch.zeros(3), "c": torch.tensor([0, 0, 3.0])}
    pool = {"p": {"a": torch.tensor([-4.0, 1, 0]), "b": torch.tensor([0, 2.0, 1]), "c": torch.tensor([0, 0, 4.0])},
            "q": {"a": torch.tensor([-3.0, 0, 1]), "b": torch.tensor([1, -1.0, 0]), "c": torch.tensor([1, 0, 5.0])}}
    theta0 = {n: torch.ones(3) for n in c}
    return LinearObjective(c), base, pool, theta0


@pytest.mark.parametrize("vertices", ["full", "task_vector"])
def test_zero_vertex_is_zero_weights_for_full_and_the_base_for_task_vectors(vertices):
    obj, base, pool, theta0 = zero_vertex_case()
    params = {"vertices": vertices, "init": "given", "init_as_vertex": False, "iterations": 1,
              "lambda": 1.0, "eta": 0.5}
    result = frank_wolfe_merge(obj, base, pool, params, init_tensors=theta0)
    h, th = result.history[0], result.theta
    assert h["gamma"] == 0.5 and h["objective"] == pytest.approx(3.0)
    zero = {n: torch.zeros(3) for n in base} if vertices == "full" else base
    if vertices == "full":  # cosines on full weights: p (−4/√17) beats q (−3/√10) in layer a
        assert h["choices"] == {"a": "p", "b": "q", "c": "zero"}
        torch.testing.assert_close(th["a"], 0.5 * theta0["a"] + 0.5 * pool["p"]["a"])
        assert h["gap"] == pytest.approx((1 + 4) + (1 + 1) + 1)  # Σ ⟨c, θ − s⟩
    else:  # on task vectors nothing descends in layer a: the step moves towards the base
        assert h["choices"] == {"a": "zero", "b": "q", "c": "zero"}
        torch.testing.assert_close(th["a"], 0.5 * theta0["a"] + 0.5 * base["a"])
        assert h["gap"] == pytest.approx((1 + 5) + (1 + 1) + (1 - 3))
    torch.testing.assert_close(th["b"], 0.5 * theta0["b"] + 0.5 * pool["q"]["b"])
    torch.testing.assert_close(th["c"], 0.5 * theta0["c"] + 0.5 * zero["c"])
    assert h["gap_max"] >= h["gap"] - 1e-9


def test_without_the_zero_vertex_the_oracle_takes_the_least_bad_candidate():
    obj, base, pool, theta0 = zero_vertex_case()
    params = {"vertices": "task_vector", "zero_vertex": False, "init": "given", "init_as_vertex": False,
              "iterations": 1}
    h = frank_wolfe_merge(obj, base, pool, params, init_tensors=theta0).history[0]
    # layer a: cos(c, τ_p) = 1/√2 < cos(c, τ_q) = 2/√5; layer c: 1 vs 2/√5
    assert h["choices"] == {"a": "p", "b": "q", "c": "q"}


def test_scaled_task_vector_vertices_step_towards_the_base_plus_c_times_the_task_vector():
    """vertex_scale c = 2: the vertices are θ_base + 2τ_i, scored and stepped to as such (linear oracle)."""
    obj, base, pool, theta0 = zero_vertex_case()
    params = {"vertices": "task_vector", "vertex_scale": 2.0, "oracle": "linear", "zero_vertex": False,
              "init": "given", "init_as_vertex": False, "iterations": 1, "lambda": 1.0, "eta": 0.5}
    result = frank_wolfe_merge(obj, base, pool, params, init_tensors=theta0)
    h = result.history[0]
    # ⟨c, 2τ⟩: layer a p 2, q 4; layer b p 4, q −2; layer c p 2, q 4
    assert h["choices"] == {"a": "p", "b": "q", "c": "p"}
    s = {n: base[n] + 2 * (pool[h["choices"][n]][n] - base[n]) for n in base}
    for n in base:
        torch.testing.assert_close(result.theta[n], 0.5 * theta0[n] + 0.5 * s[n])
    assert h["gap"] == pytest.approx(sum(dot(obj.c[n], theta0[n] - s[n]) for n in base))  # 4 + 3 − 4
    assert h["gap"] == pytest.approx(3.0) and h["gap_max"] == pytest.approx(h["gap"])


def test_model_granularity_picks_one_candidate_by_the_sum_of_layer_cosines():
    obj, base, pool, theta0 = zero_vertex_case()
    params = {"granularity": "model", "init": "given", "init_as_vertex": False, "iterations": 1}
    h = frank_wolfe_merge(obj, base, pool, params, init_tensors=theta0).history[0]
    sums = {label: sum(float(torch.nn.functional.cosine_similarity(obj.c[n], v[n], dim=0)) for n in obj.c)
            for label, v in pool.items()}
    best = min(sums, key=sums.get)
    assert sums[best] < 0 and set(h["choices"].values()) == {best}


def test_gap_of_the_linear_oracle_is_nonnegative_inside_the_hull():
    obj = ToyObjective(seed=1)  # init θ_0 = TA is a vertex and λη ≤ 1: every iterate stays in conv(V)
    result = frank_wolfe_merge(obj, obj.base, obj.optimum, {"oracle": "linear", "lambda": 1.0, "eta": 0.5})
    for h in result.history:
        assert h["gap"] >= -1e-6 and h["gap"] == pytest.approx(h["gap_max"])
    cosine = frank_wolfe_merge(obj, obj.base, obj.optimum, {"lambda": 1.0, "eta": 0.5})
    assert all(h["gap_max"] >= max(h["gap"], 0) - 1e-6 for h in cosine.history)


def ties_by_hand(taus: torch.Tensor, k: int) -> torch.Tensor:
    """TIES's merged task vector before its scale: top-k of each τ_i, majority sign by mass, disjoint mean."""
    trimmed = taus * (taus.abs() >= taus.abs().topk(k, dim=1).values[:, -1:])  # [n, d]
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)  # [d]
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    return (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)


@pytest.mark.parametrize("init", ["ta", "merge", "base", "given"])
def test_initial_merge_formulas(init):
    torch.manual_seed(0)
    c = {"w": torch.randn(6)}
    base = {"w": torch.randn(6)}
    pool = {f"m{i}": {"w": base["w"] + torch.randn(6)} for i in range(3)}
    given = {"w": torch.randn(6)}
    params = {"init": init, "iterations": 1, "merge": "ties", "merge_params": {"density": 0.5}}
    result = frank_wolfe_merge(LinearObjective(c), base, pool, params,
                               init_tensors=given if init == "given" else None)
    taus = torch.stack([m["w"] - base["w"] for m in pool.values()])  # [3, 6]
    if init == "ta":
        expected = base["w"] + 0.29 * taus.sum(0)
    elif init == "merge":
        expected = base["w"] + 0.29 * ties_by_hand(taus, 3)
    else:
        expected = base["w"] if init == "base" else given["w"]
    assert result.history[0]["objective"] == pytest.approx(dot(c["w"], expected), rel=1e-5, abs=1e-5)


def test_init_merge_starts_from_its_own_method_while_the_steps_stay_task_arithmetic():
    """init: merge with init_merge ties (λ 1.0 as given, not FW's λ): θ_0 = θ_base + TIES(τ); the first step
    is still the Frank-Wolfe step θ_0 + γ(s − θ_0)."""
    torch.manual_seed(0)
    c, base = {"w": torch.randn(6)}, {"w": torch.randn(6)}
    pool = {f"m{i}": {"w": base["w"] + torch.randn(6)} for i in range(3)}
    params = {"init": "merge", "init_merge": "ties", "init_merge_params": {"density": 0.5, "lambda": 1.0},
              "iterations": 1, "oracle": "linear", "zero_vertex": False, "init_as_vertex": False,
              "lambda": 1.0, "eta": 0.5}
    result = frank_wolfe_merge(LinearObjective(c), base, pool, params)
    theta0 = base["w"] + ties_by_hand(torch.stack([m["w"] - base["w"] for m in pool.values()]), 3)
    assert result.history[0]["objective"] == pytest.approx(dot(c["w"], theta0), rel=1e-5, abs=1e-5)
    pick = result.history[0]["choices"]["w"]
    torch.testing.assert_close(result.theta["w"], theta0 + 0.5 * (pool[pick]["w"] - theta0))


def test_init_merge_takes_any_registered_per_tensor_merge_such_as_iso_c():
    """init_merge iso_c: θ_0 = θ_base + λ·σ̄·U Vᵀ for the matrix, U S Vᵀ the SVD of Σ_i τ_i and σ̄ the mean of S
    (ISO-C written out here), as FW soft's start takes it."""
    torch.manual_seed(1)
    c, base = {"w": torch.randn(4, 3)}, {"w": torch.randn(4, 3)}
    pool = {f"m{i}": {"w": base["w"] + torch.randn(4, 3)} for i in range(3)}
    params = {"init": "merge", "init_merge": "iso_c", "init_merge_params": {"lambda": 0.7}, "iterations": 1}
    result = frank_wolfe_merge(LinearObjective(c), base, pool, params)
    u, s, vh = torch.linalg.svd(sum(m["w"] - base["w"] for m in pool.values()), full_matrices=False)
    theta0 = base["w"] + 0.7 * s.mean() * (u @ vh)
    assert result.history[0]["objective"] == pytest.approx(float((c["w"] * theta0).sum()), rel=1e-5, abs=1e-5)


def test_adamerging_init_starts_from_layer_wise_unclamped_adamerging_on_the_same_objective():
    from merging.methods.adamerging import AdaMergingParams, adamerging
    from merging.methods.frank_wolfe import initial_adamerging, proxy_objective

    obj = ToyObjective(seed=2)
    inner = {"loss": "cross_entropy", "batch_size": 16, "steps": 20, "lr": 0.05}
    result = frank_wolfe_merge(obj, obj.base, obj.optimum, {"init": "adamerging", "init_adamerging": inner,
                                                            "iterations": 1})
    start, trace = adamerging(obj, obj.base, list(obj.optimum.values()),
                              AdaMergingParams(granularity="layer", clamp=False, **inner))
    defaults = initial_adamerging(FrankWolfeParams(init="adamerging"))
    assert (defaults.granularity, defaults.clamp) == ("layer", False)  # the fork's LayerWiseMergedModel
    assert result.history[0]["objective"] == pytest.approx(proxy_objective(obj, start, grad=False)[0], rel=1e-6)
    assert result.init_log["objective"] == pytest.approx(trace.entropy)
    assert result.init_log["objective"][-1] < result.init_log["objective"][0]


def test_merge_functions_shape_the_step():
    torch.manual_seed(1)
    c, base = {"w": torch.randn(1000)}, {"w": torch.zeros(1000)}
    pool = {"m": {"w": torch.randn(1000)}}
    theta0 = {"w": torch.randn(1000)}
    common = {"init": "given", "init_as_vertex": False, "zero_vertex": False, "iterations": 1,
              "lambda": 1.0, "eta": 0.5}
    d = pool["m"]["w"] - theta0["w"]  # s − θ_0
    run = lambda **kw: frank_wolfe_merge(LinearObjective(c), base, pool, {**common, **kw},
                                         init_tensors=theta0).theta["w"] - theta0["w"]
    torch.testing.assert_close(run(), 0.5 * d)  # task arithmetic: the Frank-Wolfe step γ(s − θ)
    torch.testing.assert_close(run(merge="from"), 0.5 * d)
    ties = run(merge="ties", merge_params={"density": 0.3})
    keep = d.abs() >= d.abs().topk(300).values[-1]
    torch.testing.assert_close(ties, 0.5 * d * keep)
    dare = run(merge="dare_ties", merge_params={"drop_rate": 0.5})
    kept = dare != 0
    assert 400 < int(kept.sum()) < 600
    torch.testing.assert_close(dare[kept], 0.5 * d[kept] / 0.5)


@pytest.mark.parametrize("config", [{}, {"vertices": "task_vector", "granularity": "model"},
                                    {"line_search": "grid", "line_search_points": 3}])
def test_memory_is_one_candidate_tensor_whatever_the_pool_size(config):
    obj = ToyObjective()
    reads_per_iteration = {}
    for size in (4, 16):
        g = torch.Generator().manual_seed(size)
        alive, stats = weakref.WeakSet(), {"reads": 0, "peak": 0}
        pool = {f"c{i}": TrackingSource({n: obj.optimum[obj.tasks[i % 3]][n] + 0.1 * torch.randn(
            obj.base[n].shape, generator=g) for n in NAMES}, alive, stats) for i in range(size)}
        result = frank_wolfe_merge(obj, obj.base, pool, {"iterations": 3, **config})
        assert stats["peak"] == 1
        assert len(alive) == 0
        chosen = sum(c in pool for h in result.history for c in h["choices"].values())
        # TA init and each oracle read every candidate tensor once; each step reads the chosen ones again
        assert stats["reads"] == size * len(NAMES) * (1 + 3) + chosen
        reads_per_iteration[size] = (stats["reads"] - chosen) / 4
    assert reads_per_iteration == {4: 4 * len(NAMES), 16: 16 * len(NAMES)}


def test_checkpoint_source_gives_the_same_merge_as_tensors_in_memory(tmp_path):
    obj = ToyObjective()
    sources = {}
    for t in obj.tasks:
        file = tmp_path / f"{t}.safetensors"
        save_file({**obj.optimum[t], "head.weight": torch.ones(1, 4)}, str(file))
        sources[t] = CheckpointSource(file, names=NAMES)
    on_disk = frank_wolfe_merge(obj, obj.base, sources, {"iterations": 3})
    in_memory = frank_wolfe_merge(obj, obj.base, obj.optimum, {"iterations": 3})
    for source in sources.values():
        source.close()
    for n in NAMES:
        torch.testing.assert_close(on_disk.theta[n], in_memory.theta[n])
    assert [h["choices"] for h in on_disk.history] == [h["choices"] for h in in_memory.history]
    with pytest.raises(MergeError, match="no tensor"):
        CheckpointSource(tmp_path / "t0.safetensors", names=["body.missing"])


@pytest.mark.parametrize(("params", "message"), [
    ({"iterations": 10, "stepsize": 0.1}, "stepsize"),
    ({"iterations": 0}, "iterations"),
    ({"eta": -1}, "eta"),
    ({"granularity": "block"}, "granularity"),
    ({"merge": "slerp"}, "merge"),
    ({"merge": "ties"}, "density"),
    ({"merge": "ties", "merge_params": {"density": 0.2, "lambda": 0.5}}, "Frank-Wolfe sets the scale"),
    ({"merge": "ties", "merge_params": {"density": 0.2, "scope": "model"}}, "scope: model"),
    ({"merge": "from", "merge_params": {"alpha": 2}}, "Frank-Wolfe sets the scale"),
    ({"line_search_points": 1}, "line_search_points"),
    ({"vertex_scale": 2.0}, "vertex_scale scales task vectors: it needs vertices: task_vector"),
    ({"vertices": "task_vector", "vertex_scale": 0}, "vertex_scale"),
    ({"stop_gap": -1}, "stop_gap"),
    ({"steps": "pairwise"}, "steps: pairwise .* needs merge: task_arithmetic, oracle: linear"),
    ({"selection": "per_task"}, "selection: per_task .* needs a line search"),
    ({"selection": "per_task", "line_search": "golden", "steps": "pairwise", "oracle": "linear"},
     "selection: per_task .* plain steps"),
    ({"line_search": "layerwise", "layerwise_steps": 0}, "layerwise_steps"),
    ({"init_merge": "ties", "init_merge_params": {"density": 0.2}}, "read by init: merge only"),
    ({"init": "merge", "init_merge_params": {"density": 0.2}}, "init_merge_params needs init_merge"),
    ({"init": "merge", "init_merge": "ties", "init_merge_params": {"density": 7}}, "init_merge_params for 'ties'"),
    ({"init": "merge", "init_merge": "regmean"}, "'regmean' is a data_driven merge"),
    ({"init": "merge", "init_merge": "iso"}, "unknown merge method 'iso'"),
    ({"steps": "pairwise", "oracle": "linear", "init_as_vertex": False}, "init_as_vertex: true"),
    ({"init_adamerging": {"steps": 5}}, "init: adamerging only"),
    ({"init": "adamerging", "init_adamerging": {"step": 5}}, "step"),
])
def test_bad_params_are_clear_errors(params, message):
    with pytest.raises(ValidationError, match=message):
        FrankWolfeParams(**params)


def test_bad_pools_are_clear_errors():
    obj = ToyObjective()
    opt = obj.optimum
    with pytest.raises(MergeError, match="at least one candidate"):
        frank_wolfe_merge(obj, obj.base, {})
    with pytest.raises(MergeError, match="candidate 't1' has no tensor 'body.bias'"):
        frank_wolfe_merge(obj, obj.base, {**opt, "t1": {"body.weight": opt["t1"]["body.weight"]}})
    with pytest.raises(MergeError, match=r"'t2': tensor 'body.bias' has shape \[5\], the base has \[4\]"):
        frank_wolfe_merge(obj, obj.base, {**opt, "t2": {**opt["t2"], "body.bias": torch.zeros(5)}})
    with pytest.raises(MergeError, match="reserved"):
        frank_wolfe_merge(obj, obj.base, {"zero": opt["t0"]})
    with pytest.raises(MergeError, match="init_tensors"):
        frank_wolfe_merge(obj, obj.base, opt, {"init": "given"})
    with pytest.raises(MergeError, match="init_tensors"):
        frank_wolfe_merge(obj, obj.base, opt, init_tensors=obj.base)


ISSUE_19_PRESETS = ["textbook", "scaled_vertices", "pairwise", "layerwise", "ties_start", "per_task",
                    "layerwise_secant"]


@pytest.mark.parametrize("preset", ISSUE_19_PRESETS)
def test_the_shipped_fw_variants_never_raise_the_objective_and_pairwise_stays_in_the_hull(preset):
    """Each issue-19 preset of configs/methods/frank_wolfe.yaml as shipped (the largest value of each searched
    key) on the overshoot toy with an irrelevant checkpoint in the pool: f never rises over 6 iterations and
    ends below f(θ_0); pairwise's recorded weights rebuild θ_K from the scaled vertices θ_base + c·τ_i."""
    spec = yaml.safe_load((CONFIGS / "methods" / "frank_wolfe.yaml").read_text())["presets"][preset]
    params = {**spec["parameters"], **{key: grid[-1] for key, grid in spec.get("search", {}).items()},
              "iterations": 6}
    obj = StrongToy(["t1"])
    pool = overshoot_pool(obj, "t1")
    result = frank_wolfe_merge(obj, obj.base, pool, params)
    assert never_rises(result) and result.final_objective < result.history[0]["objective"]
    if preset == "pairwise":
        c = params["vertex_scale"]
        vertices = {label: {n: obj.base[n] + c * (model[n] - obj.base[n]) for n in NAMES}
                    for label, model in pool.items()}
        assert_in_hull(result, {**vertices, "initial": obj.base, "zero": obj.base})


def linear_lmo(grad: dict[str, torch.Tensor], tvs: dict[str, dict[str, torch.Tensor]]) -> dict[str, str]:
    """Per layer, argmin over the task vectors of ⟨g_l, τ_jl⟩, or "zero" (the base, score 0) when none is < 0."""
    out = {}
    for n in NAMES:
        best = min(tvs, key=lambda j: dot(grad[n], tvs[j][n]))
        out[n] = best if dot(grad[n], tvs[best][n]) < 0 else "zero"
    return out


def test_per_task_selection_steps_towards_the_mean_of_each_tasks_own_lmo_vertex():
    """selection: per_task on two targets with a "blend" checkpoint θ_base + 0.7(τ_1 + τ_2) in the pool: from the
    base, each task's linear LMO on its own gradient (computed by hand) differs from the joint LMO on ∇f (which
    takes the blend), and θ_1 = θ_0 + γ((s_t1 + s_t2)/2 − θ_0) with the recorded γ. Over 8 iterations f never
    rises; where the tasks' mean direction stalls, the joint step takes over and lowers f further."""
    obj = StrongToy(["t1", "t2"])
    tvs = {t: {n: obj.optimum[t][n] - obj.base[n] for n in NAMES} for t in obj.optimum}
    tvs["blend"] = {n: 0.7 * (tvs["t1"][n] + tvs["t2"][n]) for n in NAMES}
    pool = {label: {n: obj.base[n] + tv[n] for n in NAMES} for label, tv in tvs.items()}
    grads = {}
    for task in ["t1", "t2"]:
        one = StrongToy(["t1", "t2"])
        one.tasks = [task]
        grads[task] = hand_objective_and_grad(one, obj.base)[1]
    own = {t: linear_lmo(g, tvs) for t, g in grads.items()}
    joint = linear_lmo({n: grads["t1"][n] + grads["t2"][n] for n in NAMES}, tvs)
    assert set(joint.values()) == {"blend"} and all("blend" not in c.values() for c in own.values())
    params = {"init": "base", "vertices": "task_vector", "oracle": "linear", "line_search": "golden",
              "selection": "per_task", "zero_vertex": True}
    first = frank_wolfe_merge(obj, obj.base, pool, {**params, "iterations": 1})
    h = first.history[0]
    assert h["task_choices"] == own and h["choices"] == joint and not h["fallback"] and h["gamma"] > 0
    vertex = {**pool, "zero": obj.base}
    mean = {n: (vertex[own["t1"][n]][n] + vertex[own["t2"][n]][n]) / 2 for n in NAMES}
    for n in NAMES:
        torch.testing.assert_close(first.theta[n], obj.base[n] + h["gamma"] * (mean[n] - obj.base[n]))
    longer = frank_wolfe_merge(obj, obj.base, pool, {**params, "iterations": 8})
    assert never_rises(longer)
    stalled = next(i for i, step in enumerate(longer.history) if step["fallback"])
    assert longer.final_objective < longer.history[stalled]["objective"] - 1e-3
    # the stalled iteration: the tasks' mean direction finds no γ > 0, so θ moves towards ∇f's own LMO vertices
    before = frank_wolfe_merge(obj, obj.base, pool, {**params, "iterations": stalled}).theta
    after = frank_wolfe_merge(obj, obj.base, pool, {**params, "iterations": stalled + 1})
    step = after.history[stalled]
    targets = {n: vertex[step["choices"][n]][n] for n in NAMES}
    for n in NAMES:
        torch.testing.assert_close(after.theta[n], before[n] + step["gamma"] * (targets[n] - before[n]))
    averaged = {n: sum(vertex[c[n]][n] for c in step["task_choices"].values()) / 2 for n in NAMES}
    f_before = hand_objective_and_grad(obj, before)[0]
    assert step["gamma"] > 0 and all(
        hand_objective_and_grad(obj, {n: before[n] + g * (averaged[n] - before[n]) for n in NAMES})[0] >= f_before
        for g in (0.01, 0.1, 0.5, 1.0))  # the tasks' mean direction did not descend here


def test_the_registered_methods_log_keeps_objective_gap_and_counts_and_pairwise_weights():
    """What a benchmark row's log holds for FW hard: per iteration f, the gaps, γ and the choice counts (not the
    per-layer choices), the final objective, and for pairwise steps each layer's final weights on its vertices."""
    obj = StrongToy(["t1"])
    pool = {label: InMemorySource(model, label) for label, model in overshoot_pool(obj, "t1").items()}
    params = FrankWolfeParams(oracle="linear", init="base", iterations=3, steps="pairwise", line_search="golden")
    _, log = get_method("frank_wolfe").implementation(DataDrivenInputs(obj, obj.base, pool, params, progress=False))
    first = log["history"][0]
    assert {"objective", "gap", "gap_max", "gamma", "counts"} <= set(first) and "choices" not in first
    assert log["final_objective"] <= first["objective"]
    assert set(log["weights"]) == set(NAMES) and all(sum(w.values()) == pytest.approx(1.0)
                                                     for w in log["weights"].values())
