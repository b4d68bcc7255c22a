"""The text domain's plug-in for merging/benchmark: sequence classifiers (transformers), their tokenizer,
tokenised batches, and mean-pooled encoder features for the probe."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from merging.benchmark.domain import Domain, TaskSpec
from merging.logs import fresh_head_load

from . import files, tasks
from .data import Example


def load_classifier(folder: str | Path, spec: TaskSpec | None = None) -> PreTrainedModel:
    """A sequence classifier from a local folder (no remote code). With ``spec`` a fresh head of the task's
    size is created (base encoder -> task model); without, the folder's own head is used."""
    if spec is None:
        return AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    config = AutoConfig.from_pretrained(str(folder))
    config.num_labels = spec.num_labels
    config.problem_type = "regression" if spec.kind == "regression" else "single_label_classification"
    with fresh_head_load():
        return AutoModelForSequenceClassification.from_pretrained(str(folder), config=config,
                                                                  ignore_mismatched_sizes=True).eval()


def encode(tokenizer, examples: Sequence[Example], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise (pairs when present) to padded tensors, plus ``labels``."""
    pairs = [e.text_pair for e in examples]
    batch = tokenizer([e.text for e in examples], pairs if any(p is not None for p in pairs) else None,
                      truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([e.label for e in examples])
    return dict(batch)


class TextDomain(Domain):
    name = "discriminative"

    def spec(self, pool, task: str) -> TaskSpec:
        if pool.data == "files":
            return pool.files[task].spec(task)
        return tasks.spec(pool.data, task)

    def examples(self, pool, task: str, split: str) -> list[Example]:
        if pool.data == "files":
            return files.examples(pool.files[task], task, split)
        return tasks.examples(pool.data, task, split)

    def load_model(self, pool, folder: Path, task: str, fresh_head: bool = False) -> PreTrainedModel:
        return load_classifier(folder, self.spec(pool, task) if fresh_head else None)

    def save_model(self, model: torch.nn.Module, processor: Any, folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    def processor(self, pool, folder: Path):
        return AutoTokenizer.from_pretrained(str(folder))

    def collate(self, pool, processor, examples: Sequence[Example], train: bool = False) -> dict[str, torch.Tensor]:
        return encode(processor, examples, pool.max_length)

    @torch.no_grad()
    def features(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = model.base_model(input_ids=inputs["input_ids"],
                                  attention_mask=inputs["attention_mask"]).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden)  # [b, t, 1]
        return (hidden * mask).sum(1) / mask.sum(1)  # mean pooling, [b, d]

    def cost(self, pool, task: str, processor) -> float:
        """Train tokens after truncation to ``max_length`` (pairs jointly): what a step's compute follows (a
        2,000-example headline task costs a fifth of a 2,000-review one)."""
        return float(encode(processor, self.examples(pool, task, "train"), pool.max_length)["attention_mask"].sum())

    @staticmethod
    def sort_key(example: Example) -> float:
        return len(example.text) + len(example.text_pair or "")

    def prepare(self, pool) -> None:
        from merging.errors import MergeError

        from .data import prepare

        if pool.data != "offline":
            raise MergeError(f"pool '{pool.name}' uses data '{pool.data}', which is loaded on first use")
        prepare(pool.tasks)


TEXT = TextDomain()
