"""Where a pool's tasks come from: ``data: offline`` (packaged data sets, discriminative/data.py) or
``data: glue`` (the paper's GLUE via ``datasets``). A provider is (spec of a task, examples of a split)."""
from __future__ import annotations

from collections.abc import Callable

from merging.errors import MergeError

from .data import Example, TaskSpec

Provider = tuple[Callable[[str], TaskSpec], Callable[[str, str], list[Example]]]


def _offline() -> Provider:
    from .data import load_split, task_spec

    return task_spec, load_split


def _glue() -> Provider:
    from .glue import glue_spec, glue_split

    return glue_spec, glue_split


PROVIDERS: dict[str, Callable[[], Provider]] = {"offline": _offline, "glue": _glue}


def provider(data: str) -> Provider:
    if data not in PROVIDERS:
        raise MergeError(f"unknown data source '{data}'; known: {', '.join(PROVIDERS)}")
    return PROVIDERS[data]()


def spec(data: str, task: str) -> TaskSpec:
    return provider(data)[0](task)


def examples(data: str, task: str, split: str) -> list[Example]:
    return provider(data)[1](task, split)
