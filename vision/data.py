"""The offline image benchmark's tasks (configs/vision/tasks.yaml), prepared once into the cache with fixed
seeded splits: ``cache_dir()/vision/<task>/{splits.pt, meta.json}``.

Splits of a task, from its source (vision/sources.py):
  1. the source's pictures on each side of its own train/test split (a source without one is split once,
     seeded, 70% train side / 30% test side; the emoji sources split by emoji, every design and skin tone of an
     emoji on one side), keeping only the labels the task's ``relabel`` lists;
  2. the task's own seeded shuffle of each side (seed = "0/<task>", so tasks on one source see different
     pictures): test = the first min(500, n) of the test side; validation = the first min(200, n/5) of the
     train side, train = the next min(2000, rest); proxy = the first 100 of train;
  3. every picture resized to 32x32 RGB (bilinear; grey levels repeated in 3 channels), then the task's
     ``transform``.
No test picture of any task is a train or validation picture of any task (the sides never mix).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

import torch

from merging.benchmark.domain import TaskSpec
from merging.benchmark.task_list import task_entries
from merging.errors import MergeError
from merging.io.atomic import atomic_directory
from merging.io.pypi import cache_dir
from merging.resources import CONFIGS

from .sources import SOURCE_RECIPES, SOURCES, Arrays

logger = logging.getLogger(__name__)

TASKS_YAML = CONFIGS / "vision" / "tasks.yaml"
SEED = 0
CAPS = {"test": 500, "validation": 200, "train": 2000, "proxy": 100}
TEST_SIDE = 0.3  # share of a split-less source that goes to the test side
SIZE = 32
SPLITS = ("train", "validation", "test", "proxy")
RECIPE_VERSION = 1  # bump when the split procedure changes: every task is rebuilt
TRANSFORMS = ("identity", "invert", "rot90", "flip_vertical", "grayscale")
_KEYS = {"name", "source", "transform", "relabel", "label_names"}


@dataclass(frozen=True)
class Picture:
    pixels: torch.Tensor  # uint8 [SIZE, SIZE, 3]
    label: int


class PictureSet(Sequence[Picture]):
    """A split's pictures, stored as one uint8 tensor [n, SIZE, SIZE, 3] and its labels [n]; slicing keeps
    the tensors (a batch is a view, not a list of pictures)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    @overload
    def __getitem__(self, i: int) -> Picture: ...

    @overload
    def __getitem__(self, i: slice) -> PictureSet: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PictureSet(self.images[i], self.labels[i])
        return Picture(self.images[i], int(self.labels[i]))

    def __iter__(self) -> Iterator[Picture]:
        return (self[i] for i in range(len(self)))


# -------------------------------------------------------------------------------------------- the task list
@functools.cache
def _entries() -> dict[str, dict[str, Any]]:
    """tasks.yaml, checked: unknown keys, sources, transforms and label maps are errors."""
    out: dict[str, dict[str, Any]] = {}
    for where, entry in task_entries(TASKS_YAML, {"name", "source", "label_names"}, _KEYS):
        if entry["source"] not in SOURCES:
            raise MergeError(f"{where}: source '{entry['source']}' unknown; known: {', '.join(SOURCES)}")
        if entry.get("transform", "identity") not in TRANSFORMS:
            raise MergeError(f"{where}: transform '{entry['transform']}' unknown; known: {', '.join(TRANSFORMS)}")
        names = list(entry["label_names"])
        relabel = entry.get("relabel") or [[k] for k in range(len(names))]
        flat = [k for group in relabel for k in group]
        if len(relabel) != len(names) or len(set(flat)) != len(flat):
            raise MergeError(f"{where}: relabel {relabel} must give each of the {len(names)} label_names one "
                             f"group of source labels, no source label twice")
        spec = TaskSpec(entry["name"], "classification", len(names), "accuracy", tuple(names))
        out[entry["name"]] = {"source": entry["source"], "transform": entry.get("transform", "identity"),
                              "relabel": relabel, "spec": spec}
    return out


def task_names() -> list[str]:
    return list(_entries())


def task_spec(name: str) -> TaskSpec:
    entries = _entries()
    if name not in entries:
        raise MergeError(f"unknown vision task '{name}'; known: {', '.join(entries)}")
    return entries[name]["spec"]


# ------------------------------------------------------------------------------------------------ building
def to_rgb32(images: torch.Tensor) -> torch.Tensor:
    """uint8 [n, H, W] or [n, H, W, 3] -> uint8 [n, SIZE, SIZE, 3] (bilinear resize, grey repeated)."""
    x = images.unsqueeze(-1).expand(*images.shape, 3) if images.dim() == 3 else images
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (SIZE, SIZE):
        x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def transform(images: torch.Tensor, name: str) -> torch.Tensor:
    """One of TRANSFORMS on uint8 [n, H, W, 3]."""
    if name == "invert":
        return 255 - images
    if name == "rot90":
        return images.rot90(1, dims=(1, 2)).contiguous()
    if name == "flip_vertical":
        return images.flip(1).contiguous()
    if name == "grayscale":
        luma = (images.float() @ torch.tensor([0.299, 0.587, 0.114])).round().clamp(0, 255).to(torch.uint8)
        return luma.unsqueeze(-1).expand(*luma.shape, 3).contiguous()
    return images


def sides(source: dict[str, Arrays]) -> dict[str, Arrays]:
    """The source's own train/test sides, or a seeded TEST_SIDE split of its single set."""
    if "all" not in source:
        return source
    images, labels = source["all"]
    order = list(range(len(labels)))
    random.Random(f"{SEED}/sides").shuffle(order)
    cut = round(TEST_SIDE * len(order))
    test, train = torch.tensor(order[:cut]), torch.tensor(order[cut:])
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def make_splits(name: str, entry: dict[str, Any], source: dict[str, Arrays]) -> dict[str, PictureSet]:
    """The four splits of task ``name`` from its source's sides (see the module docstring)."""
    mapping = {k: new for new, group in enumerate(entry["relabel"]) for k in group}
    picked: dict[str, PictureSet] = {}
    for side, (images, labels) in sides(source).items():
        keep = [i for i, y in enumerate(labels.tolist()) if y in mapping]
        random.Random(f"{SEED}/{name}/{side}").shuffle(keep)
        index = torch.tensor(keep, dtype=torch.long)
        pictures = transform(to_rgb32(images[index]), entry["transform"])
        picked[side] = PictureSet(pictures, torch.tensor([mapping[int(y)] for y in labels[index]]))
    train_side, test_side = picked["train"], picked["test"]
    validation = min(CAPS["validation"], len(train_side) // 5)
    train = train_side[validation:validation + CAPS["train"]]
    return {"train": train, "validation": train_side[:validation], "test": test_side[:CAPS["test"]],
            "proxy": train[:CAPS["proxy"]]}


# -------------------------------------------------------------------------------------------------- cache
def _task_dir(name: str) -> Path:
    return cache_dir() / "vision" / name


def _recipe(name: str) -> str:
    entry = _entries()[name]
    source = SOURCE_RECIPES.get(entry["source"])
    blob = {"version": RECIPE_VERSION, "seed": SEED, "caps": CAPS, "size": SIZE, "test_side": TEST_SIDE,
            "entry": {**entry, "spec": asdict(entry["spec"])}, **({"source": source} if source else {})}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _is_prepared(name: str) -> bool:
    meta = _task_dir(name) / "meta.json"
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("recipe") == _recipe(name)
    except json.JSONDecodeError:
        return False


def _write_task(name: str, splits: dict[str, PictureSet], seconds: float) -> None:
    spec = task_spec(name)
    meta = {"task": name, "spec": asdict(spec), "recipe": _recipe(name), **{k: v for k, v in _entries()[name].items()
                                                                           if k != "spec"},
            "counts": {s: len(splits[s]) for s in SPLITS},
            "label_distribution": {s: dict(zip(spec.label_names, torch.bincount(splits[s].labels,
                                                                                minlength=spec.num_labels).tolist()))
                                   for s in SPLITS},
            "seconds": round(seconds, 2)}
    with atomic_directory(_task_dir(name), overwrite=True) as tmp:
        torch.save({s: {"images": splits[s].images, "labels": splits[s].labels} for s in SPLITS}, tmp / "splits.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def prepare(names: list[str] | None = None, progress: bool = True) -> None:
    """Build the splits of ``names`` (default: every task) that are not prepared with the current recipe,
    reading each source once."""
    names = task_names() if names is None else names
    for name in names:
        task_spec(name)  # unknown names fail before any source is read
    todo: dict[str, list[str]] = {}
    for name in names:
        if not _is_prepared(name):
            todo.setdefault(_entries()[name]["source"], []).append(name)
    for source_name, tasks in todo.items():
        started = time.time()
        source = SOURCES[source_name]()
        if progress:
            logger.info("[data] %s: read in %.1fs", source_name, time.time() - started)
        for name in tasks:
            started = time.time()
            splits = make_splits(name, _entries()[name], source)
            _write_task(name, splits, time.time() - started)
            if progress:
                logger.info("[data] %s: %s", name, ", ".join(f"{s} {len(splits[s])}" for s in SPLITS))
    _load.cache_clear()


@functools.cache
def _load(name: str) -> dict[str, PictureSet]:
    stored = torch.load(_task_dir(name) / "splits.pt", weights_only=True)
    return {s: PictureSet(stored[s]["images"], stored[s]["labels"]) for s in SPLITS}


def load_split(name: str, split: str) -> PictureSet:
    """One split of a task (prepared first if it is not in the cache)."""
    task_spec(name)
    if split not in SPLITS:
        raise MergeError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    if not _is_prepared(name):
        prepare([name])
    return _load(name)[split]
