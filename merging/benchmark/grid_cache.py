"""The validation grid points of a data-driven merge, kept on disk so that a long grid resumes where it stopped
and can be shared out between processes (``run --grid-points``), then read back by the run that writes the row.

An entry is ``cache_dir()/<domain>/grid/<key>/`` holding ``body.safetensors`` (the merged body, running statistics
filled) and ``record.json`` (the point's validation normalised score, the method's log, and the seconds and peak RSS
that its merge and validation took, which the row adds to its own), written whole or not at all. Its key is the
sha256 of everything the entry depends on: the pool config, the method, the grid point, the excluded tensors, the
merge seed, the statistics mode, the objective tasks, the fine-tuning seed the validation split is scored against,
the contents of a ``data: files`` pool's files, the digests of every merged checkpoint (``store.finetuned_digest``)
and the digest of the code and task definitions (``code_digest``), so that a change to any of them makes a new key
instead of reusing a stale merge. The row's run removes its grid's entries once it has scored the best point on test
(a ``--grid-points`` process that finishes after it leaves its point behind, to be removed by hand).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from merging.io.atomic import atomic_directory
from merging.io.pypi import cache_dir
from merging.resources import CONFIGS

from .pool import PoolConfig

logger = logging.getLogger(__name__)

BODY, RECORD = "body.safetensors", "record.json"


@functools.cache
def code_digest(domain: str) -> str:
    """sha256 of the ``.py`` files (relative path and contents) of the ``merging`` package and of ``domain``'s,
    and of the domain's task definitions (``configs/<domain>/tasks.yaml``: data sources and splits); read once
    per process, at its first grid point, before that point's merge."""
    digest = hashlib.sha256()
    files = [(package, Path(importlib.import_module(package).__file__).parent, "*.py")
             for package in dict.fromkeys(["merging", domain])]
    for label, root, pattern in [*files, (f"configs/{domain}", CONFIGS / domain, "tasks.yaml")]:
        for path in sorted(root.rglob(pattern)):
            digest.update(f"{label}/{path.relative_to(root)}:".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def data_digest(pool: PoolConfig) -> str:
    """sha256 of the contents of a ``data: files`` pool's local split files (a hub split is named by the pool
    config, which the key holds); empty for the domain's own data sets (``code_digest``)."""
    digest = hashlib.sha256()
    for task, files in sorted(pool.files.items()):
        for split in ("proxy", "validation", "test", "train"):
            source = getattr(files, split)
            if isinstance(source, Path):
                digest.update(f"{task}/{split}:".encode())
                digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest() if pool.files else ""


@dataclass(frozen=True)
class GridPoint:
    """One validation grid point's merge: what its cache key depends on (see the module docstring)."""

    pool: PoolConfig
    method: str
    point: dict[str, Any]
    exclude: list[str]
    seed: int
    statistics: str
    objective_tasks: list[str] | None
    validation_seed: int
    checkpoints: str  # store.finetuned_digest of the merged checkpoints

    def key(self) -> str:
        record = {"pool": self.pool.model_dump(mode="json"), "data_files": data_digest(self.pool),
                  "domain": self.pool.domain.name,
                  "method": self.method, "point": self.point, "exclude": self.exclude, "seed": self.seed,
                  "statistics": self.statistics, "objective_tasks": self.objective_tasks,
                  "validation_seed": self.validation_seed, "checkpoints": self.checkpoints,
                  "code": code_digest(self.pool.domain.name)}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def folder(self) -> Path:
        return cache_dir() / self.pool.domain.name / "grid" / self.key()


@dataclass(frozen=True)
class Stored:
    """A stored grid point: its validation normalised score, merged body and log, and what making it cost."""

    validation_normalized: float
    body: dict[str, torch.Tensor]
    log: dict[str, Any]
    seconds: float
    peak_rss_gb: float


def load(entry: GridPoint) -> Stored | None:
    """The stored grid point ``entry``, or None if it was never completed."""
    folder = entry.folder()
    if not (folder / RECORD).is_file():
        return None
    record = json.loads((folder / RECORD).read_text())
    logger.info("  %s %s: the merge stored in %s", entry.method, entry.point, folder)
    return Stored(record["validation_normalized"], load_file(folder / BODY), record["log"], record["seconds"],
                  record["peak_rss_gb"])


def store(entry: GridPoint, point: Stored) -> None:
    """Keep a grid point (replacing an entry of the same key)."""
    with atomic_directory(entry.folder(), overwrite=True) as tmp:
        save_file(_unshared(point.body), tmp / BODY)
        (tmp / RECORD).write_text(json.dumps({"method": entry.method, "point": entry.point,
                                              "validation_normalized": point.validation_normalized,
                                              "log": point.log, "seconds": point.seconds,
                                              "peak_rss_gb": point.peak_rss_gb}, default=str) + "\n")


def _unshared(body: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``body`` as safetensors saves it: contiguous, a tensor that shares its storage with an earlier one copied."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in body.items():
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    return tensors


def forget(entries: list[GridPoint]) -> None:
    """Remove the stored grid points ``entries`` (those never stored are skipped)."""
    for entry in entries:
        shutil.rmtree(entry.folder(), ignore_errors=True)
