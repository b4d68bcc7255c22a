"""Twin-Merging (merging/methods/twin.py): the exclusive parts, the routed body and the whole method on a toy
objective whose tasks' inputs the router can tell apart."""
from __future__ import annotations

import pytest
import torch

from merging.errors import MergeError
from merging.io.candidates import InMemorySource
from merging.methods.base import DataDrivenInputs, RoutedModel
from merging.methods.twin import TwinMergingParams, exclusive_part, twin_merging
from merging.objective import functional_logits
from tests.toy_objective import ToyObjective


def best_rank_r(matrix: torch.Tensor, r: int) -> torch.Tensor:
    """Eckart–Young without an SVD: project the rows onto the top-r eigenvectors of MᵀM."""
    _, vectors = torch.linalg.eigh(matrix.T.double() @ matrix.double())  # ascending
    top = vectors[:, -r:]
    return (matrix.double() @ top @ top.T).float()


def test_exclusive_part_keeps_the_best_rank_r_of_a_matrix_and_the_whole_difference_elsewhere():
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(6, 4, generator=g)
    part, stored = exclusive_part(matrix, 0.5)            # r = ⌊0.5 · min(6, 4)⌋ = 2
    assert torch.allclose(part, best_rank_r(matrix, 2), atol=1e-5)
    assert stored == 2 * (6 + 4)
    assert torch.equal(exclusive_part(matrix, 0.1)[0], torch.zeros(6, 4))   # r = 0: nothing is kept
    vector = torch.randn(5, generator=g)
    assert torch.equal(exclusive_part(vector, 0.1)[0], vector) and exclusive_part(vector, 0.1)[1] == 5
    kernel = torch.randn(3, 2, 2, 2, generator=g)
    assert torch.equal(exclusive_part(kernel, 0.5)[0], kernel)               # 2d: a kernel is not a matrix
    part, stored = exclusive_part(kernel, 0.7, "nd")                         # [3, 8], r = ⌊0.7 · 3⌋ = 2
    assert torch.allclose(part.reshape(3, 8), best_rank_r(kernel.reshape(3, 8), 2), atol=1e-5)
    assert stored == 2 * (3 + 8)


def test_a_routed_body_is_the_shared_body_plus_the_weighted_exclusive_parts():
    shared = {"w": torch.tensor([1.0, 2.0]), "buffer": torch.tensor([7.0])}
    exclusive = {"w": torch.tensor([[1.0, 0.0], [0.0, 4.0]])}                # [T = 2, 2]
    routed = RoutedModel(shared, exclusive, ["ta", "tb"], torch.nn.Identity(), {})
    body = routed.body(torch.tensor([0.25, 0.75]))
    assert torch.equal(body["w"], torch.tensor([1.25, 5.0]))
    assert torch.equal(body["buffer"], shared["buffer"])
    assert torch.allclose(routed.weights(torch.tensor([[0.0, 0.0]])), torch.tensor([[0.5, 0.5]]))
    rows = torch.softmax(torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), -1)
    expected = [shared["w"] + row[0] * exclusive["w"][0] + row[1] * exclusive["w"][1] for row in rows]
    for budget in (1, 16, 32, 1 << 20):          # a body is 8 bytes: one, two, four at a time, all together
        bodies = list(routed.bodies(rows, budget_bytes=budget))
        assert len(bodies) == 5
        for got, want in zip(bodies, expected):
            assert torch.allclose(got["w"], want, atol=1e-6) and got["buffer"] is shared["buffer"]


class SeparableToy(ToyObjective):
    """The toy objective with each task's inputs shifted far apart (task t around 6·e_t), and body features."""

    def __init__(self) -> None:
        super().__init__(n_tasks=3, d=4, n=96)
        for index, task in enumerate(self.tasks):
            x, _ = self._data[task]
            x = x + 6.0 * torch.eye(4)[index]
            with torch.no_grad():
                self._data[task] = (x, self._models[task](x).squeeze(-1))

    def features(self, task, params, batch):
        with torch.no_grad():
            return functional_logits(self._models[task].body, {k.removeprefix("body."): v for k, v in params.items()},
                                     {"input": batch["x"]})


def inputs(objective: ToyObjective, **params) -> DataDrivenInputs:
    candidates = {t: InMemorySource(objective.optimum[t]) for t in objective.tasks}
    return DataDrivenInputs(objective, objective.base, candidates,
                            TwinMergingParams(router_examples=64, router_epochs=60, router_batch_size=32,
                                              router_lr=1e-2, router_dropout=0.0, **params),
                            candidate_tasks=list(objective.tasks))


def test_twin_merging_routes_each_input_to_its_tasks_expert_and_recovers_its_checkpoint():
    objective = SeparableToy()
    routed = twin_merging(inputs(objective, rank_ratio=1.0))
    base, optimum = objective.base, objective.optimum
    for name in base:   # shared = task arithmetic with λ 0.29
        expected = base[name] + 0.29 * sum(optimum[t][name] - base[name] for t in objective.tasks)
        assert torch.allclose(routed.shared[name], expected, atol=1e-6)
    g = torch.Generator().manual_seed(7)
    for index, task in enumerate(objective.tasks):
        one_hot = torch.eye(3)[index]
        for name, tensor in routed.body(one_hot).items():   # full rank: the expert's part is θ_t − θ_shared
            assert torch.allclose(tensor, optimum[task][name], atol=1e-5)
        unseen = {"x": torch.randn(32, 4, generator=g) + 6.0 * torch.eye(4)[index]}   # new inputs of the task
        weights = routed.weights(objective.features(task, routed.shared, unseen))
        assert (weights.argmax(-1) == index).all()
    assert routed.log["router"]["train_accuracy"] == 1.0
    assert routed.log["exclusive_stored_fraction"] == 1.0   # factors of a full-rank 4 × 4 would be larger: kept whole


def test_twin_merging_compresses_the_exclusive_parts_and_refuses_two_experts_of_one_task():
    objective = SeparableToy()
    routed = twin_merging(inputs(objective, rank_ratio=0.25))   # r = 1 of 4
    for parts in routed.exclusive.values():
        if parts.dim() == 3:
            assert all(torch.linalg.matrix_rank(part) == 1 for part in parts)
    assert routed.log["exclusive_stored_fraction"] == pytest.approx((1 * (4 + 4) + 4) / (4 * 4 + 4))
    cut = twin_merging(inputs(objective, rank_ratio=0.1))      # r = 0: the weight keeps no exclusive part at all
    assert set(cut.exclusive) == {"body.bias"} and torch.equal(cut.body(torch.eye(3)[0])["body.weight"],
                                                               cut.shared["body.weight"])
    twice = inputs(objective)
    twice.candidate_tasks = ["t0", "t0", "t2"]
    with pytest.raises(MergeError, match=r"task\(s\) \['t0'\] have several candidates"):
        twin_merging(twice)


def test_twin_merging_parameters_are_checked_before_any_merge():
    with pytest.raises(ValueError, match="shared_params for 'task_arithmetic'"):
        TwinMergingParams(shared_params={"lamda": 0.3})
    with pytest.raises(ValueError, match="router_batch_size"):
        TwinMergingParams(router_batch_size=1)
