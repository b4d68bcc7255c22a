"""Our TIES and DARE-TIES at per-tensor scope equal ``peft.utils.merge_utils`` on the same tensors."""
import pytest
import torch
from peft.utils import merge_utils

from merging.methods.base import Chunk, chunk_seed
from merging.registry import get_method


@pytest.fixture
def tensors():
    torch.manual_seed(1)
    base = torch.randn(64, 48)
    return base, [base + torch.randn(64, 48) * s for s in (0.01, 0.02, 0.03)]


def flat(base, models):
    return base.reshape(-1), torch.stack([m.reshape(-1) for m in models])


@pytest.mark.parametrize("elect,peft_method", [("mass", "total"), ("count", "frequency")])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_ties_matches_peft(tensors, density, elect, peft_method):
    from merging.methods.base import merge_in_memory
    base, models = tensors
    cls = get_method("ties").method_class
    ours = merge_in_memory(cls(cls.Params(density=density, elect=elect), [cls.ModelParams()] * 3), base, models)
    theirs = base + merge_utils.ties([m - base for m in models], torch.ones(3), density, peft_method)
    assert torch.allclose(ours, theirs, atol=1e-7)


@pytest.mark.parametrize("elect,peft_method", [("mass", "total"), ("count", "frequency")])
def test_dare_ties_matches_peft(tensors, elect, peft_method):
    base, models = tensors
    cls = get_method("dare_ties").method_class
    method = cls(cls.Params(drop_rate=0.7, elect=elect), [cls.ModelParams()] * 3)
    b, m = flat(base, models)
    ours = method.combine(Chunk("w", tuple(base.shape), 0, b.numel(), seed=1234), b, m, {})
    torch.manual_seed(chunk_seed(1234, "w", 0))  # our one draw block's stream; peft draws model by model from it
    theirs = merge_utils.dare_ties([x - base for x in models], torch.ones(3), 0.3, peft_method)
    assert torch.allclose(ours.reshape(base.shape), base + theirs, atol=1e-6)


def test_dare_linear_matches_peft(tensors):
    base, models = tensors
    cls = get_method("dare_ta").method_class
    method = cls(cls.Params(drop_rate=0.4), [cls.ModelParams(weight=w) for w in (0.2, 0.3, 0.5)])
    b, m = flat(base, models)
    ours = method.combine(Chunk("w", tuple(base.shape), 0, b.numel(), seed=99), b, m, {})
    torch.manual_seed(chunk_seed(99, "w", 0))
    theirs = merge_utils.dare_linear([x - base for x in models], torch.tensor([0.2, 0.3, 0.5]), 0.6)
    assert torch.allclose(ours.reshape(base.shape), base + theirs, atol=1e-6)
