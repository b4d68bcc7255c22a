"""The streaming engine on small safetensors pools: model-scope statistics, chunking, parameter forms."""
import pytest
import torch
from conftest import native
from safetensors.torch import load_file

from merging.config import layer_position, validate_config
from merging.errors import MergeError
from merging.run import merge_tensors, run_merge


@pytest.fixture
def pool(checkpoint_folders):
    return checkpoint_folders


def merged(pool, method, parameters, chunk_size=1 << 20, **extra):
    root, (base, *models) = pool
    cfg = validate_config({"method": method, "base": str(base), "models": [{"model": str(m)} for m in models],
                           "parameters": parameters, "chunk_size": chunk_size, **extra})
    run_merge(cfg, root / "out", overwrite=True, progress=False)
    return load_file(root / "out" / "model.safetensors")


def load(folder):
    return load_file(folder / "model.safetensors")


def test_ties_model_scope_trims_the_top_k_of_the_whole_task_vector(pool):
    _, (base, *models) = pool
    b = load(base)
    names = sorted(b)
    tvs = [torch.cat([(load(m)[n] - b[n]).reshape(-1) for n in names]) for m in models]  # whole task vectors
    k = int(0.3 * tvs[0].numel())
    trimmed = [tv * (tv.abs() >= tv.abs().sort(descending=True).values[k - 1]) for tv in tvs]
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = stacked.sign() == sign
    expected = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
    out = merged(pool, "ties", {"density": 0.3, "scope": "model"}, chunk_size=64)
    got = torch.cat([(out[n] - b[n]).reshape(-1) for n in names])
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("method,params", [("ties", {"density": 0.2}), ("from", {"k": 2.0}),
                                           ("task_arithmetic", {"weight": 0.3})])
def test_result_does_not_depend_on_chunk_size(pool, method, params):
    one = merged(pool, method, params)
    many = merged(pool, method, params, chunk_size=16)
    assert all(torch.allclose(one[n], many[n], atol=1e-6) for n in one)


@pytest.mark.parametrize("method", ["tsv_m", "iso_cts", "wudi"])
def test_whole_tensor_methods_stream_each_tensor_in_one_chunk(pool, method):
    """A matrix method needs all of a tensor: a small chunk size must not cut it (the result is the in-memory one)."""
    from merging.methods.base import merge_in_memory
    from merging.registry import get_method

    _, (base, *models) = pool
    out = merged(pool, method, {}, chunk_size=4)
    b, ms = load(base), [load(m) for m in models]
    cls = get_method(method).method_class
    for name in b:
        expected = merge_in_memory(cls(cls.Params(), [cls.ModelParams()] * len(ms)), b[name], [m[name] for m in ms])
        assert torch.allclose(out[name], expected, atol=1e-6), name


def test_gradient_and_filter_parameters_vary_by_tensor(pool):
    _, (base, *models) = pool
    out = merged(pool, "task_arithmetic",
                 {"weight": [{"filter": "head", "value": 0.0}, {"value": [0.0, 1.0]}]})
    b, a = load(base), [load(m) for m in models]
    assert torch.equal(out["head.w"], b["head.w"])                      # filter -> weight 0
    assert torch.allclose(out["layers.0.w"], b["layers.0.w"])            # layer 0 of 2 -> gradient start 0
    expected = b["layers.1.w"] + sum(m["layers.1.w"] - b["layers.1.w"] for m in a)  # layer 1 -> 1.0
    assert torch.allclose(out["layers.1.w"], expected, atol=1e-6)


@pytest.mark.parametrize("name,layers,depth", [
    ("model.embed_tokens.weight", 32, 0.0), ("model.norm.weight", 32, 0.0), ("lm_head.weight", 32, 0.0),
    ("model.layers.0.mlp.up_proj.weight", 32, 0.0), ("model.layers.31.mlp.up_proj.weight", 32, 1.0),
    ("model.layers.8.self_attn.q_proj.weight", 17, 0.5), ("model.layers.0.mlp.up_proj.weight", 1, 1.0)])
def test_gradient_depth_follows_mergekit_for_every_tensor_kind(name, layers, depth):
    # mergekit 0.1.5 plan.py: pre- and post-layer weights are planned at t = 0; layer i of a slice of L at
    # i/(L − 1), and t = 1 when the slice has one layer
    assert layer_position(name, layers) == depth


def test_a_gradient_gives_the_head_its_first_value_and_a_star_filter_matches_all(pool):
    _, (base, *models) = pool
    b, a = load(base), [load(m) for m in models]
    out = merged(pool, "task_arithmetic", {"weight": [{"filter": "*", "value": [0.0, 1.0]}]})
    assert torch.equal(out["head.w"], b["head.w"])  # outside the layers: t = 0, weight 0
    expected = b["layers.1.w"] + sum(m["layers.1.w"] - b["layers.1.w"] for m in a)
    assert torch.allclose(out["layers.1.w"], expected, atol=1e-6)


def test_model_scope_refuses_per_layer_parameters(pool):
    with pytest.raises(MergeError, match="scope: model"):
        merged(pool, "ties", {"density": [0.1, 0.9], "scope": "model"})


def test_exclude_copies_the_base_exactly(pool):
    _, (base, *_) = pool
    out = merged(pool, "task_arithmetic", {}, exclude=["^head"])
    assert torch.equal(out["head.w"], load(base)["head.w"])
    assert not torch.equal(out["layers.0.w"], load(base)["layers.0.w"])


def test_cuda_device_without_cuda_is_a_clear_error(pool):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MergeError, match="cuda.*is_available"):
        merged(pool, "task_arithmetic", {}, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method,params", [("ties", {"density": 0.2}), ("task_arithmetic", {"weight": 0.3}),
                                           ("dare_ties", {"drop_rate": 0.5}), ("from", {}), ("average", {})])
def test_gpu_merge_equals_cpu_merge(pool, method, params):
    cpu = merged(pool, method, params)
    gpu = merged(pool, method, params, device="cuda")
    assert all(torch.allclose(cpu[n], gpu[n], atol=1e-5) for n in cpu)


@pytest.mark.parametrize("method,parameters", [("ties", {"density": 0.3}), ("dare_ties", {"drop_rate": 0.5})])
def test_a_merge_held_in_memory_equals_the_written_one_bit_for_bit(bert_pool, tmp_path, method, parameters):
    cfg = validate_config(native(bert_pool, method=method, parameters=parameters, seed=3, exclude=["embeddings"]))
    run_merge(cfg, tmp_path / "out", progress=False)
    written, held = load_file(tmp_path / "out" / "model.safetensors"), merge_tensors(cfg)
    assert written.keys() == held.keys()
    assert all(torch.equal(written[name], held[name]) for name in written)  # DARE's masks included
