"""Tasks from a user's own files: a pool with ``data: files`` and a ``files:`` section, or the ``data:`` section of
a merge config (``python -m merging merge``; merging/data_merge.py). Each task names a local JSONL / JSON / CSV /
parquet file per split (merging/io/tables.py), its text column (two for a sentence pair) and its label column:

    files:
      sentiment:
        proxy: data/sentiment_proxy.jsonl     # labelled examples the data-driven methods read (required)
        validation: data/sentiment_val.jsonl  # held-out choice (grids, greedy soup); default: none
        test: data/sentiment_test.jsonl       # scores; AdaMerging's unlabelled inputs (default: the proxy's)
        train: data/sentiment_train.jsonl     # fine-tuning; FW soft's fresh draws (default: the proxy)
                                              # a split may also be a hub data set's: {hub: REPO, name: CONFIG,
                                              #   split: "train[:100]"} (datasets.load_dataset)
        text: sentence                        # or [premise, hypothesis]
        label: label                          # integers 0 … num_labels − 1, or names listed in label_names
        num_labels: 2

Every value is checked when the split is read, each error naming the file, the row and the value."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from merging.benchmark.domain import TaskSpec
from merging.errors import MergeError
from merging.io.tables import read_table, require_columns

from .data import Example

FALLBACK = {"test": "proxy", "train": "proxy"}  # a split without its own file reads these


class HubSplit(BaseModel):
    """A split of a Hugging Face hub data set (``datasets.load_dataset(hub, name, split=split)``), e.g.
    ``{hub: nyu-mll/glue, name: sst2, split: "train[:100]"}``; needs hub access or its cached copy."""

    model_config = ConfigDict(extra="forbid")
    hub: str = Field(min_length=1)
    name: str | None = None
    split: str = "train"

    def __str__(self) -> str:
        return f"hub data set {self.hub}" + (f" ({self.name})" if self.name else "") + f", split {self.split}"


Source = Path | HubSplit


class FileTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proxy: Source
    validation: Source | None = None
    test: Source | None = None
    train: Source | None = None
    text: list[str] = Field(min_length=1, max_length=2)
    label: str = "label"
    num_labels: int = Field(gt=0)  # 1 for regression
    label_names: list[str] = []    # label values given as names, in index order
    kind: Literal["classification", "regression"] = "classification"
    metric: Literal["accuracy", "matthews", "f1_acc", "pearson_spearman"] = "accuracy"

    @field_validator("text", mode="before")
    @classmethod
    def _one_column(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    def file(self, split: str) -> Source:
        """The file of ``split`` (or of its ``FALLBACK``); a split without one is a MergeError."""
        path = getattr(self, split, None) if split in ("proxy", "validation", "test", "train") else None
        if path is None and split in FALLBACK:
            return self.file(FALLBACK[split])
        if path is None:
            raise MergeError(f"no '{split}' file for this task; add '{split}: FILE' under its files entry")
        return path


def spec(task: FileTask, name: str) -> TaskSpec:
    return TaskSpec(name, task.kind, task.num_labels, task.metric, tuple(task.label_names))


def examples(task: FileTask, name: str, split: str) -> list[Example]:
    """The examples of ``split`` of task ``name``; read once per process."""
    try:
        task.file(split)  # a split without a file is named with its task
    except MergeError as err:
        raise MergeError(f"task '{name}': {err}") from None
    return _read(task.model_dump_json(), split)


def rows_of(source: Source) -> list[dict]:
    """The rows of a local table file or of a hub data set's split."""
    if isinstance(source, HubSplit):
        from merging.benchmark.hub_data import load_hub_dataset

        return list(load_hub_dataset(source.hub, source.name, source.split))
    return read_table(source)


@functools.cache
def _read(task_json: str, split: str) -> list[Example]:
    task = FileTask.model_validate_json(task_json)
    source = task.file(split)
    path = str(source)
    rows = rows_of(source)
    require_columns(rows, [*task.text, task.label], path)
    return [Example(*(_string(row[c], path, i, c) for c in task.text[:1]), _label(task, row[task.label], path, i),
                    *(_string(row[c], path, i, c) for c in task.text[1:]))
            for i, row in enumerate(rows, 1)]


def _string(value: object, path: str, row: int, column: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise MergeError(f"{path}: row {row}, column {column!r}: expected text, got {value!r}")
    return str(value)


def _label(task: FileTask, value: object, path: str, row: int) -> int | float:
    """A label as the head reads it: a class index in [0, num_labels) (an integer, its text, or one of
    ``label_names``), or a number for regression."""
    where = f"{path}: row {row}, column {task.label!r}"
    if task.kind == "regression":
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise MergeError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(value, str) and value in task.label_names:
        return task.label_names.index(value)
    try:
        index = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        index = None
    if index is None or not 0 <= index < task.num_labels:
        names = f" or one of {task.label_names}" if task.label_names else ""
        raise MergeError(f"{where}: label {value!r} does not fit a head of {task.num_labels} labels "
                         f"(expected an integer 0 … {task.num_labels - 1}{names})")
    return index
