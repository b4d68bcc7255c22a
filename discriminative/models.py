"""Sequence classifiers for the discriminative domain: loading, tokenising, the head boundary, and
assembling "merged encoder + this task's head" models for evaluation."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from merging.candidates import CheckpointSource
from merging.errors import MergeError

from .data import Example, TaskSpec


def is_head(name: str, head: list[str]) -> bool:
    return any(re.search(pattern, name) for pattern in head)


def load_classifier(folder: str | Path, spec: TaskSpec | None = None) -> PreTrainedModel:
    """A sequence classifier from a local folder (no remote code). With ``spec`` a fresh head of the task's
    size is created (base encoder -> task model); without, the folder's own head is used."""
    if spec is None:
        return AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    config = AutoConfig.from_pretrained(str(folder))
    config.num_labels = spec.num_labels
    config.problem_type = "regression" if spec.kind == "regression" else "single_label_classification"
    return AutoModelForSequenceClassification.from_pretrained(str(folder), config=config,
                                                              ignore_mismatched_sizes=True).eval()


def load_tokenizer(folder: str | Path):
    return AutoTokenizer.from_pretrained(str(folder))


def read_body(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Tensors ``names`` of the merged (or base) checkpoint in ``folder``; missing ones are an error."""
    with CheckpointSource(folder, names) as source:
        return {name: source.read(name) for name in names}


def with_merged_body(model: PreTrainedModel, body: dict[str, torch.Tensor], head: list[str]) -> PreTrainedModel:
    """Replace every non-head parameter of ``model`` by the tensor of the same name in ``body``."""
    state = model.state_dict()
    update = {}
    for name in (n for n in state if not is_head(n, head)):
        if name not in body:
            raise MergeError(f"merged weights lack '{name}' (head patterns {head})")
        if body[name].shape != state[name].shape:
            raise MergeError(f"merged '{name}' has shape {list(body[name].shape)}, the task model "
                             f"{list(state[name].shape)}")
        update[name] = body[name].to(state[name].dtype)
    model.load_state_dict(update, strict=False)
    return model


def encode(tokenizer, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise (pairs when present) to padded tensors, plus ``labels``."""
    pairs = [e.text_pair for e in examples]
    batch = tokenizer([e.text for e in examples], pairs if any(p is not None for p in pairs) else None,
                      truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([e.label for e in examples])
    return batch
