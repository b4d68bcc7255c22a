"""merging/io/gguf.py: a GGUF file (here a tiny random LLaMA written with the `gguf` package, F32 tensors and a
byte-pair tokenizer) becomes a plain transformers folder that reloads without a quantization config and
computes what the GGUF-loaded model computes; model references resolve .gguf files to that folder."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from merging.errors import MergeError
from merging.io.checkpoint import resolve_model_ref
from merging.io.gguf import MARKER, plain_folder

TOKENS = ["<|endoftext|>", "a", "b", "c", "d", "Ġ", "Ġa", "ab", "cd", "Ġb"]
MERGES = ["Ġ a", "a b", "c d", "Ġ b"]


def write_tiny_llama(path: Path, d: int = 16, ff: int = 32, layers: int = 2, heads: int = 4, kv: int = 2) -> Path:
    """A LLaMA GGUF as llama.cpp lays it out (blk.<i>.attn_q …, GQA with ``kv`` key/value heads)."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(d)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] + [1] * (len(TOKENS) - 1))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    shapes = {"token_embd.weight": (len(TOKENS), d), "output_norm.weight": (d,), "output.weight": (len(TOKENS), d)}
    for i in range(layers):
        shapes |= {f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.ffn_norm.weight": (d,),
                   f"blk.{i}.attn_q.weight": (d, d), f"blk.{i}.attn_k.weight": (d // heads * kv, d),
                   f"blk.{i}.attn_v.weight": (d // heads * kv, d), f"blk.{i}.attn_output.weight": (d, d),
                   f"blk.{i}.ffn_gate.weight": (ff, d), f"blk.{i}.ffn_up.weight": (ff, d),
                   f"blk.{i}.ffn_down.weight": (d, ff)}
    for name, shape in shapes.items():
        writer.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_becomes_a_plain_folder_that_computes_the_same(tmp_path):
    source = write_tiny_llama(tmp_path / "tiny.gguf")
    folder = plain_folder(source, cache=tmp_path / "models")
    assert folder.parent == tmp_path / "models" and folder.name.startswith("tiny-")
    assert (folder / "model.safetensors").is_file() and (folder / MARKER).is_file()
    plain = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(plain.config, "quantization_config", None) is None
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    ids = torch.tensor([[1, 7, 5, 8, 2]])
    torch.testing.assert_close(plain(ids).logits, loaded(ids).logits)
    text = "ab cd a"
    assert AutoTokenizer.from_pretrained(folder)(text).input_ids == \
        AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")(text).input_ids
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert plain_folder(source, cache=tmp_path / "models") == folder  # converted once
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_model_references_resolve_gguf_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    source = write_tiny_llama(tmp_path / "tiny.gguf")
    folder = resolve_model_ref(str(source))
    assert folder.parent == tmp_path / "cache" / "models" and (folder / "config.json").is_file()
    with pytest.raises(MergeError, match="does not exist"):
        plain_folder(tmp_path / "missing.gguf")
