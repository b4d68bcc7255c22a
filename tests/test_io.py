"""Checkpoint I/O: what is read is what was stored, in every supported layout; what is written is a valid
(sharded) safetensors checkpoint that transformers loads; a failed merge leaves nothing behind."""
import json
import os
import random
import re

import pytest
import torch
import yaml
from conftest import leftovers, read_weights
from safetensors.torch import load_file, save_file

from merging.config import validate_config
from merging.errors import MergeError
from merging.io import safetensors_io
from merging.io.checkpoint import TorchBinCheckpoint, open_checkpoint, resolve_model_ref
from merging.io.safetensors_io import SafetensorsFile, ShardedSafetensorsWriter, TensorInfo
from merging.run import run_merge

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def merge(pool, out, method="task_arithmetic", models=("ft1", "ft2", "ft3"), parameters=None, **extra):
    cfg = validate_config({"method": method, "base": str(pool["base"]),
                           "models": [m if isinstance(m, dict) else {"model": str(pool[m])} for m in models],
                           "parameters": parameters or {}, **extra})
    return run_merge(cfg, out, progress=False)


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(40, 30, generator=g), "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
            "c.half": torch.randn(3, 5, 4, generator=g).half(), "d.ids": torch.arange(25, dtype=torch.int64),
            "e.scalar": torch.tensor(3.5), "f.double": torch.randn(100, generator=g, dtype=torch.float64),
            "g.empty": torch.zeros(0, 4)}


# --- the writer and the reader -------------------------------------------------------------------------

def test_sharded_writer_round_trips_pieces_written_in_any_order(tmp_path):
    tensors = mixed_tensors()
    infos = [TensorInfo(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = ShardedSafetensorsWriter(tmp_path, infos, max_shard_bytes=1000, metadata={"merge_method": "x"})
    pieces = [(name, start, t.reshape(-1)[start:start + 11]) for name, t in tensors.items()
              for start in range(0, max(t.numel(), 1), 11)]
    random.Random(0).shuffle(pieces)
    for name, start, values in pieces:
        writer.write(name, start, values)
    writer.finish()

    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) >= 3 and all(s.startswith("model-0000") for s in shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    by_library = {}
    for shard in shards:
        by_library.update(load_file(tmp_path / shard))
    ckpt = open_checkpoint(str(tmp_path))
    try:
        for name, tensor in tensors.items():
            assert by_library[name].dtype == tensor.dtype and torch.equal(by_library[name], tensor), name
            assert ckpt.describe(name) == f"{tmp_path / index['weight_map'][name]}: tensor '{name}'"
            assert ckpt.infos[name].shape == tuple(tensor.shape)
            assert torch.equal(ckpt.read(name).reshape(tensor.shape), tensor), name
    finally:
        ckpt.close()


def test_single_shard_has_no_index(tmp_path):
    tensors = mixed_tensors()
    writer = ShardedSafetensorsWriter(tmp_path, [TensorInfo(n, tuple(t.shape), t.dtype) for n, t in tensors.items()],
                                      max_shard_bytes=10**9)
    for name, t in tensors.items():
        writer.write(name, 0, t.reshape(-1))
    writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert all(torch.equal(load_file(tmp_path / "model.safetensors")[n], t) for n, t in tensors.items())


def test_writer_refuses_to_finish_with_unwritten_bytes(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, [TensorInfo("w", (10,), torch.float32)], max_shard_bytes=1000)
    writer.write("w", 0, torch.ones(6))
    with pytest.raises(RuntimeError, match="unwritten tensors: \\['w'\\]"):
        writer.finish()
    writer.close()


def test_writer_refuses_a_piece_of_the_wrong_dtype(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, [TensorInfo("w", (10,), torch.float32)], max_shard_bytes=1000)
    with pytest.raises(TypeError, match="'w' is planned as torch.float32, got torch.float16"):
        writer.write("w", 0, torch.ones(10, dtype=torch.float16))
    writer.close()


def test_safetensors_file_read_returns_exactly_the_flat_slice(tmp_path):
    tensors = mixed_tensors()
    save_file(tensors, tmp_path / "model.safetensors")  # written by the reference library
    file = SafetensorsFile(tmp_path / "model.safetensors")
    try:
        for name, tensor in tensors.items():
            flat = tensor.reshape(-1)
            n = flat.numel()
            assert file.infos[name] == TensorInfo(name, tuple(tensor.shape), tensor.dtype)
            for start, stop in [(0, None), (0, n), (0, 0), (n, n), (n // 3, n // 2), (max(n - 1, 0), n), (1, 2)]:
                if start > n or (stop or n) > n or (stop is not None and stop < start):
                    continue
                got = file.read(name, start, stop)
                assert got.dtype == tensor.dtype and got.dim() == 1
                assert torch.equal(got, flat[start:stop]), (name, start, stop)
    finally:
        file.close()


def test_hf_sharded_checkpoint_reads_the_same_tensors_as_the_single_file(bert_pool):
    assert len(list(bert_pool["ft1_sharded"].glob("*.safetensors"))) > 2
    sharded = open_checkpoint(str(bert_pool["ft1_sharded"]))
    try:
        assert set(sharded.infos) == set(bert_pool.tensors["ft1"])
        for name, tensor in bert_pool.tensors["ft1"].items():
            assert torch.equal(sharded.read(name).reshape(tensor.shape), tensor), name
    finally:
        sharded.close()


def test_bin_checkpoint_is_loaded_with_weights_only(bert_pool, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ckpt = open_checkpoint(str(bert_pool["ft2_bin"]))
    assert isinstance(ckpt, TorchBinCheckpoint)
    assert calls and all(call.get("weights_only") is True for call in calls)
    for name, tensor in bert_pool.tensors["ft2"].items():
        assert torch.equal(ckpt.read(name).reshape(tensor.shape), tensor), name
        assert torch.equal(ckpt.read(name, 3, 9), tensor.reshape(-1)[3:9])


class NotATensor:  # a pickled object that weights_only refuses to build
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_bin_with_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"w": torch.ones(2), "evil": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(MergeError, match="pytorch_model.bin: cannot be loaded with weights_only=True"):
        open_checkpoint(str(tmp_path))
    assert "code ran" not in capsys.readouterr().out


def header_file(path, header: bytes, data: bytes = b"") -> str:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return str(path)


@pytest.mark.parametrize("header,message", [
    (b"[1, 2]", "unreadable safetensors header"),
    (b"{not json", "unreadable safetensors header"),
    (b'{"w": {"dtype": "F32", "shape": [2]}}', "tensor 'w' has shape [2] and data_offsets None; expected"),
    (b'{"w": {"dtype": "F32", "shape": [2.7], "data_offsets": [0, 8]}}', "tensor 'w' has shape [2.7]"),
    (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": ["0", 8]}}', "tensor 'w' has shape [2] and data_offsets ['0', 8]; expected"),
    (b'{"w": {"dtype": "F32", "shape": [-2, -1], "data_offsets": [0, 8]}}', "tensor 'w' has shape [-2, -1]"),
    (b'{"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}', "tensor 'w' has unsupported dtype ['F32']"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "v": {"dtype": "F32", "shape": [1], '
     b'"data_offsets": [0, 4]}}', "tensor 'w' starts at byte 0 of the data block, expected 4 (overlapping"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', "tensor 'w' starts at byte 4 of the "
                                                                        "data block, expected 0 (a gap before it)"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "4 bytes after the last tensor; expected"),
    (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {}}', "unreadable safetensors header (key(s) ['w'] appear more than once)"),
    (b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "unreadable safetensors header"),
    (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', "tensor 'w' spans 4 bytes"),
    (b'{"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}', "tensor 'w' has unsupported dtype 'Q4'"),
    (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', "truncated: tensor 'w' needs bytes"),
])
def test_malformed_safetensors_headers_are_clear_errors(tmp_path, header, message):
    with pytest.raises(MergeError, match=re.escape(f"{tmp_path / 'model.safetensors'}: {message}")):
        SafetensorsFile(header_file(tmp_path / "model.safetensors", header, b"\0" * 8))


# --- model references ----------------------------------------------------------------------------------

def test_unreachable_hub_id_says_how_to_download_it_by_hand(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import time
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MergeError) as err:
        resolve_model_ref("owner/does-not-exist")
    assert "hf download owner/does-not-exist" in str(err.value)
    assert f"'owner/does-not-exist': no such local path (relative to {tmp_path})" in str(err.value)


def test_hub_id_with_a_folder_inside_the_repo(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MergeError) as err:
        resolve_model_ref("lu-vae/roberta-glue/cola/roberta-base_lr1e-05")
    assert "hf download lu-vae/roberta-glue " in str(err.value)
    assert "DIR/cola/roberta-base_lr1e-05" in str(err.value)


def test_missing_local_path_does_not_exist(tmp_path):
    with pytest.raises(MergeError, match="'./nope/model' does not exist"):
        resolve_model_ref("./nope/model")
    with pytest.raises(MergeError, match=f"'{tmp_path / 'absent'}' does not exist"):
        open_checkpoint(str(tmp_path / "absent"))


def test_folder_without_weights_lists_what_it_holds(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MergeError, match=r"no weights found .*\['config.json'\]"):
        open_checkpoint(str(tmp_path))


# --- a merge run end to end ----------------------------------------------------------------------------

def test_merged_folder_is_a_loadable_model_equal_to_the_formula(bert_pool, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    weights = [0.5, 0.3, -0.2]
    out = tmp_path / "merged"
    info = merge(bert_pool, out, models=[{"model": str(bert_pool[m]), "parameters": {"weight": w}}
                                         for m, w in zip(("ft1", "ft2", "ft3"), weights)],
                 parameters={"lambda": 0.8}, shard_size="30KB")
    base = bert_pool.tensors["base"]
    got = read_weights(out)
    assert set(got) == set(base)
    for name, b in base.items():
        expected = b + 0.8 * sum(w * (bert_pool.tensors[m][name] - b) for m, w in zip(("ft1", "ft2", "ft3"), weights))
        assert got[name].dtype == torch.float32
        assert torch.allclose(got[name], expected, atol=1e-6), name

    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in names and len(list(out.glob("model-*.safetensors"))) > 1
    for side in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        assert side in names, side
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert (out / "tokenizer.json").read_bytes() == (bert_pool["base"] / "tokenizer.json").read_bytes()
    recorded = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert recorded["method"] == "task_arithmetic" and recorded["parameters"] == {"lambda": 0.8}
    assert json.loads((out / "merge_info.json").read_text()) == info
    assert info["method"] == "task_arithmetic" and info["tensors_merged"] == len(base)
    assert leftovers(out) == []

    model = AutoModel.from_pretrained(out).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, got[name]), name
    tokens = AutoTokenizer.from_pretrained(out)("hello world", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    assert hidden.shape == (1, tokens["input_ids"].shape[1], 32) and torch.isfinite(hidden).all()


def test_sharded_and_bin_inputs_merge_like_single_files(bert_pool, tmp_path):
    merge(bert_pool, tmp_path / "single", models=("ft1", "ft2"))
    merge(bert_pool, tmp_path / "mixed", models=("ft1_sharded", "ft2_bin"))
    single, mixed = read_weights(tmp_path / "single"), read_weights(tmp_path / "mixed")
    assert all(torch.equal(single[n], mixed[n]) for n in single)


def test_failure_mid_write_leaves_no_output_folder(bert_pool, tmp_path, monkeypatch):
    real_write = ShardedSafetensorsWriter.write
    calls = []

    def failing_write(self, name, start, values):
        calls.append(name)
        if len(calls) == 5:
            raise OSError("disk full (injected)")
        return real_write(self, name, start, values)

    monkeypatch.setattr(safetensors_io.ShardedSafetensorsWriter, "write", failing_write)
    out = tmp_path / "target"
    with pytest.raises(MergeError, match="injected"):  # an OS error is reported as one line naming the path
        merge(bert_pool, out)
    assert not out.exists() and leftovers(out) == [] and list(tmp_path.iterdir()) == []

    out.mkdir()  # an existing folder that --overwrite would replace survives a failed merge untouched
    (out / "keep.txt").write_text("old")
    calls.clear()
    cfg = validate_config({"method": "task_arithmetic", "base": str(bert_pool["base"]),
                           "models": [{"model": str(bert_pool["ft1"])}]})
    with pytest.raises(MergeError, match="injected"):  # an OS error is reported as one line naming the path
        run_merge(cfg, out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and leftovers(out) == []


def test_output_folder_gets_the_permissions_of_a_plain_mkdir(bert_pool, tmp_path):
    merge(bert_pool, tmp_path / "out", models=("ft1",))
    (tmp_path / "plain").mkdir()
    mode = lambda p: os.stat(p).st_mode & 0o777
    assert mode(tmp_path / "out") == mode(tmp_path / "plain")


def test_output_path_that_is_a_file_is_refused_even_with_overwrite(bert_pool, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    cfg = validate_config({"method": "average", "base": str(bert_pool["base"]),
                           "models": [{"model": str(bert_pool["ft1"])}]})
    with pytest.raises(MergeError, match="exists and is not a folder"):
        run_merge(cfg, tmp_path / "out", overwrite=True, progress=False)
    assert (tmp_path / "out").read_text() == "not a folder" and leftovers(tmp_path / "out") == []


def test_interrupt_mid_merge_leaves_no_output_folder(bert_pool, tmp_path, monkeypatch):
    real_write = ShardedSafetensorsWriter.write

    def interrupted(self, name, start, values):
        if name.startswith("encoder.layer.1"):
            raise KeyboardInterrupt
        return real_write(self, name, start, values)

    monkeypatch.setattr(safetensors_io.ShardedSafetensorsWriter, "write", interrupted)
    cfg = validate_config({"method": "average", "base": str(bert_pool["base"]),
                           "models": [{"model": str(bert_pool["ft1"])}]})
    with pytest.raises(KeyboardInterrupt):
        run_merge(cfg, tmp_path / "target", progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_out_dtype_float32_from_a_bf16_base(bert_bf16_pool, tmp_path):
    merge(bert_bf16_pool, tmp_path / "f32", models=("ft1", "ft2"), out_dtype="float32")
    got = read_weights(tmp_path / "f32")
    base = bert_bf16_pool.tensors["base"]
    for name, b in base.items():
        expected = b.float() + sum(bert_bf16_pool.tensors[m][name].float() - b.float() for m in ("ft1", "ft2"))
        assert got[name].dtype == torch.float32 and torch.allclose(got[name], expected, atol=1e-6), name
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"


def test_out_dtype_defaults_to_the_base_dtype(bert_bf16_pool, tmp_path):
    merge(bert_bf16_pool, tmp_path / "keep", models=("ft1", "ft2"))
    got = read_weights(tmp_path / "keep")
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    f32 = {n: t.float() for n, t in bert_bf16_pool.tensors["base"].items()}
    for name, b in f32.items():
        expected = b + sum(bert_bf16_pool.tensors[m][name].float() - b for m in ("ft1", "ft2"))
        assert torch.allclose(got[name].float(), expected, rtol=2**-7, atol=1e-6), name  # bf16 rounding
    assert json.loads((tmp_path / "keep" / "config.json").read_text())["dtype"] == "bfloat16"


def test_excluded_tensors_equal_the_base_exactly(bert_pool, tmp_path):
    exclude = ["LayerNorm", r"\.bias$"]
    info = merge(bert_pool, tmp_path / "out", exclude=exclude)
    got, base = read_weights(tmp_path / "out"), bert_pool.tensors["base"]
    excluded = [n for n in base if "LayerNorm" in n or n.endswith(".bias")]
    assert excluded and info["tensors_copied"] == len(excluded)
    for name in base:
        assert torch.equal(got[name], base[name]) == (name in excluded), name


def test_only_included_tensors_are_merged(bert_pool, tmp_path):
    merge(bert_pool, tmp_path / "out", include=[r"^encoder\.layer\.0\."], exclude=["bias"])
    got, base = read_weights(tmp_path / "out"), bert_pool.tensors["base"]
    merged = {n for n in base if n.startswith("encoder.layer.0.") and "bias" not in n}
    assert merged
    for name in base:
        assert torch.equal(got[name], base[name]) == (name not in merged), name


# --- LoRA adapters as models ---------------------------------------------------------------------------

def lora_merge(case, tmp_path):
    cfg = validate_config({"method": "task_arithmetic", "base": str(case.base),
                           "models": [{"model": str(case.adapter), "parameters": {"weight": 1.0}}]})
    run_merge(cfg, tmp_path / "out", progress=False)
    return read_weights(tmp_path / "out")


def test_lora_adapter_merged_with_weight_1_equals_merge_and_unload(llama_lora, tmp_path):
    got = lora_merge(llama_lora, tmp_path)
    base = load_file(llama_lora.base / "model.safetensors")
    assert set(got) == set(base)
    changed = {n for n in base if not torch.equal(llama_lora.merged[n], base[n])}
    assert changed == {f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")}
    for name in base:
        assert torch.allclose(got[name], llama_lora.merged[name], atol=1e-5), name


def test_lora_modules_to_save_replace_the_base_tensors(llama_lora_modules_to_save, tmp_path):
    case = llama_lora_modules_to_save
    got = lora_merge(case, tmp_path)
    base = load_file(case.base / "model.safetensors")
    assert not torch.equal(case.merged["lm_head.weight"], base["lm_head.weight"])
    for name in base:
        assert torch.allclose(got[name], case.merged[name], atol=1e-5), name


def test_fan_in_fan_out_lora_merges_in_the_base_layout(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                                       bos_token_id=0, eos_token_id=0)).eval()
    model.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                  fan_in_fan_out=True, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    cfg = validate_config({"method": "task_arithmetic", "base": str(tmp_path / "base"),
                           "models": [{"model": str(tmp_path / "adapter")}], "chunk_size": 100})
    run_merge(cfg, tmp_path / "out", progress=False)
    got = read_weights(tmp_path / "out")
    assert got["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    for name, tensor in got.items():
        assert torch.allclose(tensor, merged[name], atol=1e-5), name
