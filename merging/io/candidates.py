"""Candidate pools for the data-driven merge methods: a candidate is a named collection of tensors read one
tensor at a time, so a method can visit a pool of any size while holding a single candidate tensor.

A source is anything with ``names`` (the tensors it holds), ``shape(name)`` (known without reading) and
``read(name)`` (the whole tensor, shaped). Two ship here: ``InMemorySource`` over a dict of tensors and
``CheckpointSource`` over ``merging.io.checkpoint.open_checkpoint`` (safetensors, ``.bin``, hub ids); tests
add their own (e.g. one that counts reads).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..errors import MergeError
from .checkpoint import Checkpoint, open_checkpoint


@runtime_checkable
class TensorSource(Protocol):
    names: list[str]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` (without reading it)."""
        ...

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, whole and shaped; the caller drops it before reading the next one."""
        ...


class InMemorySource:
    """Tensors already in memory (tests, a merge held by the caller); ``read`` returns them uncopied."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str = "in-memory tensors") -> None:
        self.tensors = dict(tensors)
        self.names = list(self.tensors)
        self.label = label

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def read(self, name: str) -> torch.Tensor:
        return self._get(name)

    def _get(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise MergeError(f"{self.label}: no tensor '{name}'")
        return self.tensors[name]


class CheckpointSource:
    """A checkpoint on disk (or a hub id), opened lazily: only the header is read until ``read(name)``.
    ``names`` restricts the source to those tensors (e.g. the body without the heads)."""

    def __init__(self, ref: str | Path | Checkpoint, names: Iterable[str] | None = None) -> None:
        self.checkpoint = ref if isinstance(ref, Checkpoint) else open_checkpoint(str(ref))
        infos = self.checkpoint.infos
        self.names = list(infos) if names is None else list(names)
        missing = [n for n in self.names if n not in infos]
        if missing:
            self.checkpoint.close()
            raise MergeError(f"{self.checkpoint.path}: has no tensor(s) {missing[:5]}")

    def shape(self, name: str) -> tuple[int, ...]:
        info = self.checkpoint.infos.get(name)
        if info is None:
            raise MergeError(f"{self.checkpoint.path}: no tensor '{name}'")
        return tuple(info.shape)

    def read(self, name: str) -> torch.Tensor:
        return self.checkpoint.read(name).reshape(self.shape(name))  # [*shape]

    def close(self) -> None:
        self.checkpoint.close()

    def __enter__(self) -> CheckpointSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_source(value: TensorSource | Mapping[str, torch.Tensor], label: str) -> TensorSource:
    """A source as is; a dict of tensors wrapped in ``InMemorySource``; anything else is an error."""
    if isinstance(value, Mapping):
        return InMemorySource(value, label)
    if isinstance(value, TensorSource):
        return value
    raise MergeError(f"{label}: expected a dict of tensors or a tensor source (names, shape, read), "
                     f"got {type(value).__name__}")
