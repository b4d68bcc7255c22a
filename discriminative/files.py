"""Text tasks from a user's own files (merging/benchmark/files.py has the splits, sources and labels): each task
adds its text column, or two for a sentence pair.

    files:
      sentiment: {proxy: data/sentiment_proxy.jsonl, test: data/sentiment_test.jsonl, text: sentence,
                  label: label, num_labels: 2}
      entailment: {proxy: data/nli.csv, text: [premise, hypothesis], num_labels: 3,
                   label_names: [entailment, neutral, contradiction]}
"""
from __future__ import annotations

import functools

from pydantic import Field, field_validator

from merging.benchmark.files import TaskFiles, split_rows
from merging.errors import MergeError
from merging.io.tables import require_columns

from .data import Example


class FileTask(TaskFiles):
    text: list[str] = Field(min_length=1, max_length=2)

    @field_validator("text", mode="before")
    @classmethod
    def _one_column(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


def examples(task: FileTask, name: str, split: str) -> list[Example]:
    """The examples of ``split`` of task ``name``; read once per process."""
    return _read(task.model_dump_json(), name, split)


@functools.cache
def _read(task_json: str, name: str, split: str) -> list[Example]:
    task = FileTask.model_validate_json(task_json)
    rows, where = split_rows(task, name, split)
    require_columns(rows, [*task.text, task.label], where)

    def text(row: dict, index: int, column: str) -> str:
        value = row[column]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise MergeError(f"{where}: row {index}, column {column!r}: expected text, got {value!r}")
        return str(value)
    return [Example(text(row, i, task.text[0]), task.label_of(row[task.label], f"{where}: row {i}, column "
                                                                              f"{task.label!r}"),
                    text(row, i, task.text[1]) if len(task.text) > 1 else None)
            for i, row in enumerate(rows, 1)]
