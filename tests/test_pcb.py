"""PCB-merging against its steps written out on whole task vectors (sorted order statistics), per tensor and
over a whole model through the streaming engine."""
import pytest
import torch
from conftest import merge_method
from safetensors.torch import load_file

from merging.config import validate_config
from merging.run import run_merge


def pcb_reference(base, models, ratio, clip, scale):
    """The official steps on flattened task vectors [n, d] (float64): clip, intra, inter, drop, rescale."""
    taus = torch.stack([(m - base).reshape(-1) for m in models]).double()
    n, d = taus.shape
    ordered = taus.abs().sort(1).values
    low, high = ordered[:, int(d * clip)], ordered[:, int(d * (1 - clip)) - 1]
    a = torch.minimum(torch.maximum(taus.abs(), low[:, None]), high[:, None])
    intra = torch.exp(n * ((a - low[:, None]) / (high - low)[:, None]) ** 2)
    balance = intra * torch.tanh(taus * taus.sum(0))
    cut = balance.sort(1).values[:, int(d * (1 - ratio))]
    top = balance.max(1).values
    scores = (torch.maximum(balance, cut[:, None]) - cut[:, None]) / (top - cut)[:, None]
    merged = (taus.sign() * a * scores).sum(0) / scores.sum(0).clamp(min=1e-12)
    return base.double().reshape(-1) + scale * merged


@pytest.mark.parametrize("chunk_size", [None, 37])
def test_pcb_equals_the_written_out_steps(tensor_pool, chunk_size):
    base, models = tensor_pool  # [16, 12], 4 models
    out = merge_method("pcb", base, models, chunk_size=chunk_size, ratio=0.2, clip=0.05, scope="tensor",
                       **{"lambda": 1.3})
    expected = pcb_reference(base, models, 0.2, 0.05, 1.3)
    torch.testing.assert_close(out.reshape(-1).double(), expected, atol=1e-6, rtol=1e-5)
    kept = (out != base).float().mean()
    assert 0.2 <= kept < 1  # every task keeps its top 20 %: at least that many entries move


def test_pcb_over_the_whole_model_takes_its_statistics_over_every_tensor(checkpoint_folders):
    root, (base, *models) = checkpoint_folders
    cfg = validate_config({"method": "pcb", "base": str(base), "models": [{"model": str(m)} for m in models],
                           "parameters": {"ratio": 0.3, "clip": 0.02}, "chunk_size": 16})
    run_merge(cfg, root / "out", overwrite=True, progress=False)
    out, b = load_file(root / "out" / "model.safetensors"), load_file(base / "model.safetensors")
    names = sorted(b)
    flat = lambda tensors: torch.cat([tensors[n].reshape(-1) for n in names])
    expected = pcb_reference(flat(b), [flat(load_file(m / "model.safetensors")) for m in models], 0.3, 0.02, 1.0)
    torch.testing.assert_close(flat(out).double(), expected, atol=1e-5, rtol=1e-4)


def test_pcb_on_sparse_task_vectors_counts_the_zeros_instead_of_collecting_them():
    """Most entries unchanged (exact zeros of τ, and of b, of both signs): every order statistic lands in a bin of
    zeros, which the histogram counts; the result still equals the written-out steps."""
    torch.manual_seed(5)
    base = torch.randn(40, 30)
    models = []
    for _ in range(3):
        model = base.clone()
        rows = torch.randperm(40)[:6]  # 15 % of the rows change
        model[rows] += 0.1 * torch.randn(6, 30)
        models.append(model)
    out = merge_method("pcb", base, models, chunk_size=64, ratio=0.1, clip=0.05, scope="tensor")
    torch.testing.assert_close(out.reshape(-1).double(), pcb_reference(base, models, 0.1, 0.05, 1.0),
                               atol=1e-6, rtol=1e-5)
