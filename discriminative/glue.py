"""GLUE, the FW-Merging paper's discriminative benchmark (8 tasks, roberta-base checkpoints), loaded with
``datasets`` from the Hugging Face Hub for users who have it (offline it fails with what to download).

Splits as in the paper's evaluation: ``test`` = the GLUE validation split (labels of GLUE test are hidden),
capped at 1001 examples; ``validation`` (hyper-parameter choice) = 300 examples held out of GLUE train;
``train`` = up to 2000 other GLUE train examples; ``proxy`` = the first 100 of ``train``. Seeded (seed 0).
Metrics: CoLA Matthews; MRPC/QQP mean(accuracy, F1); STS-B mean(Pearson, Spearman); others accuracy.
"""
from __future__ import annotations

import random
from typing import Any

from merging.benchmark.hub_data import load_hub_dataset
from merging.errors import MergeError

from .data import Example, TaskSpec

# task -> (spec, text field, pair field or None, GLUE validation split name)
GLUE: dict[str, tuple[TaskSpec, str, str | None, str]] = {
    "cola": (TaskSpec("cola", "classification", 2, "matthews"), "sentence", None, "validation"),
    "sst2": (TaskSpec("sst2", "classification", 2, "accuracy"), "sentence", None, "validation"),
    "mrpc": (TaskSpec("mrpc", "classification", 2, "f1_acc"), "sentence1", "sentence2", "validation"),
    "stsb": (TaskSpec("stsb", "regression", 1, "pearson_spearman"), "sentence1", "sentence2", "validation"),
    "qqp": (TaskSpec("qqp", "classification", 2, "f1_acc"), "question1", "question2", "validation"),
    "mnli": (TaskSpec("mnli", "classification", 3, "accuracy"), "premise", "hypothesis", "validation_matched"),
    "qnli": (TaskSpec("qnli", "classification", 2, "accuracy"), "question", "sentence", "validation"),
    "rte": (TaskSpec("rte", "classification", 2, "accuracy"), "sentence1", "sentence2", "validation"),
}
HUB_DATASET = "nyu-mll/glue"
CAPS = {"test": 1001, "validation": 300, "train": 2000, "proxy": 100}


def glue_spec(task: str) -> TaskSpec:
    if task not in GLUE:
        raise MergeError(f"unknown GLUE task '{task}'; known: {', '.join(GLUE)}")
    return GLUE[task][0]


def _load(task: str, split: str) -> Any:
    return load_hub_dataset(HUB_DATASET, task, split)


def glue_split(task: str, split: str, seed: int = 0) -> list[Example]:
    """Examples of one GLUE task for our split names (see the module docstring)."""
    spec, text, pair, validation_name = GLUE[task][0], *GLUE[task][1:]
    if split not in CAPS:
        raise MergeError(f"unknown split '{split}'; expected one of {sorted(CAPS)}")

    def example(row: dict[str, Any]) -> Example:
        label = float(row["label"]) if spec.kind == "regression" else int(row["label"])
        return Example(row[text], label, row[pair] if pair else None)

    if split == "test":
        rows = _load(task, validation_name)
        return [example(rows[i]) for i in range(min(len(rows), CAPS["test"]))]
    rows = _load(task, "train")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out, rest = order[:CAPS["validation"]], order[CAPS["validation"]:]
    chosen = held_out if split == "validation" else rest[:CAPS[split]]
    return [example(rows[i]) for i in chosen]
