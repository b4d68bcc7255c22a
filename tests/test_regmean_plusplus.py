"""RegMean++ on a two-block toy: block 0's Gram matrices on the raw inputs, block 1's on the outputs of the merged
block 0, each solved in closed form; written out here independently of merging/methods/regmean.py."""
import pytest
import torch

from merging.errors import MergeError
from merging.methods.regmean import RegMeanParams, regmean_merge
from merging.methods.regmean_plusplus import merge_blocks, regmean_plusplus_merge
from merging.objective import functional_logits


class TwoBlocks(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(d, d), torch.nn.Linear(d, d)])
        self.head = torch.nn.Linear(d, 2, bias=False)

    def forward(self, x):
        return self.head(self.layers[1](torch.tanh(self.layers[0](x))))


class TwoBlockObjective:
    """Two tasks, one proxy batch of 16 inputs each; the mergeable tensors are the two blocks."""

    def __init__(self, d: int = 5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tasks = ["a", "b"]
        self.models = {t: TwoBlocks(d).eval() for t in self.tasks}
        self.inputs = {t: torch.randn(16, d, generator=g) * (1 + i) for i, t in enumerate(self.tasks)}
        base = {n: p.detach().clone() for n, p in self.models["a"].named_parameters() if n.startswith("layers")}
        self.candidates = [{n: v + 0.3 * torch.randn(v.shape, generator=g) for n, v in base.items()}
                           for _ in self.tasks]

    def model(self, task):
        return self.models[task]

    def batches(self, task, split):
        yield {"x": self.inputs[task]}

    def logits(self, task, params, batch):
        return functional_logits(self.models[task], params, {"x": batch["x"]})


def closed_form(weights, grams, alpha):
    """(Σ G̃_i)^{-1} Σ G̃_i W_iᵀ, transposed back: RegMean's solution written out."""
    shrunk = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in grams]
    return torch.linalg.solve(sum(shrunk), sum(s @ w.T for s, w in zip(shrunk, weights))).T


def test_regmean_plusplus_takes_block_one_grams_on_the_merged_block_zero():
    objective, alpha = TwoBlockObjective(), 0.8
    cands = objective.candidates
    xs = [objective.inputs[t].double() for t in objective.tasks]
    w0 = closed_form([c["layers.0.weight"].double() for c in cands], [x.T @ x / len(x) for x in xs], alpha)
    b0 = torch.stack([c["layers.0.bias"].double() for c in cands]).mean(0)
    hidden = [torch.tanh(x @ w0.T + b0) for x in xs]  # block 1's inputs: the merged block 0 on each task
    w1 = closed_form([c["layers.1.weight"].double() for c in cands], [h.T @ h / len(h) for h in hidden], alpha)
    merged = regmean_plusplus_merge(objective, cands, RegMeanParams(alpha=alpha))
    torch.testing.assert_close(merged["layers.0.weight"].double(), w0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged["layers.1.weight"].double(), w1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged["layers.1.bias"], torch.stack([c["layers.1.bias"] for c in cands]).mean(0))
    plain = regmean_merge(objective, cands, RegMeanParams(alpha=alpha))  # block 1 on each candidate's own block 0
    torch.testing.assert_close(plain["layers.0.weight"], merged["layers.0.weight"])
    assert not torch.allclose(plain["layers.1.weight"], merged["layers.1.weight"], atol=1e-3)


def test_blocks_follow_the_forward_order_and_group_by_layer_index():
    order = ["stem.weight", "blocks.1.conv.weight", "blocks.1.proj.weight", "blocks.0.conv.weight", "head.weight"]
    assert merge_blocks(order) == [["stem.weight"], ["blocks.1.conv.weight", "blocks.1.proj.weight"],
                                   ["blocks.0.conv.weight"], ["head.weight"]]
    assert merge_blocks(["enc.layers.0.w", "dec.layers.0.w"]) == [["enc.layers.0.w"], ["dec.layers.0.w"]]


def test_regmean_plusplus_without_layers_is_refused():
    objective = TwoBlockObjective()
    only_biases = [{"layers.0.bias": c["layers.0.bias"]} for c in objective.candidates]
    with pytest.raises(MergeError, match="no nn.Linear"):
        regmean_plusplus_merge(objective, only_biases)


class NormedBlocks(TwoBlocks):
    """TwoBlocks with a LayerNorm between the blocks in a numbered block of its own (``norms.0``, no layer)."""

    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.norms = torch.nn.ModuleList([torch.nn.LayerNorm(d)])

    def forward(self, x):
        return self.head(self.layers[1](self.norms[0](torch.tanh(self.layers[0](x)))))


def test_a_numbered_block_without_a_layer_enters_the_later_blocks_grams_merged():
    objective, alpha = TwoBlockObjective(), 0.8
    g = torch.Generator().manual_seed(1)
    objective.models = {t: NormedBlocks(5).eval() for t in objective.tasks}
    for candidate in objective.candidates:
        candidate["norms.0.weight"] = 1 + 0.5 * torch.randn(5, generator=g)
        candidate["norms.0.bias"] = 0.5 * torch.randn(5, generator=g)
    cands = objective.candidates
    xs = [objective.inputs[t].double() for t in objective.tasks]
    w0 = closed_form([c["layers.0.weight"].double() for c in cands], [x.T @ x / len(x) for x in xs], alpha)
    b0, gamma, beta = (torch.stack([c[n].double() for c in cands]).mean(0)
                       for n in ("layers.0.bias", "norms.0.weight", "norms.0.bias"))
    hidden = [torch.nn.functional.layer_norm(torch.tanh(x @ w0.T + b0), (5,), gamma, beta) for x in xs]
    w1 = closed_form([c["layers.1.weight"].double() for c in cands], [h.T @ h / len(h) for h in hidden], alpha)
    merged = regmean_plusplus_merge(objective, cands, RegMeanParams(alpha=alpha))
    torch.testing.assert_close(merged["layers.1.weight"].double(), w1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged["norms.0.weight"].double(), gamma)
