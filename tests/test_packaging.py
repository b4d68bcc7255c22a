"""An installed wheel (not only an editable install) carries the domain packages and every shipped YAML, and the
code finds that YAML without a source checkout (merging/resources.py)."""
import subprocess
import sys
import zipfile
from pathlib import Path

from merging.resources import find_configs

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_package_and_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    names = zipfile.ZipFile(next(tmp_path.glob("merging-*.whl"))).namelist()
    packaged = {name.split("share/merging/configs/", 1)[1] for name in names if "/share/merging/configs/" in name}
    shipped = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*") if p.is_file()}
    assert packaged == shipped
    for module in ("merging/benchmark/cli.py", "merging/methods/__init__.py", "discriminative/__main__.py",
                   "vision/__main__.py", "generative/__main__.py"):
        assert module in names, module


def test_the_source_checkout_wins_and_the_installed_copy_is_the_fallback(tmp_path):
    source, installed = tmp_path / "checkout" / "configs", tmp_path / "prefix" / "share" / "merging" / "configs"
    installed.mkdir(parents=True)
    assert find_configs(source, installed) == installed  # a wheel install: no checkout beside the package
    source.mkdir(parents=True)
    assert find_configs(source, installed) == source
