"""FroM-LoRA: ALS on Σ w_i‖θ_i − BA‖² with w_i ∝ ‖θ_i‖^k, in factored form; folders in, a peft folder out."""
import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from merging.config import validate_config
from merging.errors import MergeError
from merging.io.lora import LoraAdapter, read_lora_adapter
from merging.methods.from_lora import FromLoraParams, from_lora, from_lora_module, task_vector_norms
from merging.run import run_merge

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
OUT, IN = 30, 20


def random_factors(rank: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, IN, generator=g), scale * torch.randn(OUT, rank, generator=g)  # A [r, in], B [out, r]


def theta(factors, scaling) -> torch.Tensor:
    a, b = factors
    return scaling * b.double() @ a.double()  # [out, in]


def merge(adapters, seed=0, **params):
    """FroM-LoRA over every module of ``adapters``: their merged factors (the registered adapter merge)."""
    return from_lora(adapters, FromLoraParams(**params), seed=seed).factors


def run(factors, scalings, rank, k=1.0, max_iters=100, tol=1e-6, seed=0):
    return from_lora_module(factors, scalings, rank, k, max_iters, 1.0, tol, torch.Generator().manual_seed(seed))


def rel_err(x, y) -> float:
    return float((x.double() - y.double()).norm() / y.double().norm())


def test_task_vector_norms_match_dense():
    factors, scalings = [random_factors(3, 0), random_factors(5, 1)], [2.0, 0.5]
    dense = torch.stack([theta(f, s).norm() for f, s in zip(factors, scalings)])
    assert torch.allclose(task_vector_norms(factors, scalings), dense)


def test_single_adapter_is_recovered_at_its_own_rank():
    factors = random_factors(4, 0)
    a, b, history = run([factors], [2.0], rank=4)
    assert a.shape == (4, IN) and b.shape == (OUT, 4)
    assert rel_err(b @ a, theta(factors, 2.0)) < 1e-5
    assert history[-1] < 1e-8 * theta(factors, 2.0).norm() ** 2


def test_loss_history_is_non_increasing_and_matches_the_dense_loss():
    factors = [random_factors(4, i, scale=1 + i) for i in range(3)]
    scalings = [2.0, 1.0, 0.5]
    a, b, history = run(factors, scalings, rank=3, k=1.0, max_iters=60, tol=0.0)
    assert len(history) > 1 and all(x >= y for x, y in zip(history, history[1:]))
    norms = torch.stack([theta(f, s).norm() for f, s in zip(factors, scalings)])
    w = norms / norms.sum()  # k = 1
    dense = sum(wi * (theta(f, s) - b.double() @ a.double()).norm() ** 2 for wi, f, s in zip(w, factors, scalings))
    assert history[-1] == pytest.approx(float(dense), rel=1e-4)


def test_k0_gives_the_best_rank_r_approximation_of_the_mean():
    factors = [random_factors(4, 10 + i) for i in range(3)]
    scalings = [1.0, 2.0, 0.5]
    mean = sum(theta(f, s) for f, s in zip(factors, scalings)) / 3  # [out, in], rank <= 12
    u, sv, vh = torch.linalg.svd(mean)
    best = u[:, :5] @ torch.diag(sv[:5]) @ vh[:5]  # Eckart–Young, rank 5
    a, b, history = run(factors, scalings, rank=5, k=0.0, max_iters=500, tol=0.0)
    assert rel_err(b @ a, best) < 1e-3
    residual = sum((theta(f, s) - mean).norm() ** 2 for f, s in zip(factors, scalings)) / 3 + (sv[5:] ** 2).sum()
    assert history[-1] == pytest.approx(float(residual), rel=1e-4)


def test_large_k_approaches_the_largest_norm_adapter():
    factors = [random_factors(4, 20 + i, scale=s) for i, s in enumerate((1.0, 3.0, 1.5))]
    a, b, _ = run(factors, [1.0, 1.0, 1.0], rank=4, k=500.0)  # weights in log space: no overflow
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert rel_err(b @ a, theta(factors[1], 1.0)) < 1e-4


def test_same_seed_same_result_and_bad_arguments_are_errors():
    factors = [random_factors(4, 0), random_factors(2, 1)]
    first, second = run(factors, [1.0, 1.0], rank=3, seed=7), run(factors, [1.0, 1.0], rank=3, seed=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(MergeError, match="expected A"):
        run([random_factors(4, 0), (torch.zeros(4, IN + 1), torch.zeros(OUT, 4))], [1.0, 1.0], rank=4)
    with pytest.raises(MergeError, match="rank=0"):
        run(factors, [1.0, 1.0], rank=0)


def fake_adapter(path: str, names: list[str], rank: int = 4, seed: int = 0, scale: float = 1.0) -> LoraAdapter:
    factors = {n: random_factors(rank, seed + i, scale) for i, n in enumerate(names)}
    return LoraAdapter(path=Path(path), config={"peft_type": "LORA", "r": rank, "lora_alpha": rank}, rank=rank,
                       alpha=float(rank), scaling=1.0, factors=factors, scalings={n: 1.0 for n in names})


def test_alpha_scales_the_merged_update():
    names = ["l0.weight", "l1.weight"]
    adapters = [fake_adapter("x", names, seed=0), fake_adapter("y", names, seed=5, scale=2.0)]
    one = merge(adapters, rank=4, k=2.0, alpha=1.0, max_iters=30, sigma=1.0, seed=3, tol=1e-8)
    half = merge(adapters, rank=4, k=2.0, alpha=0.5, max_iters=30, sigma=1.0, seed=3, tol=1e-8)
    for n in names:
        assert torch.allclose(half[n][1] @ half[n][0], 0.5 * one[n][1] @ one[n][0], atol=1e-5)
        assert torch.equal(half[n][0], one[n][0])  # α is folded into B


def test_mismatched_adapters_are_errors_naming_the_adapter():
    good = fake_adapter("/adapters/good", ["l0.weight", "l1.weight"])
    fewer = fake_adapter("/adapters/fewer", ["l0.weight"])
    with pytest.raises(MergeError, match="adapter '/adapters/fewer' does not adapt module 'l1.weight'"):
        merge([good, fewer], rank=4)
    wide = fake_adapter("/adapters/wide", ["l0.weight", "l1.weight"])
    wide.factors["l1.weight"] = (torch.zeros(4, IN + 3), torch.zeros(OUT, 4))
    with pytest.raises(MergeError, match="adapter '/adapters/wide', module 'l1.weight'"):
        merge([good, wide], rank=4)
    extra = fake_adapter("/adapters/head", ["l0.weight", "l1.weight"])
    extra.extra["lm_head.weight"] = torch.zeros(2, 2)
    with pytest.raises(MergeError, match="'/adapters/head' holds non-LoRA tensors"):
        merge([good, extra], rank=4)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=64, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=4)
    return LlamaForCausalLM(config).eval()


def save_adapter(folder: Path, seed: int, r: int, targets: list[str]) -> None:
    model = tiny_llama()
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)


def merge_folders(tmp_path: Path, adapters: list[str], **parameters) -> dict:
    """``python -m merging merge`` with method from_lora on adapter folders of ``tmp_path``, into ``out``."""
    if not (tmp_path / "base").exists():
        tiny_llama().save_pretrained(tmp_path / "base")
    cfg = validate_config({"method": "from_lora", "base": str(tmp_path / "base"), "parameters": parameters,
                           "models": [{"model": str(tmp_path / a)} for a in adapters], "seed": 0,
                           "allow_adapter_base_mismatch": True})
    return run_merge(cfg, tmp_path / "out", progress=False)


def test_written_folder_loads_in_peft_with_the_merged_update(tmp_path):
    save_adapter(tmp_path / "a", seed=1, r=4, targets=["q_proj", "v_proj"])
    save_adapter(tmp_path / "b", seed=2, r=2, targets=["q_proj", "v_proj"])
    kwargs = dict(k=2.0, alpha=0.8, max_iters=50, sigma=1.0, tol=1e-7)
    summary = merge_folders(tmp_path, ["a", "b"], **kwargs)
    assert summary["modules"] == 4 and summary["rank"] == 4  # default rank: the largest input rank
    assert json.loads((tmp_path / "out" / "merge_info.json").read_text())["modules"] == 4
    assert 0 <= summary["relative_loss_mean"] < 1
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 4)  # scaling 1: B carries α
    expected = merge([read_lora_adapter(tmp_path / p) for p in "ab"], rank=4, seed=0, **kwargs)

    base = tiny_llama().state_dict()
    merged = PeftModel.from_pretrained(tiny_llama(), tmp_path / "out").merge_and_unload().state_dict()
    for name, (a, b) in expected.items():
        assert torch.allclose(merged[name] - base[name], b @ a, atol=1e-5), name
    with pytest.raises(MergeError, match="already exists"):
        merge_folders(tmp_path, ["a", "b"])


def test_folders_with_different_targets_are_an_error_naming_the_adapter(tmp_path):
    save_adapter(tmp_path / "qv", seed=1, r=4, targets=["q_proj", "v_proj"])
    save_adapter(tmp_path / "q", seed=2, r=4, targets=["q_proj"])
    with pytest.raises(MergeError, match=re.escape(f"adapter '{tmp_path / 'q'}' does not adapt module")):
        merge_folders(tmp_path, ["qv", "q"])
    assert not (tmp_path / "out").exists()
