"""Tiny random models on disk, built once per session and shared read-only by the tests.

* ``bert_pool``: a ``BertModel`` (2 layers, hidden 32) saved with ``save_pretrained`` as ``base`` (plus a
  tiny tokenizer), three "fine-tuned" copies ``ft1..ft3`` (base + seeded noise of std 0.01), ``ft1`` again
  as a sharded checkpoint (``ft1_sharded``, several shards + index) and ``ft2`` again as a
  ``pytorch_model.bin`` (``ft2_bin``).
* ``bert_bf16_pool``: the same base and two copies stored in bfloat16.
* ``llama_lora``: a tiny ``LlamaForCausalLM`` base and a peft LoRA adapter of it (q_proj, v_proj; B ≠ 0),
  with the weights ``merge_and_unload()`` gives.
* ``suite``: the generative suite (generative/data.py) on a fake BIG-bench sdist with three tiny tasks.

Tests that damage a model copy it first (``copy_model``).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from merging.cli import main as cli_main
from merging.io.pypi import Package

BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "merge", "model", "##s"] + [
    f"w{i}" for i in range(20)]
NOISE = 0.01


@dataclass
class Pool:
    """Folders of one tiny model family; ``tensors[name]`` are the exact stored weights of folder ``name``."""

    root: Path
    folders: dict[str, Path]
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Path:
        return self.folders[name]


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors folder (single file or shards), read with the reference library."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _noisy(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: (t.float() + NOISE * torch.randn(t.shape, generator=generator)).to(t.dtype).contiguous()
            if t.dtype.is_floating_point else t.clone() for name, t in tensors.items()}


def _save_copy(folder: Path, tensors: dict[str, torch.Tensor], config_from: Path) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    shutil.copy2(config_from / "config.json", folder / "config.json")
    return folder


def _save_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)


@pytest.fixture(scope="session")
def bert_pool(tmp_path_factory) -> Pool:
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("bert_pool")
    torch.manual_seed(0)
    model = BertModel(BertConfig(**BERT)).eval()
    model.save_pretrained(root / "base")
    _save_tokenizer(root / "base")
    pool = Pool(root, {"base": root / "base"})
    pool.tensors["base"] = load_file(root / "base" / "model.safetensors")
    for i in (1, 2, 3):
        name = f"ft{i}"
        pool.tensors[name] = _noisy(pool.tensors["base"], seed=i)
        pool.folders[name] = _save_copy(root / name, pool.tensors[name], root / "base")
    model.load_state_dict(pool.tensors["ft1"])
    model.save_pretrained(root / "ft1_sharded", max_shard_size="20KB")
    pool.folders["ft1_sharded"] = root / "ft1_sharded"
    (root / "ft2_bin").mkdir()
    torch.save(pool.tensors["ft2"], root / "ft2_bin" / "pytorch_model.bin")
    shutil.copy2(root / "base" / "config.json", root / "ft2_bin" / "config.json")
    pool.folders["ft2_bin"] = root / "ft2_bin"
    return pool


@pytest.fixture(scope="session")
def bert_bf16_pool(bert_pool, tmp_path_factory) -> Pool:
    root = tmp_path_factory.mktemp("bert_bf16_pool")
    pool = Pool(root, {})
    for name in ("base", "ft1", "ft2"):
        pool.tensors[name] = {k: v.to(torch.bfloat16) for k, v in bert_pool.tensors[name].items()}
        pool.folders[name] = _save_copy(root / name, pool.tensors[name], bert_pool["base"])
    config = json.loads((root / "base" / "config.json").read_text())
    config["dtype"] = "bfloat16"
    for name in pool.folders:
        (root / name / "config.json").write_text(json.dumps(config))
    return pool


@dataclass
class LoraCase:
    base: Path
    adapter: Path
    merged: dict[str, torch.Tensor]  # merge_and_unload() state dict
    other_adapter: Path | None = None  # a second adapter of the same base (other seed, same modules)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _llama_lora(root: Path, **lora_kwargs) -> LoraCase:
    from peft import LoraConfig, get_peft_model

    model = _tiny_llama()
    model.save_pretrained(root / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, **lora_kwargs)).eval()
    if lora_kwargs.get("modules_to_save"):  # make the saved copies differ from the base
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "modules_to_save" in name:
                    param.add_(0.05 * torch.randn_like(param))
    peft_model.save_pretrained(root / "adapter")
    merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return LoraCase(root / "base", root / "adapter", merged)


@pytest.fixture(scope="session")
def llama_lora(tmp_path_factory) -> LoraCase:
    from peft import LoraConfig, get_peft_model

    case = _llama_lora(tmp_path_factory.mktemp("llama_lora"))
    torch.manual_seed(2)
    other = get_peft_model(_tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    case.other_adapter = case.adapter.parent / "other_adapter"
    other.save_pretrained(case.other_adapter)
    return case


@pytest.fixture(scope="session")
def llama_lora_modules_to_save(tmp_path_factory) -> LoraCase:
    return _llama_lora(tmp_path_factory.mktemp("llama_lora_mts"), modules_to_save=["lm_head"])


@pytest.fixture
def copy_model(tmp_path):
    """Copy a model folder into this test's tmp_path (to damage it); returns the copy."""

    def copy(folder: Path, name: str | None = None) -> Path:
        return Path(shutil.copytree(folder, tmp_path / (name or Path(folder).name)))

    return copy


def native(pool, method="ties", models=("ft1", "ft2", "ft3"), parameters=None, **extra):
    """A native config; ``models`` are pool names or paths (damaged copies)."""
    paths = [pool[m] if isinstance(m, str) else m for m in models]
    return {"method": method, "base": str(pool["base"]), "models": [{"model": str(p)} for p in paths],
            "parameters": {"density": 0.5} if parameters is None else parameters, **extra}


def run_cli(tmp_path, capsys, config, *flags, out_name="out"):
    """Run ``merge`` on ``config`` (a dict, or a path); returns (exit code, stdout, stderr, out folder)."""
    path = config if not isinstance(config, dict) else write_yaml(tmp_path / "merge.yaml", config)
    out = tmp_path / out_name
    code = cli_main(["merge", str(path), "--out", str(out), "--quiet", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def assert_refused(tmp_path, capsys, config, *needles, flags=()):
    """The merge CLI refuses ``config``: exit != 0, one ``error:`` line naming every needle, no output."""
    code, stdout, stderr, out = run_cli(tmp_path, capsys, config, *flags)
    assert code != 0 and stdout == ""
    assert stderr.startswith("error: ") and "Traceback" not in stderr
    for needle in needles:
        assert str(needle) in stderr, f"{needle!r} not in {stderr!r}"
    assert not out.exists() and leftovers(out) == []
    return stderr


def edit_tensors(folder, edit):
    """Rewrite ``folder/model.safetensors`` after ``edit(tensors)``."""
    file = folder / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def leftovers(out: Path) -> list[str]:
    """Temporary or half-written siblings of output folder ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


BIGBENCH_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"
GENERATIVE_TASKS = """tasks:
  - {name: add, bigbench: arithmetic/2_digit_addition, kind: exact_match}
  - {name: qa, bigbench: elementary_math_qa/question_only, kind: multiple_choice}
  - {name: yesno, bigbench: natural_instructions/subtask056_x, kind: multiple_choice, prompt: "{{input}} ok?"}
"""


def fake_bigbench_sdist(path):
    """A bigbench sdist with three tiny tasks (GENERATIVE_TASKS): exact match, target_scores choices, a label set."""
    add = [{"input": f"What is {i} plus 1?", "target": str(i + 1), "target_scores": {str(i + 1): 1, "x": 0}}
           for i in range(30)]
    add += [{"input": "What is 0 plus 1?", "target": "1"},  # an identical copy: kept once
            {"input": "What is 5 plus 1?", "target": "7"}]  # a disagreeing copy: input 5 dropped
    qa = [{"input": f"q{i}", "target_scores": {"10": 0, "20": 1, "30": 0}} for i in range(20)]
    qa.append({"input": "tie", "target_scores": {"1": 1, "2": 1}})  # no single answer: skipped
    yesno = [{"input": f"passage {i}", "target": ["Yes." if i % 3 else "No."]} for i in range(20)]
    members = {f"{BIGBENCH_ROOT}/arithmetic/2_digit_addition/task.json": {"examples": add},
               f"{BIGBENCH_ROOT}/elementary_math_qa/question_only/task.json": {"examples": qa},
               f"{BIGBENCH_ROOT}/natural_instructions/subtask056_x/task.json": {"examples": yesno}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            blob = json.dumps(content).encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(buf.getvalue())
    return Package("bigbench", "1.0.0", path.name, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest(),
                   sdist=True)


@pytest.fixture
def suite(tmp_path, monkeypatch):
    """The generative suite on the fake sdist (tasks add, qa, yesno), in a private cache."""
    from generative import data
    from merging.io import pypi

    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    monkeypatch.setattr(data, "BIGBENCH", fake_bigbench_sdist(downloads / "bigbench-1.0.0.tar.gz"))
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tasks.yaml").write_text(GENERATIVE_TASKS)
    monkeypatch.setattr(data, "TASKS_YAML", tmp_path / "tasks.yaml")
    def no_pip(cmd, *args, **kwargs):  # the sdist is in the cache
        pytest.fail(f"pip must not run: {cmd}")
    monkeypatch.setattr(pypi, "pip_download", no_pip)
    return tmp_path / "cache"


@pytest.fixture
def tiny_pool(suite, tmp_path):
    """Write a pool YAML over a tiny byte-level Llama (tests/tiny_lm.py) for the fake suite's ``qa`` and
    ``yesno``: ``tiny_pool(kind, **keys)`` -> its path; the model folder is ``tmp_path / "tiny"``."""
    from tiny_lm import tiny_byte_llama

    model, tokenizer = tiny_byte_llama()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    training = {"lora": {"lr": 0.05, "epochs": 15},
                "full": {"lr": 0.01, "epochs": 5}}

    def write(kind: str = "lora", **keys) -> Path:
        path = tmp_path / f"pool-{kind}.yaml"
        pool = {"name": f"tiny_{kind}", "base": str(tmp_path / "tiny"), "kind": kind, "tasks": ["qa", "yesno"],
                "training": training[kind], **keys}
        path.write_text(yaml.safe_dump(pool))
        return path
    return write


def merge_method(name, base, models, *, model_params=None, seed=0, chunk_size=None, **params):
    """Method ``name`` with ``params`` (and per-model ``model_params``) on whole tensors through
    ``merge_in_memory``, the engine's chunked code path; ``check()`` runs first, as the engine runs it."""
    from merging.methods.base import merge_in_memory
    from merging.registry import get_method

    cls = get_method(name).method_class
    per_model = [cls.ModelParams(**(model_params[i] if model_params else {})) for i in range(len(models))]
    method = cls(cls.Params(**params), per_model)
    method.check()
    return merge_in_memory(method, base, models, seed=seed, chunk_size=chunk_size)


@pytest.fixture
def tensor_pool():
    """A [16, 12] base and four models 0.1·N(0, 1) away from it."""
    torch.manual_seed(0)
    base = torch.randn(16, 12)
    return base, [base + 0.1 * torch.randn(16, 12) for _ in range(4)]


@pytest.fixture
def checkpoint_folders(tmp_path):
    """A base and three models (safetensors folders a, b, c) of three tensors, two of them in numbered layers."""
    torch.manual_seed(0)
    base = {"layers.0.w": torch.randn(30, 20), "layers.1.w": torch.randn(50), "head.w": torch.randn(7)}
    paths = []
    for i, name in enumerate(["base", "a", "b", "c"]):
        folder = tmp_path / name
        folder.mkdir()
        tensors = base if i == 0 else {k: v + torch.randn_like(v) * 0.1 * i for k, v in base.items()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
        paths.append(folder)
    return tmp_path, paths
