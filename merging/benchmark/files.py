"""Tasks from a user's own files, for every classification domain: a pool with ``data: files`` and a ``files:``
section, or the ``data:`` section of a merge config (``python -m merging merge``; merging/data_merge.py). Each
task names a local JSONL / JSON / CSV / parquet file (merging/io/tables.py) or a hub data set's split per split,
its label column, and the columns of its inputs (a domain's subclass of ``TaskFiles`` adds them):

    proxy: data/sentiment_proxy.jsonl     # labelled examples the data-driven methods read (required)
    validation: data/sentiment_val.jsonl  # held-out choice (grids, greedy soup)
    test: data/sentiment_test.jsonl       # scores; AdaMerging's unlabelled inputs
    train: data/sentiment_train.jsonl     # fine-tuning; FW soft's fresh draws

A split without a source is an error when it is read (a benchmark pool scores on ``test`` and chooses on
``validation``); the merge command line fills ``test`` and ``train`` with the proxy (merge_data.py).
    label: label                          # integers 0 … num_labels − 1, or names listed in label_names
    num_labels: 2

A split may be a hub data set's instead of a file: ``{hub: REPO, name: CONFIG, split: "train[:100]"}``
(``datasets.load_dataset``). Every value is checked when the split is read, each error naming the file, the row
and the value."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from merging.errors import MergeError
from merging.io.tables import read_table

from .domain import TaskSpec


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


class TaskFiles(BaseModel):
    """One task's sources and labels; a domain adds its input columns."""

    model_config = ConfigDict(extra="forbid")
    proxy: Source
    validation: Source | None = None
    test: Source | None = None
    train: Source | None = None
    label: str = "label"
    num_labels: int = Field(gt=0)  # 1 for regression
    label_names: list[str] = []    # label values given as names, in index order
    kind: Literal["classification", "regression"] = "classification"
    metric: Literal["accuracy", "matthews", "f1_acc", "pearson_spearman"] = "accuracy"

    def source(self, split: str) -> Source:
        """The source of ``split``; a split without one is a MergeError."""
        found = getattr(self, split, None) if split in ("proxy", "validation", "test", "train") else None
        if found is None:
            raise MergeError(f"no '{split}' file for this task; add '{split}: FILE' under its files entry")
        return found

    def spec(self, name: str) -> TaskSpec:
        return TaskSpec(name, self.kind, self.num_labels, self.metric, tuple(self.label_names))

    def label_of(self, value: object, where: str) -> int | float:
        """A label as the head reads it: a class index in [0, num_labels) (an integer, its text, or one of
        ``label_names``), or a number for regression; else a MergeError at ``where`` (file, row, column)."""
        if self.kind == "regression":
            try:
                return float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise MergeError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, str) and value in self.label_names:
            return self.label_names.index(value)
        try:
            index = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
        except (TypeError, ValueError):
            index = None
        if index is None or not 0 <= index < self.num_labels:
            names = f" or one of {self.label_names}" if self.label_names else ""
            raise MergeError(f"{where}: label {value!r} does not fit a head of {self.num_labels} labels "
                             f"(expected an integer 0 … {self.num_labels - 1}{names})")
        return index


def split_rows(task: TaskFiles, name: str, split: str) -> tuple[list[dict[str, Any]], str]:
    """(rows, where they come from) of ``split`` of task ``name``: a local table or a hub data set's split."""
    try:
        source = task.source(split)
    except MergeError as err:
        raise MergeError(f"task '{name}': {err}") from None
    return rows_of(source), str(source)


def rows_of(source: Source) -> list[dict[str, Any]]:
    """The rows of a local table file or of a hub data set's split."""
    if isinstance(source, HubSplit):
        from .hub_data import load_hub_dataset

        return list(load_hub_dataset(source.hub, source.name, source.split))
    return read_table(source)
