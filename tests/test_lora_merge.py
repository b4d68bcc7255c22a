"""merging/lora_merge.py: LoRA adapters merged in product space (ΔW, re-factored by truncated SVD) or factor
space (A and B as separate tensors), checked against dense algebra and peft's add_weighted_adapter."""
from __future__ import annotations

import pytest
import torch

from merging.errors import MergeError
from merging.io.lora import LoraAdapter, read_lora_adapter
from merging.lora_merge import ARPACK_MIN_SIDE, merge_deltas, merged_weights, refactor, sources, to_factors
from merging.registry import get_method


def adapter(seed: int, rank: int = 2, alpha: float = 4.0, shapes=((6, 5), (4, 5))) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    factors = {f"m{i}.weight": (torch.randn(rank, fan_in, generator=g), torch.randn(out, rank, generator=g))
               for i, (out, fan_in) in enumerate(shapes)}
    return LoraAdapter(path=f"adapter{seed}", config={"r": rank, "lora_alpha": alpha}, rank=rank, alpha=alpha,
                       scaling=alpha / rank, factors=factors, scalings=dict.fromkeys(factors, alpha / rank))


def task_arithmetic(n: int, scale: float):
    cls = get_method("task_arithmetic").method_class
    return cls(cls.Params(scale=scale), [cls.ModelParams() for _ in range(n)])


def test_refactor_is_exact_up_to_the_rank_and_eckart_young_below_it():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(7, 3, generator=g) @ torch.randn(3, 9, generator=g)  # rank 3
    a, b, error = refactor(delta, 3)
    assert a.shape == (3, 9) and b.shape == (7, 3) and error < 1e-6
    assert torch.allclose(b @ a, delta, atol=1e-5)
    a, b, error = refactor(delta, 5)  # padded with zero rows / columns: same product
    assert a.shape == (5, 9) and torch.allclose(b @ a, delta, atol=1e-5)
    s = torch.linalg.svdvals(delta.double())
    a, b, error = refactor(delta, 1)
    assert error == pytest.approx(float(s[1:].norm() / s.norm()), rel=1e-6)
    assert float((delta - b @ a).norm()) == pytest.approx(float(s[1:].norm()), rel=1e-4)


def test_large_modules_take_arpack_and_get_the_full_svds_best_fit(monkeypatch):
    import scipy.sparse.linalg

    calls = []
    svds = scipy.sparse.linalg.svds
    monkeypatch.setattr(scipy.sparse.linalg, "svds", lambda *a, **k: calls.append(k["k"]) or svds(*a, **k))
    g = torch.Generator().manual_seed(0)
    side = ARPACK_MIN_SIDE + 44
    delta = torch.randn(side, 20, generator=g) @ torch.randn(20, side + 100, generator=g)  # rank 20
    a, b, error = refactor(delta, 8)
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    best = (u[:, :8] * s[:8]) @ vh[:8]
    assert calls == [8]
    assert torch.allclose((b @ a).double(), best, atol=1e-3 * float(best.abs().max()))
    assert error == pytest.approx(float(s[8:].norm() / s.norm()), rel=1e-6)
    low = delta[:, :side] @ torch.diag((torch.arange(side) < 3).float()) @ delta[:, :side].T  # rank 3
    a, b, error = refactor(low, 8)  # 5 zero singular values: still exact
    assert calls == [8, 8] and error < 1e-6
    assert torch.allclose(b @ a, low, atol=1e-4 * float(low.abs().max()))
    a, b, error = refactor(torch.zeros(side, side), 8)
    assert error == 0 and not a.any() and not b.any()


def test_product_space_merge_of_one_adapter_reproduces_it():
    one = adapter(0)
    factors, errors = merge_deltas([one], task_arithmetic(1, 1.0), rank=one.rank)
    for name, (a, b) in factors.items():
        assert torch.allclose(b @ a, one.delta(name), atol=1e-5)  # written with scaling 1
    assert max(errors.values()) < 1e-6


def test_task_arithmetic_on_delta_w_is_the_dense_sum_then_its_best_rank_r_fit():
    pool = [adapter(s) for s in range(3)]
    exact, errors = merge_deltas(pool, task_arithmetic(3, 0.5), rank=6)  # 3 × rank 2: no truncation
    low, low_errors = merge_deltas(pool, task_arithmetic(3, 0.5), rank=2)
    for name in exact:
        dense = 0.5 * sum(p.delta(name) for p in pool)
        assert torch.allclose(exact[name][1] @ exact[name][0], dense, atol=1e-5)
        a, b = low[name]
        s = torch.linalg.svdvals(dense.double())
        assert float((dense - b @ a).norm()) == pytest.approx(float(s[2:].norm()), rel=1e-4)
        assert low_errors[name] > 0.01 and errors[name] < 1e-6


def test_factor_space_merges_a_and_b_separately_with_cross_terms():
    pool = [adapter(s) for s in range(2)]
    base, candidates = sources(pool, "factors", ["x", "y"])
    assert base.names == ["m0.lora_A", "m0.lora_B", "m1.lora_A", "m1.lora_B"]
    assert float(base.read("m0.lora_A").abs().sum()) == 0 and base.shape("m0.lora_B") == (6, 2)
    theta = {n: 0.3 * sum(c.read(n) for c in candidates.values()) for n in base.names}  # TA on the factors
    factors, errors = to_factors(theta, "factors", rank=2)
    (a0, b0), (a1, b1) = pool[0].factors["m0.weight"], pool[1].factors["m0.weight"]
    a, b = factors["m0.weight"]
    assert torch.allclose(b @ a, 0.09 * (b0 + b1) @ (a0 + a1)) and not errors
    weights = {"m0.weight": torch.ones(6, 5), "m1.weight": torch.zeros(4, 5)}
    merged = merged_weights("factors", weights, theta, scaling=2.0)
    assert torch.allclose(merged["m0.weight"], 1 + 2.0 * b @ a)


def test_factor_space_needs_equal_ranks_and_scalings():
    with pytest.raises(MergeError, match="same rank"):
        sources([adapter(0, rank=2), adapter(1, rank=3)], "factors", ["x", "y"])
    with pytest.raises(MergeError, match="lora_alpha"):
        sources([adapter(0, alpha=4.0), adapter(1, alpha=8.0)], "factors", ["x", "y"])
    with pytest.raises(MergeError, match="does not adapt module 'm1.weight'"):
        sources([adapter(0), adapter(1, shapes=((6, 5),))], "product", ["x", "y"])
    base, candidates = sources([adapter(0, rank=2), adapter(1, rank=3)], "product", ["x", "y"])  # any ranks
    assert base.names == ["m0.weight", "m1.weight"] and candidates["y"].shape("m0.weight") == (6, 5)


def _two_peft_adapters(llama_lora, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    second = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_lora.base),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                       init_lora_weights=False))
    second.save_pretrained(tmp_path / "second")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_lora.base), llama_lora.adapter,
                                      adapter_name="first")
    model.load_adapter(tmp_path / "second", adapter_name="second")
    return model, [read_lora_adapter(llama_lora.adapter), read_lora_adapter(tmp_path / "second")]


@pytest.mark.parametrize("combination,rank", [("cat", 8), ("svd", 4), ("ties_svd", 4)])
def test_product_space_merges_match_peft_add_weighted_adapter(llama_lora, tmp_path, combination, rank):
    """peft's ``cat`` stacks the factors (ΔW = Σ w_i ΔW_i exactly), ``svd`` fits Σ w_i ΔW_i at svd_rank,
    ``ties_svd`` fits TIES of the ΔW_i (density 0.5, sign by mass) at svd_rank."""
    model, pool = _two_peft_adapters(llama_lora, tmp_path)
    weights = [1.0, 1.0] if combination == "ties_svd" else [0.7, 0.7]
    model.add_weighted_adapter(["first", "second"], weights, "merged", combination_type=combination,
                               svd_rank=None if combination == "cat" else rank, density=0.5,
                               majority_sign_method="total")
    model.set_adapter("merged")
    if combination == "ties_svd":
        cls = get_method("ties").method_class
        method = cls(cls.Params(density=0.5, elect="mass"), [cls.ModelParams(), cls.ModelParams()])
    else:
        method = task_arithmetic(2, 0.7)
    ours, _ = merge_deltas(pool, method, rank=rank)
    for name, (a, b) in ours.items():
        module = model.base_model.model.get_submodule(name[:-len(".weight")])
        theirs = module.get_delta_weight("merged")  # [out, in]
        assert torch.allclose(b @ a, theirs, atol=1e-5), name
