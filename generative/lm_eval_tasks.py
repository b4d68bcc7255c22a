"""Local lm-eval tasks: each task is a JSONL file of examples beside a task YAML that reads it
(``dataset_path: json``), so lm-eval runs with no hub access.

Two kinds, as lm-eval scores them:

* ``exact_match`` — ``generate_until``: greedy decoding of the prompt up to a newline (at most
  ``max_gen_toks`` tokens), surrounding whitespace stripped, then 1 if the text equals ``target`` else 0;
* ``multiple_choice`` — the log-likelihood of each choice after the prompt (lm-eval's default delimiter, one
  space, joins them); 1 if the most likely choice is ``choices[label]``: ``acc``.

A task's score is the mean over its examples.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from merging.errors import MergeError
from merging.io.atomic import atomic_directory

Kind = Literal["exact_match", "multiple_choice"]
METRIC = {"exact_match": "exact_match,strip", "multiple_choice": "acc,none"}  # lm-eval's result key per kind


@dataclass(frozen=True)
class LocalTask:
    """One task: ``examples`` are ``{"input", "target"}`` (exact_match) or ``{"input", "choices", "label"}``
    (multiple_choice); ``prompt`` is the Jinja template lm-eval renders for each example."""

    name: str
    kind: Kind
    examples: Sequence[dict[str, Any]]
    prompt: str = "{{input}}"
    max_gen_toks: int = 16
    extra: dict[str, Any] = field(default_factory=dict)  # more YAML keys (e.g. description)

    def check(self) -> None:
        need = {"exact_match": {"input", "target"}, "multiple_choice": {"input", "choices", "label"}}[self.kind]
        if not self.examples:
            raise MergeError(f"task '{self.name}' has no examples")
        for i, example in enumerate(self.examples):
            if not need <= set(example):
                raise MergeError(f"task '{self.name}', example {i}: keys {sorted(example)}, expected {sorted(need)}")
            if self.kind == "multiple_choice" and not 0 <= example["label"] < len(example["choices"]):
                raise MergeError(f"task '{self.name}', example {i}: label {example['label']} is not an index of "
                                 f"its {len(example['choices'])} choices")

    def config(self, data: Path) -> dict[str, Any]:
        """The task YAML (as a dict) reading its examples from ``data``."""
        common = {"task": self.name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                  "test_split": "test", "doc_to_text": self.prompt, **self.extra}
        if self.kind == "multiple_choice":
            return common | {"output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
                             "doc_to_target": "{{label}}",
                             "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
        return common | {
            "output_type": "generate_until", "doc_to_target": "{{target}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": self.max_gen_toks, "do_sample": False},
            "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                          {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}


def write_tasks(tasks: Sequence[LocalTask], folder: Path, overwrite: bool = True) -> Path:
    """``folder/<name>.jsonl`` and ``folder/<name>.yaml`` for every task, written to a temporary folder and
    renamed into place only when all are complete."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise MergeError(f"task names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    folder = Path(folder).absolute()
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        for task in tasks:
            task.check()
            data = tmp / f"{task.name}.jsonl"
            data.write_text("".join(json.dumps(e) + "\n" for e in task.examples))
            config = task.config(folder / data.name)  # the path the file will have after the rename
            (tmp / f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return folder
