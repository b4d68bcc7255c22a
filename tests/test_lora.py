"""LoRA adapter I/O: what we read is the ΔW peft applies; what we write peft loads unchanged."""
import json
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from merging.errors import MergeError
from merging.io.lora import is_lora_adapter, read_lora_adapter, write_lora_adapter

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
TOKENS = torch.tensor([[1, 5, 9, 33, 2, 60, 17, 4]])


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=64, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=4)
    return LlamaForCausalLM(config).eval()


def save_adapter(folder, seed: int = 1, **lora_kwargs):
    """Save a random (B ≠ 0) LoRA of tiny_llama(0); return (base state dict, peft model)."""
    model = tiny_llama(0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(seed)
    kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, LoraConfig(**{**kwargs, **lora_kwargs})).eval()
    peft_model.save_pretrained(folder)
    return base, peft_model


def merged_deltas(base: dict, peft_model) -> dict[str, torch.Tensor]:
    merged = peft_model.merge_and_unload().state_dict()
    return {k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])}


def test_delta_equals_what_peft_merges(tmp_path):
    base, peft_model = save_adapter(tmp_path)
    expected = merged_deltas(base, peft_model)
    adapter = read_lora_adapter(tmp_path)
    assert is_lora_adapter(tmp_path) and not is_lora_adapter(tmp_path / "nope")
    assert (adapter.rank, adapter.alpha, adapter.scaling) == (4, 8.0, 2.0)
    assert set(adapter.factors) == set(expected) == {
        f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")}
    for name, delta in expected.items():
        a, b = adapter.factors[name]
        assert a.shape == (4, 32) and b.shape == (32, 4) and a.dtype == torch.float32
        assert torch.allclose(adapter.delta(name), delta, atol=1e-5)


def test_delta_rows_are_slices_of_delta(tmp_path):
    save_adapter(tmp_path)
    adapter = read_lora_adapter(tmp_path)
    name = "model.layers.1.self_attn.v_proj.weight"
    full = adapter.delta(name)  # [32, 32]
    for start, stop in [(0, 7), (7, 32), (5, 5)]:
        assert torch.allclose(adapter.delta_rows(name, start, stop), full[start:stop], atol=1e-6)
    with pytest.raises(MergeError, match="row range"):
        adapter.delta_rows(name, 30, 40)
    with pytest.raises(MergeError, match="no factors for parameter 'lm_head.weight'"):
        adapter.delta("lm_head.weight")


def test_rank_and_alpha_patterns_match_peft(tmp_path):
    base, peft_model = save_adapter(tmp_path, rank_pattern={"layers.1.self_attn.q_proj": 2},
                                    alpha_pattern={"v_proj": 3}, use_rslora=True)
    expected = merged_deltas(base, peft_model)
    adapter = read_lora_adapter(tmp_path)
    assert adapter.factors["model.layers.1.self_attn.q_proj.weight"][0].shape == (2, 32)
    assert adapter.scalings["model.layers.0.self_attn.v_proj.weight"] == pytest.approx(3 / 2)  # 3 / √4
    for name, delta in expected.items():
        assert torch.allclose(adapter.delta(name), delta, atol=1e-5), name


def test_fan_in_fan_out_delta_is_in_the_base_layout(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16)).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                  fan_in_fan_out=True, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path)
    expected = merged_deltas(base, peft_model)
    adapter = read_lora_adapter(tmp_path)
    name = "transformer.h.0.attn.c_attn.weight"
    assert adapter.fan_in_fan_out and adapter.delta_shape(name) == (32, 96) == tuple(expected[name].shape)
    for name, delta in expected.items():
        assert torch.allclose(adapter.delta(name), delta, atol=1e-5)
        assert torch.allclose(adapter.delta_rows(name, 3, 11), delta[3:11], atol=1e-5)


def test_bin_weights_and_adapter_named_keys_are_read(tmp_path):
    save_adapter(tmp_path / "st")
    reference = read_lora_adapter(tmp_path / "st")
    named = tmp_path / "named"
    named.mkdir()
    (named / "adapter_config.json").write_text((tmp_path / "st" / "adapter_config.json").read_text())
    state = load_file(tmp_path / "st" / "adapter_model.safetensors")
    renamed = {k.replace(".weight", ".default.weight"): v for k, v in state.items()}  # older peft layout
    torch.save(renamed, named / "adapter_model.bin")
    adapter = read_lora_adapter(named)
    for name in reference.factors:
        assert torch.equal(adapter.delta(name), reference.delta(name))


def test_modules_to_save_are_kept_as_extra(tmp_path):
    save_adapter(tmp_path, modules_to_save=["lm_head"])
    adapter = read_lora_adapter(tmp_path)
    assert list(adapter.extra) == ["lm_head.weight"] and adapter.extra["lm_head.weight"].shape == (64, 32)


def test_written_adapter_loads_in_peft_and_gives_the_same_outputs(tmp_path):
    _, peft_model = save_adapter(tmp_path / "in")
    with torch.no_grad():
        expected = peft_model(TOKENS).logits
    adapter = read_lora_adapter(tmp_path / "in")
    write_lora_adapter(tmp_path / "out", adapter.factors, adapter.rank, adapter.alpha, adapter.config,
                       torch.float32)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["rank_pattern"]) == (4, 8, {})
    assert sorted(config["target_modules"]) == sorted(n.removesuffix(".weight") for n in adapter.factors)
    loaded = PeftModel.from_pretrained(tiny_llama(0), tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(TOKENS).logits, expected, atol=1e-6)
    again = read_lora_adapter(tmp_path / "out")
    for name in adapter.factors:
        assert torch.equal(again.delta(name), adapter.delta(name))


def test_writer_refuses_factors_of_the_wrong_rank(tmp_path):
    factors = {"model.layers.0.self_attn.q_proj.weight": (torch.zeros(3, 32), torch.zeros(32, 3))}
    with pytest.raises(MergeError, match=r"expected A \[4, in\]"):
        write_lora_adapter(tmp_path, factors, 4, 4.0, {"peft_type": "LORA"}, torch.float32)


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(MergeError, match=re.escape(f"'{tmp_path}'") + ".*adapter_config.json"):
        read_lora_adapter(tmp_path)


def test_incomplete_pair_is_a_clear_error(tmp_path):
    save_adapter(tmp_path)
    state = load_file(tmp_path / "adapter_model.safetensors")
    del state["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    save_file(state, tmp_path / "adapter_model.safetensors")
    message = re.escape(f"'{tmp_path}'") + ".*layers.1.self_attn.v_proj' has lora_A but no lora_B"
    with pytest.raises(MergeError, match=message):
        read_lora_adapter(tmp_path)


@pytest.mark.parametrize("edit,message", [
    (lambda cfg, st: cfg.update(peft_type="IA3"), "peft_type is 'IA3', expected 'LORA'"),
    (lambda cfg, st: cfg.update(use_dora=True), "'use_dora' = True is not supported"),
    (lambda cfg, st: st.__setitem__(next(iter(st)), torch.full((4, 32), float("nan"))), "NaN or Inf"),
    (lambda cfg, st: cfg.update(r=8), "has rank 4 but the config says 8"),
    (lambda cfg, st: st.clear(), "has no weights"),
], ids=["not-lora", "dora", "nan", "rank-mismatch", "no-weights"])
def test_unsupported_or_broken_adapters_are_clear_errors(tmp_path, edit, message):
    save_adapter(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    state = load_file(tmp_path / "adapter_model.safetensors")
    state = {k: state[k] for k in sorted(state)}  # first key is a lora_A
    edit(config, state)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "adapter_model.safetensors").unlink()
    if state:
        save_file(state, tmp_path / "adapter_model.safetensors")
    with pytest.raises(MergeError, match=message):
        read_lora_adapter(tmp_path)
