"""The paper's image tasks from the Hugging Face Hub (``data: hub``): ``tanganke/<task>`` data sets (the
TALL8/14/20 suites of FusionBench: sun397, stanford-cars, resisc45, eurosat, svhn, gtsrb, mnist, dtd, …), with
columns ``image`` (PIL) and ``label`` (ClassLabel, whose names become the task's label names and the CLIP
zero-shot prompts). Splits as the offline recipe (vision/data.py) on the data set's own train/test sides:
seeded per task, test <= 500, validation <= 200 and train <= 2000 from train, proxy = train[:100]. Pictures are
resized (shorter side) and centre-cropped to ``image_size`` and cached as uint8 under
``cache_dir()/vision/hub/<owner>--<name>-<size>.pt``."""
from __future__ import annotations

import functools
import random

import numpy as np
import torch

from merging.benchmark.domain import TaskSpec
from merging.benchmark.hub_data import load_hub_dataset
from merging.io.pypi import cache_dir

from .data import CAPS, SEED, PictureSet

REPO = "tanganke/{task}"  # the default; a pool's ``datasets`` names others (stanford-cars: tanganke/stanford_cars)


def repo(pool, task: str) -> str:
    return pool.datasets.get(task, REPO.format(task=task))


@functools.cache
def _dataset(repo: str):
    return load_hub_dataset(repo)


def hub_spec(task: str, repo: str) -> TaskSpec:
    names = tuple(_dataset(repo)["train"].features["label"].names)
    return TaskSpec(task, "classification", len(names), "accuracy", names)


def picture(image, size: int) -> torch.Tensor:
    """A PIL image as uint8 [size, size, 3]: RGB, the shorter side resized to ``size``, centre-cropped."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))))
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return torch.from_numpy(np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8).copy())


@functools.cache
def hub_splits(task: str, repo: str, size: int) -> dict[str, PictureSet]:
    path = cache_dir() / "vision" / "hub" / f"{repo.replace('/', '--')}-{size}.pt"
    if not path.is_file():
        dataset, wanted = _dataset(repo), {"test": CAPS["test"], "train": CAPS["validation"] + CAPS["train"]}
        stored = {}
        for side, n in wanted.items():
            rows = dataset[side]
            order = list(range(len(rows)))
            random.Random(f"{SEED}/{task}/{side}").shuffle(order)
            picked = [rows[i] for i in order[:n]]
            stored[side] = {"images": torch.stack([picture(r["image"], size) for r in picked]),
                            "labels": torch.tensor([int(r["label"]) for r in picked])}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(stored, tmp)
        tmp.replace(path)
    stored = torch.load(path, weights_only=True)
    train = PictureSet(stored["train"]["images"], stored["train"]["labels"])
    validation = min(CAPS["validation"], len(train) // 5)
    rest = train[validation:]
    return {"test": PictureSet(stored["test"]["images"], stored["test"]["labels"]), "validation": train[:validation],
            "train": rest, "proxy": rest[:CAPS["proxy"]]}
