"""The data-driven baselines on the Objective protocol: RegMean, Fisher merging, AdaMerging and greedy soups.
Each formula is checked against a hand-worked example or an independent computation (least squares, analytic
gradients), on tests/toy_objective.py and a classification variant of it defined here."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from toy_objective import ToyObjective

from merging.errors import MergeError
from merging.methods.adamerging import AdaMergingParams, adamerging
from merging.methods.fisher import FisherParams, fisher_merge, fisher_weighted_average
from merging.methods.greedy_soup import greedy_soup
from merging.methods.regmean import RegMeanParams, regmean_merge, regmean_weight
from merging.objective import functional_logits
from merging.statistics import diagonal_fisher, input_grams, split_examples


def average(candidates):
    return {n: torch.stack([c[n] for c in candidates]).mean(0) for n in candidates[0]}


class FixedInputs(ToyObjective):
    """The regression toy with the proxy inputs of each task given (rows of ``inputs[t]``, one batch)."""

    def __init__(self, inputs: list[torch.Tensor], seed: int = 0) -> None:
        super().__init__(n_tasks=len(inputs), d=inputs[0].shape[1], n=1, seed=seed)
        for task, x in zip(self.tasks, inputs):
            with torch.no_grad():
                self._data[task] = (x, self._models[task](x).squeeze(-1))
        self.batch_size = max(len(x) for x in inputs)


class Net(torch.nn.Module):
    def __init__(self, d: int, outputs: int) -> None:
        super().__init__()
        self.body = torch.nn.Linear(d, d)
        self.head = torch.nn.Linear(d, outputs, bias=False)

    def forward(self, x):
        return self.head(self.body(x))  # [b, outputs]


class ClassifierToy:
    """Tasks with a shared mergeable body (``body.weight`` [d, d], ``body.bias`` [d]) and a fixed head of
    ``outputs[t]`` classes (1 = a regression task, MSE); labels are the predictions of the task's own body
    ``optimum[t]``. One proxy and one unlabelled batch of all ``n`` examples per task."""

    def __init__(self, outputs=(3, 3), d: int = 4, n: int = 24, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tasks = [f"c{i}" for i in range(len(outputs))]
        self.base = {"body.weight": torch.randn(d, d, generator=g), "body.bias": torch.zeros(d)}
        self.optimum, self.models, self.data = {}, {}, {}
        for task, k in zip(self.tasks, outputs):
            self.optimum[task] = {"body.weight": self.base["body.weight"] + torch.randn(d, d, generator=g),
                                  "body.bias": torch.randn(d, generator=g)}
            model = Net(d, k).eval()
            with torch.no_grad():
                model.head.weight.copy_(2 * torch.randn(k, d, generator=g))
            x = torch.randn(n, d, generator=g)
            with torch.no_grad():
                out = functional_logits(model, self.optimum[task], {"x": x})  # [n, k]
            self.models[task] = model
            self.data[task] = (x, out.squeeze(-1) if k == 1 else out.argmax(-1))

    def model(self, task):
        return self.models[task]

    def batches(self, task, split):
        x, y = self.data[task]
        yield {"x": x, "labels": y} if split == "proxy" else {"x": x}

    def logits(self, task, params, batch):
        return functional_logits(self.models[task], params, {"x": batch["x"]})

    def loss(self, task, logits, batch):
        if logits.shape[-1] == 1:
            return torch.nn.functional.mse_loss(logits.squeeze(-1), batch["labels"])
        return torch.nn.functional.cross_entropy(logits, batch["labels"])


# ---- RegMean ------------------------------------------------------------------------------------------
def test_regmean_hand_example():
    # X₁ᵀX₁ = [[2,1],[1,1]], X₂ᵀX₂ = [[1,-1],[-1,2]]; α = 0.5 halves the off-diagonals:
    # G̃₁ = [[2,.5],[.5,1]], G̃₂ = [[1,-.5],[-.5,2]], Σ G̃ = 3·I
    # G̃₁W₁ᵀ = [[3,.5],[2.5,1]], G̃₂W₂ᵀ = [[.5,3],[-2,-1.5]]; W = (Σ G̃_i W_iᵀ / 3)ᵀ = [[7/6, 1/6], [7/6, -1/6]]
    objective = FixedInputs([torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, -1.0], [0.0, 1.0]])])
    candidates = [{"body.weight": torch.tensor([[1.0, 2.0], [0.0, 1.0]]), "body.bias": torch.tensor([1.0, 0.0])},
                  {"body.weight": torch.tensor([[0.0, -1.0], [3.0, 0.0]]), "body.bias": torch.tensor([0.0, 4.0])}]
    merged = regmean_merge(objective, candidates, RegMeanParams(alpha=0.5, gram="sum"))
    torch.testing.assert_close(merged["body.weight"], torch.tensor([[7 / 6, 1 / 6], [7 / 6, -1 / 6]]))
    assert merged["body.bias"].tolist() == [0.5, 2.0]  # not a linear weight: averaged


def test_regmean_with_identity_grams_is_the_average():
    torch.manual_seed(0)
    weights = [torch.randn(3, 4) for _ in range(3)]
    torch.testing.assert_close(regmean_weight(weights, [torch.eye(4)] * 3, alpha=0.7), average(
        [{"w": w} for w in weights])["w"])
    # end to end: proxy inputs 2·Q (Q orthogonal) have XᵀX = 4·I on every task
    q = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))[0]
    objective = FixedInputs([2 * q, 2 * q.flip(0), -2 * q])
    candidates = [ToyObjective(n_tasks=3, d=4, seed=s).optimum["t0"] for s in range(3)]
    for alpha in (0.0, 0.5, 1.0):
        for name, tensor in regmean_merge(objective, candidates, RegMeanParams(alpha=alpha)).items():
            torch.testing.assert_close(tensor, average(candidates)[name])


def test_regmean_of_one_model_returns_it():
    objective = ToyObjective(n_tasks=1, d=4)
    candidate = objective.optimum["t0"]
    for name, tensor in regmean_merge(objective, [candidate]).items():
        torch.testing.assert_close(tensor, candidate[name])


def test_regmean_with_alpha_one_is_the_least_squares_fit_of_every_task_output():
    # W* = argmin Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖²: the same as one least-squares problem on the stacked rows
    objective = ToyObjective(n_tasks=3, d=4, n=16)
    candidates = [objective.optimum[t] for t in objective.tasks]
    merged = regmean_merge(objective, candidates, RegMeanParams(alpha=1.0, gram="sum"))
    xs = [torch.cat([b["x"] for b in objective.batches(t, "proxy")]) for t in objective.tasks]
    x_all = torch.cat(xs).double()  # [48, 4]
    y_all = torch.cat([x.double() @ c["body.weight"].double().T for x, c in zip(xs, candidates)])  # [48, 4]
    expected = torch.linalg.lstsq(x_all, y_all).solution.T.float()  # [out, in]
    torch.testing.assert_close(merged["body.weight"], expected)
    assert not torch.allclose(merged["body.weight"], average(candidates)["body.weight"], atol=1e-2)


def test_grams_are_the_layer_inputs_and_mean_divides_by_rows():
    inputs = [torch.randn(5, 3, generator=torch.Generator().manual_seed(2)), 3 * torch.eye(3)]
    objective = FixedInputs(inputs)
    candidates = [objective.optimum[t] for t in objective.tasks]
    grams = input_grams(objective, candidates[0], "t0")
    assert grams.rows == {"body.weight": 5}
    torch.testing.assert_close(grams.gram["body.weight"], (inputs[0].T @ inputs[0]).double())
    expected = regmean_weight([c["body.weight"] for c in candidates], [x.T @ x / len(x) for x in inputs], 0.9)
    torch.testing.assert_close(regmean_merge(objective, candidates)["body.weight"], expected)


def test_regmean_ridge_pulls_towards_the_average_and_fills_dead_features():
    torch.manual_seed(0)
    weights = [torch.randn(3, 4) for _ in range(2)]
    x = [torch.randn(10, 4) for _ in range(2)]
    for xi in x:
        xi[:, 3] = 0  # input feature 3 never varies: Σ G is singular
    grams = [xi.T @ xi for xi in x]
    with pytest.raises(MergeError, match="singular"):
        regmean_weight(weights, grams)
    mean = (weights[0] + weights[1]) / 2
    tiny = regmean_weight(weights, grams, ridge=1e-9)
    torch.testing.assert_close(tiny[:, 3], mean[:, 3])  # the silent feature's column: the average
    live = [w[:, :3] for w in weights], [g[:3, :3] for g in grams]
    torch.testing.assert_close(tiny[:, :3], regmean_weight(*live), rtol=1e-5, atol=1e-6)  # the rest: RegMean
    torch.testing.assert_close(regmean_weight(weights, grams, ridge=1e9), mean)  # ρ → ∞: the average


def test_regmean_errors_name_the_problem():
    objective = ToyObjective(n_tasks=2, d=3)
    candidates = [objective.optimum[t] for t in objective.tasks]
    with pytest.raises(MergeError, match="1 candidate.*2 task"):
        regmean_merge(objective, candidates[:1])
    with pytest.raises(MergeError, match="candidate 1.*missing \\['body.bias'\\]"):
        regmean_merge(objective, [candidates[0], {"body.weight": candidates[1]["body.weight"]}])
    with pytest.raises(MergeError, match="no nn.Linear"):
        regmean_merge(objective, [{"body.bias": c["body.bias"]} for c in candidates])
    with pytest.raises(MergeError, match="singular"):
        regmean_weight([torch.ones(2, 2)], [torch.zeros(2, 2)], name="layer.weight")
    with pytest.raises(ValidationError):
        RegMeanParams(alpha=1.5)
    with pytest.raises(ValidationError):
        RegMeanParams(beta=0.5)


class SamePadConv(torch.nn.Conv2d):
    """Pads inside ``forward`` (TensorFlow "SAME": the extra row and column after), like EfficientNet's
    ``Conv2dDynamicSamePadding``: a forward hook sees the unpadded input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(x, [0, 1, 0, 1])
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class DoubledConv(torch.nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, 2 * self.weight, self.bias, self.stride, self.padding)


class ConvNet(torch.nn.Module):
    """A padded convolution, a strided depthwise one and a SAME-padded strided one, then a linear head."""

    def __init__(self, last: type[torch.nn.Conv2d] = SamePadConv) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
        self.conv3 = last(4, 2, 2, stride=2, bias=False)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.head(self.conv3(x).flatten(1))  # 5x5 -> 5x5 -> 3x3 -> 2x2


class ConvObjective:
    """Two tasks on 2-channel 5x5 pictures; candidate i's body is a random perturbation of a shared one."""

    def __init__(self, last: type[torch.nn.Conv2d] = SamePadConv) -> None:
        torch.manual_seed(0)
        self.tasks = ["t0", "t1"]
        self.net = ConvNet(last)
        base = {n: t.detach().clone() for n, t in self.net.named_parameters() if n.startswith("conv")}
        self.candidates = [{n: t + 0.3 * torch.randn_like(t) for n, t in base.items()} for _ in self.tasks]
        self.inputs = {t: torch.randn(6, 2, 5, 5) for t in self.tasks}

    def model(self, task: str) -> torch.nn.Module:
        return self.net

    def batches(self, task: str, split: str):
        yield {"x": self.inputs[task]}

    def logits(self, task: str, params, batch) -> torch.Tensor:
        return functional_logits(self.net, params, batch)


def test_regmean_on_convolutions_is_the_least_squares_fit_of_every_task_output():
    # Each layer, with α = 1: W* = argmin Σ_i ‖conv(X_i; W) − conv(X_i; W_i)‖², X_i its input under candidate i.
    # Expected value computed without patches: the Jacobian of the module's own forward in W (conv is linear in W).
    objective = ConvObjective()
    merged = regmean_merge(objective, objective.candidates, RegMeanParams(alpha=1.0, gram="sum"))
    for layer in ("conv1", "conv2", "conv3"):
        module, name = getattr(objective.net, layer), f"{layer}.weight"
        design, targets = [], []
        for task, candidate in zip(objective.tasks, objective.candidates):
            seen = []
            handle = module.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
            objective.logits(task, candidate, {"x": objective.inputs[task]})
            handle.remove()

            def conv(weight: torch.Tensor, x=seen[0]) -> torch.Tensor:
                return torch.func.functional_call(module, {"weight": weight}, (x,)) - (
                    0 if module.bias is None else module.bias[:, None, None])

            jacobian = torch.autograd.functional.jacobian(conv, candidate[name]).reshape(-1, module.weight.numel())
            design.append(jacobian.double())
            targets.append(jacobian.double() @ candidate[name].double().flatten())
        expected = torch.linalg.lstsq(torch.cat(design), torch.cat(targets)).solution.reshape(module.weight.shape)
        torch.testing.assert_close(merged[name], expected.float(), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(merged[name], average(objective.candidates)[name], atol=1e-3)
    torch.testing.assert_close(merged["conv2.bias"], average(objective.candidates)["conv2.bias"])


def test_regmean_convolution_grams_and_errors():
    objective = ConvObjective()
    grams = input_grams(objective, objective.candidates[0], "t0")
    assert grams.gram["conv1.weight"].shape == (1, 18, 18)  # 2 channels · 3 · 3
    assert grams.gram["conv2.weight"].shape == (4, 9, 9)  # depthwise: one 3x3 system per channel
    assert grams.rows == {"conv1.weight": 6 * 25, "conv2.weight": 6 * 9, "conv3.weight": 6 * 4}
    identity = [torch.eye(9).expand(4, 9, 9)] * 2  # identity Grams: every group is the plain average
    weights = [c["conv2.weight"] for c in objective.candidates]
    torch.testing.assert_close(regmean_weight(weights, identity), (weights[0] + weights[1]) / 2)
    with pytest.raises(MergeError, match="does not fit"):
        regmean_weight(weights, [torch.eye(8).expand(4, 8, 8)] * 2, name="conv2.weight")
    with pytest.raises(MergeError, match="conv3.weight.*not a zero-padded convolution"):
        input_grams(ConvObjective(DoubledConv), objective.candidates[0], "t0")


# ---- Fisher merging -----------------------------------------------------------------------------------
def test_fisher_with_equal_fishers_is_the_average():
    torch.manual_seed(0)
    candidates = [{"w": torch.randn(3, 2), "b": torch.randn(2)} for _ in range(3)]
    fisher = {"w": torch.rand(3, 2), "b": torch.rand(2)}
    for name, tensor in fisher_weighted_average(candidates, [fisher] * 3).items():
        torch.testing.assert_close(tensor, average(candidates)[name])


def test_fisher_hand_example_and_zero_fisher_fallback():
    candidates = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}]
    fishers = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 0.0])}]
    # (1·1 + 3·3)/(1 + 3) = 2.5; where every F_i = 0: the average (2 + 6)/2
    torch.testing.assert_close(fisher_weighted_average(candidates, fishers)["w"], torch.tensor([2.5, 4.0]))
    weighted = fisher_weighted_average(candidates, fishers, FisherParams(weights=[3.0, 1.0]))
    torch.testing.assert_close(weighted["w"], torch.tensor([2.0, 3.0]))  # (3·1 + 3·3)/6, (3·2 + 6)/4
    normalised = fisher_weighted_average(candidates, [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor(
        [30.0, 0.0])}], FisherParams(normalize=True))
    torch.testing.assert_close(normalised["w"], torch.tensor([2.0, 4.0]))  # F/‖F‖ = 1 for both


def test_empirical_and_expected_fisher_match_the_analytic_gradients():
    # logits = H(Wx + b): ∂ log p_c/∂b = Hᵀ(e_c − p) =: g_c, ∂ log p_c/∂W = g_c xᵀ
    objective = ClassifierToy()
    params = objective.optimum["c1"]
    x, y = objective.data["c0"]
    head = objective.model("c0").head.weight  # [C, d]
    with torch.no_grad():
        p = torch.softmax(objective.logits("c0", params, {"x": x}), -1)  # [n, C]
    eye = torch.eye(p.shape[1])
    g = torch.einsum("cd,nkc->nkd", head, eye - p[:, None, :]).detach()  # [n, C (label k), d]
    expected_w = lambda gk: (gk[:, :, None] * x[:, None, :]).square()  # noqa: E731  [n, d, d]
    g_true = g[torch.arange(len(y)), y]  # [n, d]
    empirical = diagonal_fisher(objective, params, "c0", kind="empirical")
    torch.testing.assert_close(empirical["body.bias"], g_true.square().mean(0))
    torch.testing.assert_close(empirical["body.weight"], expected_w(g_true).mean(0))
    expected = diagonal_fisher(objective, params, "c0", kind="expected")
    torch.testing.assert_close(expected["body.bias"], torch.einsum("nk,nkd->d", p, g.square()) / len(x))
    exact_w = sum(p[:, k, None, None] * expected_w(g[:, k]) for k in range(p.shape[1])).mean(0)
    torch.testing.assert_close(expected["body.weight"], exact_w)


def test_regression_fisher_is_the_squared_loss_gradient():
    objective = ToyObjective(n_tasks=2, d=3, n=8)
    x, y = (torch.cat(v) for v in zip(*[(b["x"], b["labels"]) for b in objective.batches("t0", "proxy")]))
    h = objective.model("t0").head.weight[0].detach()  # [d]
    residual = x @ objective.base["body.weight"].T @ h - y  # [n]: ℓ_j = r_j², ∂ℓ_j/∂b = 2 r_j h
    fisher = diagonal_fisher(objective, objective.base, "t0")
    torch.testing.assert_close(fisher["body.bias"], (2 * residual[:, None] * h).square().mean(0))
    grad_w = 2 * residual[:, None, None] * h[None, :, None] * x[:, None, :]  # [n, d, d]
    torch.testing.assert_close(fisher["body.weight"], grad_w.square().mean(0))
    # each fine-tuned body fits its own task exactly: F_i = 0 up to float rounding everywhere, so the merge is the
    # average up to the weights that rounding leaves (2e-4 on one element on some CPUs)
    candidates = [objective.optimum[t] for t in objective.tasks]
    for name, tensor in fisher_merge(objective, candidates).items():
        torch.testing.assert_close(tensor, average(candidates)[name], atol=1e-3, rtol=1e-3)


def test_fisher_merge_favours_the_candidate_that_is_certain():
    objective = ClassifierToy()
    candidates = [objective.optimum[t] for t in objective.tasks]
    fishers = [diagonal_fisher(objective, c, t) for c, t in zip(candidates, objective.tasks)]
    merged = fisher_merge(objective, candidates)
    torch.testing.assert_close(merged, fisher_weighted_average(candidates, fishers))
    w = [c["body.bias"] for c in candidates]
    share = (merged["body.bias"] - w[1]) / (w[0] - w[1])  # weight of candidate 0, element by element
    torch.testing.assert_close(share, fishers[0]["body.bias"] / (fishers[0]["body.bias"] + fishers[1]["body.bias"]))


def test_split_examples_slices_per_example_values_only():
    batch = {"x": torch.arange(6).reshape(3, 2), "labels": torch.tensor([0, 1, 0]), "ids": ["a", "b", "c"],
             "scale": torch.tensor(2.0)}
    parts = split_examples(batch)
    assert len(parts) == 3 and parts[1]["x"].tolist() == [[2, 3]] and parts[2]["ids"] == ["c"]
    assert parts[0]["labels"].tolist() == [0] and parts[0]["scale"] is batch["scale"]


# ---- AdaMerging ---------------------------------------------------------------------------------------
def test_adamerging_lowers_the_entropy_and_keeps_lambda_in_the_unit_interval():
    objective = ClassifierToy()
    candidates = [objective.optimum[t] for t in objective.tasks]
    for granularity, shape in (("task", (2,)), ("layer", (2, 2))):
        merged, history = adamerging(objective, objective.base, candidates,
                                     AdaMergingParams(granularity=granularity, steps=40, lr=0.02))
        assert len(history.entropy) == 41 and tuple(history.lambdas.shape) == shape
        assert history.entropy[-1] < history.entropy[0] - 0.01
        assert bool(((history.lambdas >= 0) & (history.lambdas <= 1)).all())
        lam = history.lambdas if granularity == "layer" else history.lambdas[:, None].expand(2, 2)
        for col, name in enumerate(history.names):  # θ = θ_base + Σ_i λ_{i,l} τ_{i,l}
            expected = objective.base[name] + sum(lam[i, col] * (c[name] - objective.base[name])
                                                  for i, c in enumerate(candidates))
            torch.testing.assert_close(merged[name], expected)


def test_adamerging_objective_is_the_summed_mean_entropy_at_init():
    objective = ClassifierToy()
    candidates = [objective.optimum[t] for t in objective.tasks]
    merged, history = adamerging(objective, objective.base, candidates, AdaMergingParams(steps=0))
    ta = {n: objective.base[n] + 0.3 * sum(c[n] - objective.base[n] for c in candidates) for n in merged}
    for name in merged:
        torch.testing.assert_close(merged[name], ta[name])
    total = 0.0
    for task in objective.tasks:
        with torch.no_grad():
            p = torch.softmax(objective.logits(task, ta, {"x": objective.data[task][0]}), -1)  # [n, C]
        total += float(-(p * p.log()).sum(-1).mean())
    assert history.entropy == pytest.approx([total], rel=1e-5)


def test_adamerging_clamps_after_every_step():
    objective = ClassifierToy()
    candidates = [objective.optimum[t] for t in objective.tasks]
    _, history = adamerging(objective, objective.base, candidates,
                            AdaMergingParams(granularity="layer", steps=6, lr=0.5))
    assert bool(((history.lambdas >= 0) & (history.lambdas <= 1)).all())
    assert bool(((history.lambdas == 0) | (history.lambdas == 1)).any())  # the clamp was active


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_the_simplex_option_keeps_every_tensors_coefficients_in_the_candidates_hull(granularity):
    objective = ClassifierToy()
    candidates = [objective.optimum[t] for t in objective.tasks]
    params = dict(granularity=granularity, init=0.6, steps=6, lr=0.5, clamp=False)
    _, free = adamerging(objective, objective.base, candidates, AdaMergingParams(**params))
    merged, history = adamerging(objective, objective.base, candidates, AdaMergingParams(**params, simplex=True))
    columns = history.lambdas if granularity == "layer" else history.lambdas[:, None]  # [n, L]
    assert bool((columns >= 0).all()) and bool((columns.sum(0) <= 1 + 1e-6).all())
    free_columns = free.lambdas if granularity == "layer" else free.lambdas[:, None]
    assert bool((free_columns < 0).any() | (free_columns.sum(0) > 1).any())  # unconstrained, the run leaves it
    # λ^(0) = 0.6 per candidate sums to 1.2: projected before the first step (H measured at a feasible λ)
    start, first = adamerging(objective, objective.base, candidates, AdaMergingParams(**{**params, "steps": 0},
                                                                                     simplex=True))
    n = len(candidates)
    torch.testing.assert_close(first.lambdas, torch.full_like(first.lambdas, 1 / n))
    for name in merged:
        torch.testing.assert_close(start[name], sum(c[name] for c in candidates) / n)


def test_adamerging_skips_regression_tasks():
    objective = ClassifierToy(outputs=(3, 1))
    candidates = [objective.optimum[t] for t in objective.tasks]
    _, history = adamerging(objective, objective.base, candidates, AdaMergingParams(steps=2))
    assert history.skipped == ["c1"] and all(set(terms) == {"c0"} for terms in history.per_task)
    regression = ToyObjective(n_tasks=2, d=3)
    with pytest.raises(MergeError, match="regression"):
        adamerging(regression, regression.base, [regression.optimum[t] for t in regression.tasks])
    with pytest.raises(ValidationError):
        AdaMergingParams(init=1.5)


class RecordingToy(ClassifierToy):
    """ClassifierToy that keeps the inputs of every logits call, per task."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}

    def logits(self, task, params, batch):
        self.seen[task].append(batch["x"])
        return super().logits(task, params, batch)


def rows_of(batch_x: torch.Tensor, x: torch.Tensor) -> list[int]:
    """Indices in ``x`` of the rows of ``batch_x``."""
    return [int((x == row).all(-1).nonzero()[0]) for row in batch_x]


def test_shuffled_entropy_batches_visit_every_test_row_once_a_pass_in_a_new_order():
    # 24 test rows, pieces of ≤ 5: 5 steps a pass (5, 5, 5, 5, 4 rows); 10 steps + the final measurement
    objective = RecordingToy()
    candidates = [objective.optimum[t] for t in objective.tasks]
    params = AdaMergingParams(steps=10, entropy_batches="shuffled", batch_size=5, seed=3)
    adamerging(objective, objective.base, candidates, params)
    x = objective.data["c0"][0]
    steps = [rows_of(b, x) for b in objective.seen["c0"]]
    assert len(steps) == 11 and max(map(len, steps)) == 5
    first, second = steps[:5], steps[5:10]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(24))
    assert first != second  # a new order every pass
    again = RecordingToy()
    adamerging(again, again.base, candidates, params)
    assert [rows_of(b, x) for b in again.seen["c0"]] == steps  # the seed fixes the order
    cycled = RecordingToy()
    adamerging(cycled, cycled.base, candidates, AdaMergingParams(steps=2))
    assert all(rows_of(b, x) == list(range(24)) for b in cycled.seen["c0"])  # default: the objective's batch


# ---- greedy soup --------------------------------------------------------------------------------------
def test_greedy_soup_hand_example():
    # score = −θ²: d(−0.25) first, then a (tie with b, given order first), b, c
    candidates = [{"w": torch.tensor([v])} for v in (1.0, -1.0, 5.0, 0.5)]
    result = greedy_soup(candidates, lambda p: -float(p["w"].square().sum()))
    assert result.scores == [-1.0, -1.0, -25.0, -0.25]
    # soup {d}: −0.25; +a → mean 0.75: −0.5625 (rejected); +b → −0.25: −0.0625 (kept); +c → 1.5: −2.25 (rejected)
    assert [(t.candidate, t.score, t.accepted) for t in result.trials] == [
        (0, -0.5625, False), (1, -0.0625, True), (2, -2.25, False)]
    assert result.members == [3, 1] and result.soup_score == -0.0625 and result.params["w"].tolist() == [-0.25]
    twins = greedy_soup([{"w": torch.tensor([2.0])}] * 2, lambda p: -float(p["w"].square().sum()))
    assert twins.members == [0, 1]  # an equal score is not a drop: the candidate joins


def test_greedy_soup_never_lowers_the_held_out_score():
    objective = ToyObjective(n_tasks=3, d=4)
    candidates = [objective.base] + [objective.optimum[t] for t in objective.tasks]
    calls = []

    def score(params):  # minus the mean proxy loss over every task
        calls.append(1)
        with torch.no_grad():
            return -sum(float(objective.loss(t, objective.logits(t, params, b), b))
                        for t in objective.tasks for b in objective.batches(t, "proxy"))

    result = greedy_soup(candidates, score)
    assert len(calls) == 2 * len(candidates) - 1
    assert result.soup_score >= max(result.scores) and result.members[0] == max(range(4), key=result.scores.__getitem__)
    best = max(result.scores)
    for trial in result.trials:  # a candidate joins exactly when the score does not drop
        assert trial.before == best and trial.accepted == (trial.score >= best)
        best = max(best, trial.score) if trial.accepted else best
    for name, tensor in result.params.items():
        torch.testing.assert_close(tensor, average([candidates[i] for i in result.members])[name])
    assert score(result.params) == pytest.approx(result.soup_score)
    with pytest.raises(MergeError, match="NaN|nan"):
        greedy_soup(candidates, lambda p: float("nan"))
