"""FW-Merging soft (merging/methods/frank_wolfe_soft.py) as a specification: per-task gradients and the cosine
oracle on full weights, distinct selections per task (whole model and per layer), layer-wise AdaMerging
around the current iterate with λ^(0) = 0.3 then the small ``ada_coeff``, entropy that does not rise within a
phase, memory bounded by the number of target tasks whatever the pool size, and clear errors."""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping

import pytest
import torch
from pydantic import ValidationError
from test_frank_wolfe import TrackingSource
from toy_objective import ToyObjective, draw

from merging.errors import MergeError
from merging.methods.adamerging import AdaMergingParams, adamerging
from merging.methods.frank_wolfe import merge_over, proxy_objective
from merging.methods.frank_wolfe_soft import FrankWolfeSoftParams, frank_wolfe_soft_merge
from merging.objective import functional_logits

NAMES = ["body.weight", "body.bias"]


class ClassModel(torch.nn.Module):
    def __init__(self, d: int, classes: int) -> None:
        super().__init__()
        self.body = torch.nn.Linear(d, d)
        self.head = torch.nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))  # [b, C]


class ClassToy:
    """``n_tasks`` classification tasks sharing a mergeable body (``body.weight`` [d, d], ``body.bias`` [d])
    with a fixed head of their own; task t's labels are the argmax of its own model (body ``optimum[t]``).
    Proxy: labelled batches of 12; unlabelled: ONE batch of every input, so the entropy is a function of λ."""

    def __init__(self, n_tasks: int = 3, d: int = 4, classes: int = 3, n: int = 24, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tasks = [f"t{i}" for i in range(n_tasks)]
        self.base = {"body.weight": torch.randn(d, d, generator=g), "body.bias": 0.1 * torch.randn(d, generator=g)}
        self.optimum = {t: {n: v + torch.randn(v.shape, generator=g) for n, v in self.base.items()}
                        for t in self.tasks}
        self._models, self._data = {}, {}
        for t in self.tasks:
            model = ClassModel(d, classes)
            with torch.no_grad():
                model.head.weight.copy_(2 * torch.randn(classes, d, generator=g))
                model.head.bias.zero_()
                model.body.weight.copy_(self.optimum[t]["body.weight"])
                model.body.bias.copy_(self.optimum[t]["body.bias"])
                x = torch.randn(n, d, generator=g)
                self._data[t] = (x, model(x).argmax(-1))  # [n, d], [n]
            self._models[t] = model.eval()
        self.drawn: list[tuple[tuple, list[int]]] = []  # (seed, rows) of every ``sample`` call

    def model(self, task: str) -> torch.nn.Module:
        return self._models[task]

    def batches(self, task: str, split: str):
        x, y = self._data[task]
        if split == "unlabelled":
            yield {"x": x}
            return
        for i in range(0, len(x), 12):
            yield {"x": x[i:i + 12], "labels": y[i:i + 12]}

    def sample(self, task: str, n: int, batch_size: int, seed):
        """``n`` labelled examples drawn without replacement by ``seed``, batched; every draw is recorded."""
        rows, batches = draw(*self._data[task], n, batch_size, seed)
        self.drawn.append((seed, rows))
        return batches

    def logits(self, task: str, params: Mapping[str, torch.Tensor], batch) -> torch.Tensor:
        return functional_logits(self._models[task], params, {"x": batch["x"]})

    def loss(self, task: str, logits: torch.Tensor, batch) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, batch["labels"])


def hand_grads(obj: ClassToy, theta: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """∇ of each task's own mean cross-entropy over all its proxy examples, without the library."""
    out = {}
    for t in obj.tasks:
        params = {n: v.clone().requires_grad_(True) for n, v in theta.items()}
        x, y = obj._data[t]
        loss = torch.nn.functional.cross_entropy(torch.func.functional_call(obj.model(t), params, (x,)), y)
        out[t] = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    return out


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum() / (a.double().norm() * b.double().norm()))


def star_pool(obj: ClassToy) -> dict[str, dict[str, torch.Tensor]]:
    """The task optima plus "star" = −Σ_t g_t/‖g_t‖ per layer (gradients at θ_base): the best-aligned
    checkpoint of several tasks at once, so the distinctness rule decides their picks."""
    grads = hand_grads(obj, obj.base)
    star = {n: -sum(grads[t][n] / grads[t][n].norm() for t in obj.tasks) for n in NAMES}
    return {**obj.optimum, "star": star}


def greedy(order: list[str], score: dict[str, dict[str, float]]) -> dict[str, str]:
    """Task by task, the best-scoring candidate no earlier task took."""
    taken: dict[str, str] = {}
    for t in order:
        free = [c for c in score[t] if c not in taken.values()]
        taken[t] = min(free, key=lambda c: score[t][c])
    return taken


@pytest.mark.parametrize("preset, iterations, steps, coeff", [("irrelevance", 3, 100, 1e-2),
                                                               ("relevance", 2, 100, 1e-8), ("main", 5, 500, 1e-2)])
def test_the_paper_presets_are_the_research_branch_settings(preset, iterations, steps, coeff):
    from merging.benchmark.experiment import method_config

    params, grid, _ = method_config("vision", "frank_wolfe_soft", {"preset": preset})
    p = FrankWolfeSoftParams(**params)
    assert (p.iterations, p.ada_steps, p.ada_coeff, p.granularity) == (iterations, steps, coeff, "model")
    assert (p.inner_loss, p.ada_batch_size, p.proxy, p.proxy_examples, p.gradient_mode) == (
        "cross_entropy", 16, "fresh", 100, "train") and grid == {}
    assert method_config("vision", "frank_wolfe_soft", {"preset": preset, "inner_loss": "entropy"})[0][
        "inner_loss"] == "entropy"  # the command line still wins
    default = FrankWolfeSoftParams(**method_config("vision", "frank_wolfe_soft", {})[0])
    assert (default.inner_loss, default.proxy, default.gradient_mode) == ("entropy", "fixed", "eval")


def test_defaults_follow_the_official_config():
    p = FrankWolfeSoftParams()
    assert (p.iterations, p.granularity, p.ada_steps, p.ada_init, p.ada_coeff, p.ada_lr) == (
        10, "model", 500, 0.3, 1e-8, 1e-3)


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_selections_are_distinct_and_follow_the_per_task_cosine_oracle(granularity):
    obj = ClassToy(seed=1)
    pool = star_pool(obj)
    result = frank_wolfe_soft_merge(obj, obj.base, pool, {"iterations": 1, "ada_steps": 0,
                                                          "granularity": granularity})
    h = result.history[0]
    grads = hand_grads(obj, obj.base)  # θ_0 = θ_base; g_t from task t's loss alone
    layer_cos = {t: {c: {n: cos(grads[t][n], pool[c][n]) for n in NAMES} for c in pool} for t in obj.tasks}
    if granularity == "model":  # one checkpoint per task by the summed layer cosines, on full weights
        score = {t: {c: sum(layer_cos[t][c].values()) for c in pool} for t in obj.tasks}
        expected = greedy(obj.tasks, score)
        unconstrained = [min(score[t], key=score[t].get) for t in obj.tasks]
        assert h["selections"] == expected
        assert len(set(expected.values())) == len(obj.tasks)
        assert h["scores"] == pytest.approx({t: score[t][expected[t]] for t in obj.tasks})
    else:  # per layer, distinct within each layer
        unconstrained = []
        for n in NAMES:
            score = {t: {c: layer_cos[t][c][n] for c in pool} for t in obj.tasks}
            expected = greedy(obj.tasks, score)
            assert {t: h["selections"][t][n] for t in obj.tasks} == expected
            assert len(set(expected.values())) == len(obj.tasks)
            unconstrained += [min(score[t], key=score[t].get) for t in obj.tasks]
    assert len(set(unconstrained)) < len(unconstrained)  # the toy makes tasks collide: distinctness mattered
    with torch.no_grad():
        total = sum(torch.nn.functional.cross_entropy(obj.logits(t, obj.base, {"x": obj._data[t][0]}),
                                                      obj._data[t][1]) for t in obj.tasks)
    assert h["objective"] == pytest.approx(float(total), rel=1e-5)


def test_the_linear_oracle_picks_the_steepest_checkpoint_where_the_cosine_picks_the_best_aligned():
    # per layer, "near" = θ_base − ĝ and "far" = θ_base − 2ĝ + 50·v (v ⊥ g, unit): ⟨g, far⟩ is lower (it goes
    # twice as far down the gradient), but its large norm makes its cosine with g close to 0
    obj = ClassToy(n_tasks=1, seed=3)
    g = hand_grads(obj, obj.base)["t0"]
    pool: dict[str, dict[str, torch.Tensor]] = {"near": {}, "far": {}}
    for n in NAMES:
        unit = g[n] / g[n].norm()
        v = torch.randn(g[n].shape, generator=torch.Generator().manual_seed(0))
        v = v - (v * unit).sum() * unit
        pool["near"][n] = obj.base[n] - unit
        pool["far"][n] = obj.base[n] - 2 * unit + 50 * v / v.norm()
    picked = {}
    for oracle in ("cosine", "linear"):
        h = frank_wolfe_soft_merge(obj, obj.base, pool, {"iterations": 1, "ada_steps": 0, "oracle": oracle}
                                   ).history[0]
        picked[oracle] = h["selections"]["t0"]
    assert picked == {"cosine": "near", "linear": "far"}
    assert h["scores"]["t0"] == pytest.approx(sum(float((g[n] * pool["far"][n]).sum()) for n in NAMES), rel=1e-5)


def test_first_phase_starts_at_0_3_later_ones_at_ada_coeff_around_the_current_iterate():
    obj = ClassToy(seed=2)
    pool = {**obj.optimum, "extra": {n: v + 0.5 for n, v in obj.optimum["t0"].items()}}
    result = frank_wolfe_soft_merge(obj, obj.base, pool, {"iterations": 3, "ada_steps": 0, "ada_coeff": 0.01})
    assert [h["ada_init"] for h in result.history] == [0.3, 0.01, 0.01]
    for h in result.history:  # no Adam step: λ stays at its initial value, one per (selected model, layer)
        assert h["lambdas"] == {n: [pytest.approx(h["ada_init"])] * 3 for n in NAMES}
        assert h["entropy_before"] == h["entropy_after"]
    # replay: θ_{k+1} = θ_k + λ^(0) Σ_t (θ_{s_t} − θ_k), task vectors relative to θ_k (not to θ_base)
    theta = dict(obj.base)
    for h in result.history:
        picks = list(h["selections"].values())
        theta = {n: theta[n] + h["ada_init"] * sum(pool[c][n] - theta[n] for c in picks) for n in NAMES}
    for n in NAMES:
        torch.testing.assert_close(result.theta[n], theta[n])
    assert result.history[1]["objective"] == pytest.approx(
        frank_wolfe_soft_merge(obj, obj.base, pool, {"iterations": 1, "ada_steps": 0}).final_objective, rel=1e-6)


def test_adamerging_phase_does_not_raise_the_entropy_and_gives_the_next_iterate():
    obj = ClassToy(seed=3)
    result = frank_wolfe_soft_merge(obj, obj.base, obj.optimum, {"iterations": 2, "ada_steps": 40, "ada_coeff": 0.01})
    theta = dict(obj.base)
    for h in result.history:
        trace = h["entropy"]
        assert len(trace) == 41 and trace[0] == h["entropy_before"] and trace[-1] == h["entropy_after"]
        assert all(b <= a + 1e-7 for a, b in zip(trace, trace[1:]))
        assert h["entropy_after"] < h["entropy_before"] - 1e-4
        assert any(abs(v - h["ada_init"]) > 1e-3 for lams in h["lambdas"].values() for v in lams)  # λ moved
        picks = list(h["selections"].values())  # θ_{k+1} = θ_k + Σ_t λ_t,l (θ_{s_t},l − θ_k,l)
        theta = {n: theta[n] + sum(lam * (obj.optimum[c][n] - theta[n]) for lam, c in zip(h["lambdas"][n], picks))
                 for n in NAMES}
    for n in NAMES:
        torch.testing.assert_close(result.theta[n], theta[n])


def test_memory_is_the_selected_checkpoints_whatever_the_pool_size():
    obj = ClassToy()
    peaks = {}
    for size in (4, 16):
        g = torch.Generator().manual_seed(size)
        alive, stats = weakref.WeakSet(), {"reads": 0, "peak": 0}
        pool = {f"c{i}": TrackingSource({n: obj.optimum[obj.tasks[i % 3]][n] + 0.1 * torch.randn(
            obj.base[n].shape, generator=g) for n in NAMES}, alive, stats) for i in range(size)}
        result = frank_wolfe_soft_merge(obj, obj.base, pool, {"iterations": 2, "ada_steps": 2})
        assert len(alive) == 0
        # each iteration: the oracle reads every candidate tensor once, AdaMerging the 3 selected ones
        assert stats["reads"] == 2 * (size * len(NAMES) + 3 * len(NAMES))
        assert all(len(set(h["selections"].values())) == 3 for h in result.history)
        peaks[size] = stats["peak"]
    assert peaks == {4: 3 * len(NAMES), 16: 3 * len(NAMES)}  # the 3 selected checkpoints, never the pool


def test_a_pool_smaller_than_the_tasks_selects_each_checkpoint_once():
    obj = ClassToy()
    pool = {"a": obj.optimum["t1"], "b": obj.optimum["t2"]}
    h = frank_wolfe_soft_merge(obj, obj.base, pool, {"iterations": 1, "ada_steps": 1}).history[0]
    assert sorted(h["selections"][t] for t in ("t0", "t1")) == ["a", "b"] and h["selections"]["t2"] is None
    assert all(len(v) == 2 for v in h["lambdas"].values())


@pytest.mark.parametrize(("params", "message"), [
    ({"max_iters": 5}, "max_iters"),
    ({"iterations": 0}, "iterations"),
    ({"ada_steps": -1}, "ada_steps"),
    ({"ada_coeff": -1e-3}, "ada_coeff"),
    ({"ada_init": 1.5}, "ada_init"),
    ({"ada_lr": 0}, "ada_lr"),
    ({"granularity": "task"}, "granularity"),
])
def test_bad_params_are_clear_errors(params, message):
    with pytest.raises(ValidationError, match=message):
        FrankWolfeSoftParams(**params)


def test_bad_pools_and_objectives_are_clear_errors():
    obj = ClassToy()
    opt = obj.optimum
    with pytest.raises(MergeError, match="at least one candidate"):
        frank_wolfe_soft_merge(obj, obj.base, {})
    with pytest.raises(MergeError, match=r"'t2': tensor 'body.bias' has shape \[5\], the base has \[4\]"):
        frank_wolfe_soft_merge(obj, obj.base, {**opt, "t2": {**opt["t2"], "body.bias": torch.zeros(5)}})
    regression = ToyObjective()  # one output per task: no entropy to minimise
    with pytest.raises(MergeError, match="regression"):
        frank_wolfe_soft_merge(regression, regression.base, regression.optimum, {"iterations": 1, "ada_steps": 1})


# --- the options the paper's runs used (hmarkc/fusion_bench, branch master) -----------------------------------

def test_the_cross_entropy_inner_loss_lowers_the_labelled_loss():
    obj = ClassToy()
    candidates = [obj.optimum[t] for t in obj.tasks]

    def labelled(theta):
        return proxy_objective(obj, theta, grad=False)[0]

    start, _ = adamerging(obj, obj.base, candidates, AdaMergingParams(granularity="layer", steps=0))
    merged, history = adamerging(obj, obj.base, candidates, AdaMergingParams(
        granularity="layer", steps=60, lr=0.05, loss="cross_entropy", batch_size=8))
    assert history.loss == "cross_entropy" and len(history.entropy) == 61
    assert labelled(merged) < labelled(start) - 0.05  # the labelled loss on the proxy split fell
    assert len(obj.drawn) == 61 * len(obj.tasks) and all(len(rows) == 8 for _, rows in obj.drawn)


def test_fw_soft_with_the_cross_entropy_inner_loss_trains_on_fresh_labelled_batches():
    obj = ClassToy()
    result = frank_wolfe_soft_merge(obj, obj.base, obj.optimum, {
        "iterations": 2, "ada_steps": 20, "ada_lr": 0.05, "inner_loss": "cross_entropy", "ada_batch_size": 8})
    for h in result.history:
        assert h["inner_loss"] == "cross_entropy" and h["entropy_after"] < h["entropy_before"]
    assert len({tuple(rows) for _, rows in obj.drawn}) > len(obj.tasks)  # draws change from step to step


def test_fresh_proxies_change_the_oracles_batches_between_iterations():
    obj = ClassToy(n=48)
    frank_wolfe_soft_merge(obj, obj.base, obj.optimum, {"iterations": 3, "ada_steps": 0, "proxy": "fresh",
                                                        "proxy_examples": 12})
    proxy = {seed[2:]: rows for seed, rows in obj.drawn if seed[1] == "proxy"}  # (iteration, task) -> rows
    assert sorted(proxy) == sorted((k, t) for k in range(3) for t in obj.tasks)
    for t in obj.tasks:
        assert len({tuple(proxy[(k, t)]) for k in range(3)}) == 3 and all(len(proxy[(k, t)]) == 12 for k in range(3))
    fixed = ClassToy(n=48)
    frank_wolfe_soft_merge(fixed, fixed.base, fixed.optimum, {"iterations": 3, "ada_steps": 0})
    assert fixed.drawn == []  # the default keeps the proxy split


class UnlabelledRecordingToy(ClassToy):
    """ClassToy that keeps every unlabelled batch its task models see."""

    def __init__(self) -> None:
        super().__init__()
        self.unlabelled: list[torch.Tensor] = []

    def logits(self, task: str, params: Mapping[str, torch.Tensor], batch) -> torch.Tensor:
        if "labels" not in batch:
            self.unlabelled.append(batch["x"])
        return super().logits(task, params, batch)


def test_shuffled_entropy_batches_reach_the_inner_adamerging_in_pieces_of_ada_batch_size():
    obj = UnlabelledRecordingToy()
    frank_wolfe_soft_merge(obj, obj.base, obj.optimum, {"iterations": 2, "ada_steps": 4, "ada_batch_size": 6,
                                                        "ada_entropy_batches": "shuffled"})
    assert len(obj.unlabelled) == 2 * 5 * len(obj.tasks) and {len(x) for x in obj.unlabelled} == {6}
    default = UnlabelledRecordingToy()
    frank_wolfe_soft_merge(default, default.base, default.optimum, {"iterations": 2, "ada_steps": 4})
    assert {len(x) for x in default.unlabelled} == {24}  # the objective's batch, whole


class LayerAfterBodyToy(ClassToy):
    """ClassToy whose task models pass the body's outputs through one more layer (``layer()``: dropout, BatchNorm
    …); the body's tensors are named body.0.*."""

    def __init__(self, layer: Callable[[], torch.nn.Module]) -> None:
        super().__init__()
        for model in self._models.values():
            model.body = torch.nn.Sequential(torch.nn.Linear(4, 4), layer())
            model.body[0].load_state_dict({"weight": self.base["body.weight"], "bias": self.base["body.bias"]})
            model.eval()
        self.base = {f"body.0.{n.split('.')[1]}": v for n, v in self.base.items()}
        self.optimum = {t: {f"body.0.{n.split('.')[1]}": v for n, v in o.items()} for t, o in self.optimum.items()}


def DropoutToy() -> LayerAfterBodyToy:
    """Task models that drop half of the body's outputs in train mode."""
    return LayerAfterBodyToy(lambda: torch.nn.Dropout(0.5))


def BatchNormToy() -> LayerAfterBodyToy:
    """Task models that normalise the body's outputs by BatchNorm (running statistics: buffers)."""
    return LayerAfterBodyToy(lambda: torch.nn.BatchNorm1d(4))


def test_train_mode_gradients_use_dropout_and_leave_the_models_in_eval_mode():
    runs = {}
    for mode in ("eval", "train", "train"):
        obj = DropoutToy()
        result = frank_wolfe_soft_merge(obj, obj.base, obj.optimum, {"iterations": 1, "ada_steps": 0,
                                                                     "gradient_mode": mode})
        assert not any(obj.model(t).training for t in obj.tasks)
        runs.setdefault(mode, []).append(result.history[0]["grad_norms"])
    assert runs["train"][0] == runs["train"][1]  # seeded dropout: the same gradients twice
    assert runs["train"][0] != runs["eval"][0]


def test_train_mode_gradients_leave_the_running_statistics_the_evaluation_uses():
    runs = {}
    for mode in ("eval", "train"):
        obj = BatchNormToy()
        before = {t: {n: b.clone() for n, b in obj.model(t).named_buffers()} for t in obj.tasks}
        result = frank_wolfe_soft_merge(obj, obj.base, obj.optimum, {"iterations": 2, "ada_steps": 3,
                                                                     "gradient_mode": mode})
        for t in obj.tasks:  # train-mode BatchNorm updates its buffers in place: they are put back
            for n, b in obj.model(t).named_buffers():
                assert torch.equal(b, before[t][n]), (mode, t, n)
        runs[mode] = result.history[0]["grad_norms"]
    assert runs["train"] != runs["eval"]  # the gradients did see batch statistics


# --- beyond the paper: a Frank-Wolfe method whose iterates stay in the hull and whose objective never rises ----

def hull_weights(result, pool: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, dict[str, float]]]:
    """Replay of the history: per iterate θ_k and layer l, the weights α of θ_k,l = α_base θ_base,l + Σ_j α_j θ_j,l
    (θ_{k+1} = θ_k + β Σ_t λ_t,l (θ_{s_t} − θ_k), β = ``step_scale`` or 1)."""
    alpha = {n: {"base": 1.0, **{label: 0.0 for label in pool}} for n in NAMES}
    out = [alpha]
    for h in result.history:
        beta, picks = h.get("step_scale", 1.0), list(h["selections"].values())
        step = {n: [beta * lam for lam in h["lambdas"][n]] for n in NAMES}
        alpha = {n: {v: (1 - sum(step[n])) * w + sum(s for s, c in zip(step[n], picks) if c == v)
                     for v, w in alpha[n].items()} for n in NAMES}
        out.append(alpha)
    return out


FEASIBLE = {"iterations": 3, "ada_steps": 30, "ada_lr": 0.2, "ada_init": 0.0, "ada_coeff": 0.0,
            "inner_loss": "cross_entropy", "ada_batch_size": 8, "oracle": "linear"}


@pytest.mark.parametrize(("vertex_scale", "c"), [(1.0, 1.0), ("tasks", 3.0), (2.5, 2.5)])
def test_simplex_and_monotone_keep_the_iterates_in_the_hull_and_never_raise_the_objective(vertex_scale, c):
    obj = ClassToy(seed=4)
    pool = {**obj.optimum, "far": {n: v + 3 * torch.randn_like(v) for n, v in obj.base.items()}}
    vertices = {j: {n: obj.base[n] + c * (pool[j][n] - obj.base[n]) for n in NAMES} for j in pool}  # θ_base + c·τ_j
    params = {**FEASIBLE, "vertex_scale": vertex_scale}
    free = frank_wolfe_soft_merge(obj, obj.base, pool, params)
    assert any(w < -1e-3 for a in hull_weights(free, pool) for n in NAMES for w in a[n].values())  # it leaves
    result = frank_wolfe_soft_merge(obj, obj.base, pool, {**params, "ada_simplex": True, "monotone": True})
    weights = hull_weights(result, pool)
    for alpha in weights:  # every iterate a convex combination of θ_base and the vertices, layer by layer
        for n in NAMES:
            assert min(alpha[n].values()) >= -1e-6 and sum(alpha[n].values()) == pytest.approx(1.0, abs=1e-6)
    for n in NAMES:
        torch.testing.assert_close(result.theta[n], sum(w * (obj.base[n] if v == "base" else vertices[v][n])
                                                        for v, w in weights[-1][n].items()), atol=1e-5, rtol=0)
    trace = [result.history[0]["proxy_before"]] + [h["proxy_after"] for h in result.history]
    assert all(b <= a for a, b in zip(trace, trace[1:]))  # f on the fixed proxy never rises
    assert all(h["proxy_before"] == pytest.approx(a) for h, a in zip(result.history, trace))
    assert result.final_objective == pytest.approx(trace[-1], rel=1e-6) and trace[-1] < trace[0]
    assert trace[0] == pytest.approx(proxy_objective(obj, obj.base, grad=False)[0])


def test_scaled_vertices_need_the_linear_oracle_and_a_positive_scale():
    with pytest.raises(ValidationError, match="needs oracle: linear"):
        FrankWolfeSoftParams(vertex_scale=2.0)
    with pytest.raises(ValidationError, match="vertex_scale must be > 0"):
        FrankWolfeSoftParams(vertex_scale=-1.0, oracle="linear")
    assert FrankWolfeSoftParams(vertex_scale=4, oracle="linear").vertex_scale == 4.0


@pytest.mark.parametrize(("backtracks", "beta"), [(0, 0.0), (2, 0.0), (3, 0.125)])
def test_monotone_halves_a_step_that_raises_the_objective_and_stays_put_when_none_helps(backtracks, beta):
    obj = ClassToy(seed=4)
    _, g = proxy_objective(obj, obj.base, grad=True)
    norm = math.sqrt(sum(float(v.square().sum()) for v in g.values()))
    far = {n: obj.base[n] - 10 * g[n] / norm for n in NAMES}  # a descent direction, overshot

    def f(theta):
        return proxy_objective(obj, theta, grad=False)[0]

    def along(beta):
        return {n: obj.base[n] + beta * (far[n] - obj.base[n]) for n in NAMES}

    assert [f(along(0.5 ** i)) <= f(obj.base) for i in range(4)] == [False, False, False, True]  # the toy's shape
    params = {"iterations": 1, "ada_steps": 0, "ada_init": 1.0, "monotone": True, "backtracks": backtracks}
    result = frank_wolfe_soft_merge(obj, obj.base, {"far": far}, params)  # λ fixed at 1: θ(λ) = far
    h = result.history[0]
    assert h["step_scale"] == beta and h["proxy_before"] == pytest.approx(f(obj.base))
    assert h["proxy_after"] == pytest.approx(f(along(beta))) and h["proxy_after"] <= h["proxy_before"]
    for n in NAMES:
        torch.testing.assert_close(result.theta[n], along(beta)[n])


def hand_proxy(obj: ClassToy, theta: dict[str, torch.Tensor]) -> float:
    """Σ_t the mean cross-entropy of task t's model at ``theta`` over its labelled examples, without the library."""
    with torch.no_grad():
        return sum(float(torch.nn.functional.cross_entropy(
            torch.func.functional_call(obj.model(t), theta, (obj._data[t][0],)), obj._data[t][1]))
            for t in obj.tasks)


def hand_iso_c(obj: ClassToy, pool: dict[str, dict[str, torch.Tensor]], lam: float) -> dict[str, torch.Tensor]:
    """ISO-C written out: the weight matrix gets λ·σ̄·U Vᵀ of Σ_i τ_i, the bias λ times the mean task vector."""
    taus = {n: [pool[j][n] - obj.base[n] for j in pool] for n in NAMES}
    u, s, vh = torch.linalg.svd(sum(taus["body.weight"]), full_matrices=False)
    return {"body.weight": obj.base["body.weight"] + lam * s.mean() * (u @ vh),
            "body.bias": obj.base["body.bias"] + lam * sum(taus["body.bias"]) / len(pool)}


def test_a_merged_start_is_the_grid_point_of_least_proxy_loss():
    obj = ClassToy(seed=4)
    grid = [0.1, 0.4, 0.8, 1.6]
    params = {"iterations": 1, "ada_steps": 0, "ada_init": 0.0, "init": "merge", "init_merge": "iso_c",
              "init_merge_search": {"lambda": grid}}  # λ = 0 in the one inner phase: θ_1 = θ_0
    result = frank_wolfe_soft_merge(obj, obj.base, obj.optimum, params)
    losses = {lam: hand_proxy(obj, hand_iso_c(obj, obj.optimum, lam)) for lam in grid}
    best = min(losses, key=losses.get)
    assert [t["lambda"] for t in result.init_log["tried"]] == grid
    assert [t["proxy"] for t in result.init_log["tried"]] == pytest.approx([losses[lam] for lam in grid], rel=1e-5)
    assert result.init_log["params"] == {"lambda": best} and len(set(losses.values())) == len(grid)
    for n in NAMES:
        torch.testing.assert_close(result.theta[n], hand_iso_c(obj, obj.optimum, best)[n], atol=1e-5, rtol=0)


def test_a_start_grid_over_the_affine_scale_costs_two_merges_per_setting_of_the_rest(monkeypatch):
    """ISO-CTS over common_fraction × λ: each common_fraction's three λ come from two merges, and each point is
    the merge made for it alone."""
    from merging.io.candidates import as_source
    from merging.methods import frank_wolfe_soft as soft

    obj = ClassToy(seed=4)
    grid = {"common_fraction": [0.5, 0.8], "lambda": [0.5, 1.0, 2.5]}
    p = FrankWolfeSoftParams(init="merge", init_merge="iso_cts", init_merge_search=grid)
    base, pool = as_source(obj.base, "base"), {t: as_source(m, t) for t, m in obj.optimum.items()}
    calls = []
    monkeypatch.setattr(soft, "merge_over", lambda method, *args: calls.append(method) or merge_over(method, *args))
    starts = list(soft.start_merges(p, NAMES, base, pool))
    assert len(calls) == 4 and [point for point, _ in starts] == p.start_grid()
    for point, theta in starts:
        alone = merge_over(p.start_method(point, len(pool)), NAMES, base, pool, p.seed)
        for n in NAMES:
            torch.testing.assert_close(theta[n], alone[n], atol=1e-5, rtol=1e-5)


def test_from_a_merged_start_the_hull_steps_never_raise_the_objective_and_improve_on_it():
    obj = ClassToy(seed=4)
    start = {"init": "merge", "init_merge": "task_arithmetic", "init_merge_params": {"lambda": 0.3}}
    result = frank_wolfe_soft_merge(obj, obj.base, obj.optimum,
                                    {**FEASIBLE, **start, "ada_simplex": True, "monotone": True})
    theta_0 = {n: obj.base[n] + 0.3 * sum(obj.optimum[t][n] - obj.base[n] for t in obj.tasks) for n in NAMES}
    trace = [result.history[0]["proxy_before"]] + [h["proxy_after"] for h in result.history]
    assert trace[0] == pytest.approx(hand_proxy(obj, theta_0), rel=1e-5) == pytest.approx(result.init_log["proxy"])
    assert all(b <= a for a, b in zip(trace, trace[1:])) and trace[-1] < trace[0]


@pytest.mark.parametrize(("params", "message"), [
    ({"init": "merge"}, "needs init_merge"),
    ({"init_merge": "iso_c"}, "read by init: merge only"),
    ({"init_merge_search": {"lambda": [1.0]}}, "read by init: merge only"),
    ({"init": "merge", "init_merge": "frank_wolfe"}, "data_driven merge"),
    ({"init": "merge", "init_merge": "iso_c", "init_merge_search": {"lambda": []}}, "list no values"),
    ({"init": "merge", "init_merge": "iso_c", "init_merge_search": {"rank": [1]}}, "init_merge_params for 'iso_c'"),
])
def test_a_bad_start_is_refused_before_any_work(params, message):
    with pytest.raises(ValidationError, match=message):
        FrankWolfeSoftParams(**params)
