"""mergekit YAML read as mergekit 0.1.5 reads it (merging/mergekit_yaml.py): the rules where a config would
otherwise give a different model with exit 0. scripts/parity_mergekit.sh checks the same configs against
mergekit itself."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_refused, read_weights, run_cli

from merging.cli import out_shard_size
from merging.errors import MergeError
from merging.mergekit_yaml import from_mergekit

CONFIG = Path("mergekit.yml")


def linear(pool, **extra):
    return {"merge_method": "linear", "models": [{"model": str(pool["ft1"])}, {"model": str(pool["ft2"])}],
            **extra}


def test_dtype_is_also_the_output_dtype_unless_out_dtype_says_otherwise():
    raw = {"merge_method": "task_arithmetic", "base_model": "b", "models": [{"model": "m", "parameters": {"weight": 1}}]}
    assert from_mergekit({**raw, "dtype": "float16"}, CONFIG)["out_dtype"] == "float16"
    both = from_mergekit({**raw, "dtype": "float16", "out_dtype": "bfloat16"}, CONFIG)
    assert (both["dtype"], both["out_dtype"]) == ("float16", "bfloat16")
    assert "out_dtype" not in from_mergekit(raw, CONFIG)  # no dtype: each tensor keeps its own, as mergekit


def test_dtype_float16_on_float32_models_writes_float16_and_says_so(bert_pool, tmp_path, capsys):
    config = {"merge_method": "task_arithmetic", "base_model": str(bert_pool["base"]), "dtype": "float16",
              "models": [{"model": str(bert_pool["ft1"]), "parameters": {"weight": 0.5}}]}
    code, _, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    assert {t.dtype for t in read_weights(out).values()} == {torch.float16}
    saved = json.loads((out / "config.json").read_text())
    assert saved.get("torch_dtype", saved.get("dtype")) == "float16"


def test_linear_averages_in_a_base_model_not_listed_with_the_top_level_weight(bert_pool):
    native = from_mergekit(linear(bert_pool, base_model=str(bert_pool["base"]), parameters={"weight": 0.5}),
                           CONFIG)
    assert [m["model"] for m in native["models"]] == [str(bert_pool[k]) for k in ("ft1", "ft2", "base")]
    assert native["parameters"]["weight"] == 0.5


def test_linear_base_model_not_listed_gives_mergekits_average(bert_pool, tmp_path, capsys):
    config = linear(bert_pool, base_model=str(bert_pool["base"]), parameters={"weight": 1.0})
    code, _, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    got, tensors = read_weights(out), bert_pool.tensors
    for name, value in got.items():
        expected = (tensors["ft1"][name] + tensors["ft2"][name] + tensors["base"][name]) / 3
        assert torch.allclose(value, expected.to(value.dtype), atol=1e-6), name


def test_linear_without_a_weight_is_refused_as_mergekit_refuses_it(bert_pool, tmp_path, capsys):
    with pytest.raises(MergeError, match="linear needs a weight for every model"):
        from_mergekit(linear(bert_pool), CONFIG)
    assert_refused(tmp_path, capsys, linear(bert_pool), "linear needs a weight for every model")


def test_the_output_has_a_model_card_with_the_mergekit_config_as_mergekit_writes_one(bert_pool, tmp_path, capsys):
    config = {"merge_method": "task_arithmetic", "base_model": str(bert_pool["base"]),
              "models": [{"model": str(bert_pool["ft1"]), "parameters": {"weight": 0.5}}]}
    code, _, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["library_name"] == "transformers" and {"merge", "mergekit"} <= set(header["tags"])
    assert "base_model" not in header  # local folders are not hub ids
    assert (out / "mergekit_config.yml").read_text().strip() in card


@pytest.mark.parametrize("flag,size", [("5B", 5 * 10**9), ("500M", 5 * 10**8), ("20K", 20_000), ("2GB", 2 * 10**9),
                                       ("1GiB", 2**30)])
def test_out_shard_size_reads_mergekits_notation_and_byte_units(flag, size):
    assert out_shard_size(flag) == size


def test_out_shard_size_shards_the_output(bert_pool, tmp_path, capsys):
    config = {"merge_method": "task_arithmetic", "base_model": str(bert_pool["base"]),
              "models": [{"model": str(bert_pool["ft1"]), "parameters": {"weight": 0.5}}]}
    code, _, stderr, out = run_cli(tmp_path, capsys, config, "--out-shard-size", "20K")
    assert code == 0, stderr
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert read_weights(out).keys() == bert_pool.tensors["base"].keys()


def test_passthrough_slices_stack_layers_and_the_config_counts_them(bert_pool, tmp_path, capsys):
    # 2-layer BERTs: ft1's layers 0-1, then ft2's layer 1 again -> 3 layers (a "frankenmerge")
    config = {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": str(bert_pool["ft1"]), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(bert_pool["ft2"]), "layer_range": [1, 2]}]}]}
    code, _, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    got, ft1, ft2 = read_weights(out), bert_pool.tensors["ft1"], bert_pool.tensors["ft2"]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    for name in ft1:
        if ".layer.1." in name:
            assert torch.equal(got[name], ft1[name])
            assert torch.equal(got[name.replace(".layer.1.", ".layer.2.")], ft2[name])
        elif ".layer." not in name:  # embeddings: the first slice's source; pooler: the last slice's
            assert torch.equal(got[name], (ft1 if "embed" in name else ft2)[name]), name


def test_a_gradient_runs_over_each_slice_and_a_one_layer_slice_sits_at_its_end(bert_pool, tmp_path, capsys):
    base, ft1 = str(bert_pool["base"]), str(bert_pool["ft1"])
    config = {"merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
              "parameters": {"weight": [0.0, 1.0]},
              "slices": [{"sources": [{"model": base, "layer_range": [0, 1]}, {"model": ft1, "layer_range": [0, 1]}]},
                         {"sources": [{"model": base, "layer_range": [0, 2]}, {"model": ft1, "layer_range": [0, 2]}]}]}
    code, _, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    got, b, f = read_weights(out), bert_pool.tensors["base"], bert_pool.tensors["ft1"]
    name = next(n for n in b if ".layer.0.attention.self.query.weight" in n)
    assert torch.allclose(got[name], f[name], atol=1e-6)  # slice 1 has one layer: t = 1, weight 1
    assert torch.allclose(got[name.replace(".layer.0.", ".layer.1.")], b[name], atol=1e-6)  # slice 2, t = 0
    assert torch.allclose(got[name.replace(".layer.0.", ".layer.2.")],
                          f[name.replace(".layer.0.", ".layer.1.")], atol=1e-6)  # slice 2, t = 1
    embeddings = next(n for n in b if "word_embeddings" in n)
    assert torch.equal(got[embeddings], b[embeddings])  # outside the layers: t = 0, weight 0


def test_sources_of_different_lengths_in_one_slice_are_refused(bert_pool, tmp_path, capsys):
    base, ft1 = str(bert_pool["base"]), str(bert_pool["ft1"])
    config = {"merge_method": "task_arithmetic", "base_model": base, "parameters": {"weight": 1.0}, "slices": [
        {"sources": [{"model": base, "layer_range": [0, 2]}, {"model": ft1, "layer_range": [0, 1]}]}]}
    assert_refused(tmp_path, capsys, config, "slices[0]", "same number of layers")


CONVERSATION = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def chat_merge(pool, tmp_path, capsys, template, models=("ft1",)):
    config = {"merge_method": "task_arithmetic", "base_model": str(pool["base"]), "chat_template": template,
              "models": [{"model": str(pool[m]) if m in ("ft1", "ft2") else str(m), "parameters": {"weight": 1.0}}
                         for m in models]}
    return run_cli(tmp_path, capsys, config)


def test_chat_template_chatml_is_written_and_renders_a_conversation(bert_pool, tmp_path, capsys):
    from transformers import AutoTokenizer

    code, _, stderr, out = chat_merge(bert_pool, tmp_path, capsys, "chatml")
    assert code == 0, stderr
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    rendered = AutoTokenizer.from_pretrained(out).apply_chat_template(CONVERSATION, tokenize=False,
                                                                        add_generation_prompt=True)
    assert rendered == ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
                        "<|im_start|>assistant\n")


def test_chat_template_auto_takes_the_template_most_inputs_carry(bert_pool, copy_model, tmp_path, capsys):
    carriers = [copy_model(bert_pool["ft1"], "a"), copy_model(bert_pool["ft2"], "b")]
    for folder in carriers:
        (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }} (the models' template)")
    code, _, stderr, out = chat_merge(bert_pool, tmp_path, capsys, "auto", models=carriers)
    assert code == 0, stderr
    assert (out / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }} (the models' template)"


@pytest.mark.parametrize("value, needle", [("llama3", "put the template text in the config"),
                                           ("chat", "neither a built-in name")])
def test_a_chat_template_that_is_no_template_is_refused_before_the_merge(bert_pool, tmp_path, capsys, value,
                                                                          needle):
    config = {"merge_method": "task_arithmetic", "base_model": str(bert_pool["base"]), "chat_template": value,
              "models": [{"model": str(bert_pool["ft1"]), "parameters": {"weight": 1.0}}]}
    assert_refused(tmp_path, capsys, config, f"chat_template {value!r}", needle)


def test_model_plus_lora_is_the_adapter_applied_to_that_model(llama_lora, tmp_path, capsys):
    base = str(llama_lora.base)
    config = {"merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
              "models": [{"model": f"{base}+{llama_lora.adapter}", "parameters": {"weight": 1.0}}]}
    code, _, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    got = read_weights(out)
    assert all(torch.allclose(got[name], value, atol=1e-6) for name, value in llama_lora.merged.items()
               if name in got)


def test_model_plus_something_that_is_no_adapter_is_refused(llama_lora, tmp_path, capsys):
    base = str(llama_lora.base)
    config = {"merge_method": "task_arithmetic", "base_model": base,
              "models": [{"model": f"{base}+{base}", "parameters": {"weight": 1.0}}]}
    assert_refused(tmp_path, capsys, config, "is not a LoRA adapter folder")


def test_a_weighted_mergekit_method_without_a_weight_is_refused_as_mergekit_refuses_it(bert_pool, tmp_path, capsys):
    config = {"merge_method": "ties", "base_model": str(bert_pool["base"]),
              "models": [{"model": str(bert_pool["ft1"]), "parameters": {"density": 0.5}}]}
    assert_refused(tmp_path, capsys, config, "ties needs a weight for every model", "mergekit has no default")


def with_tokenizers(pool, copy_model, *names, vocabulary=None):
    """Copies of ``names`` with a word-piece tokenizer of config.json's 100 tokens (the pool's fine-tunes have no
    tokenizer, and the base's is smaller than its embedding)."""
    words = vocabulary or ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    copies = []
    for name in names:
        folder = copy_model(pool[name], f"{name}_tok")
        for file in pool["base"].iterdir():
            if file.name == "tokenizer_config.json":
                (folder / file.name).write_bytes(file.read_bytes())
        (folder / "tokenizer.json").unlink(missing_ok=True)
        (folder / "vocab.txt").write_text("\n".join(words) + "\n")
        copies.append(folder)
    return copies


def test_tokenizer_source_union_of_one_vocabulary_is_the_plain_merge(bert_pool, copy_model, tmp_path, capsys):
    base, ft1, ft2 = with_tokenizers(bert_pool, copy_model, "base", "ft1", "ft2")
    models = [{"model": str(ft1), "parameters": {"weight": 0.5}}, {"model": str(ft2), "parameters": {"weight": 0.5}}]
    plain = {"merge_method": "task_arithmetic", "base_model": str(base), "models": models}
    code, _, stderr, expected = run_cli(tmp_path, capsys, plain, out_name="plain")
    assert code == 0, stderr
    code, _, stderr, out = run_cli(tmp_path, capsys, {**plain, "tokenizer_source": "union"}, out_name="union")
    assert code == 0, stderr
    assert all(torch.equal(a, b) for a, b in zip(read_weights(expected).values(), read_weights(out).values()))


def test_tokenizer_source_a_model_copies_its_tokenizer(bert_pool, copy_model, tmp_path, capsys):
    base, ft1 = with_tokenizers(bert_pool, copy_model, "base", "ft1")
    settings = json.loads((ft1 / "tokenizer_config.json").read_text())
    (ft1 / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 77}))
    config = {"merge_method": "task_arithmetic", "base_model": str(base), "tokenizer": {"source": str(ft1)},
              "models": [{"model": str(ft1), "parameters": {"weight": 1.0}}]}
    code, _, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 77


def test_tokenizer_source_union_of_different_vocabularies_is_refused(bert_pool, copy_model, tmp_path, capsys):
    (base,) = with_tokenizers(bert_pool, copy_model, "base")
    (ft1,) = with_tokenizers(bert_pool, copy_model, "ft1", vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                             + [f"v{i}" for i in range(95)])
    config = {"merge_method": "task_arithmetic", "base_model": str(base), "tokenizer_source": "union",
              "models": [{"model": str(ft1), "parameters": {"weight": 1.0}}]}
    assert_refused(tmp_path, capsys, config, "tokenizer_source 'union'", "differ from the base's",
                   "re-map the embedding rows")


def test_tokenizer_source_with_a_vocabulary_smaller_than_the_embedding_is_refused(bert_pool, tmp_path, capsys):
    config = {"merge_method": "linear", "tokenizer_source": "union",  # its tokenizer: fewer tokens than rows
              "models": [{"model": str(bert_pool["base"]), "parameters": {"weight": 1.0}}]}
    assert_refused(tmp_path, capsys, config, "vocab_size 100", "resize the embeddings")
