"""The body / head split of a task model: the body (every tensor outside the head patterns) is what a merge
replaces; the head stays each task's own."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from merging.errors import MergeError
from merging.io.candidates import CheckpointSource


def is_head(name: str, head: list[str]) -> bool:
    return any(re.search(pattern, name) for pattern in head)


def read_body(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Tensors ``names`` of the merged (or base) checkpoint in ``folder``; missing ones are an error."""
    with CheckpointSource(folder, names) as source:
        return {name: source.read(name) for name in names}


def with_merged_body(model: torch.nn.Module, body: dict[str, torch.Tensor], head: list[str]) -> torch.nn.Module:
    """Replace every non-head tensor of ``model`` (parameters and buffers) by the tensor of the same name in
    ``body``."""
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
