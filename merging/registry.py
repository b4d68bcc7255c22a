"""Merge methods by name: ``@register("ties", paper=URL)`` on a Method subclass."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from .errors import MergeError

if TYPE_CHECKING:
    from .methods.base import Method

M = TypeVar("M", bound="type[Method]")
METHODS: dict[str, type["Method"]] = {}


def register(name: str, paper: str) -> Callable[[M], M]:
    """Register a Method class under ``name``; ``paper`` is the URL of the formula it implements."""

    def decorate(cls: M) -> M:
        if name in METHODS:
            raise RuntimeError(f"merge method '{name}' is registered twice")
        cls.name, cls.paper = name, paper
        METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type["Method"]:
    """The Method class registered as ``name``; an unknown name lists the known ones."""
    from . import methods  # noqa: F401  (importing registers every method)

    if name not in METHODS:
        raise MergeError(f"unknown merge method '{name}'; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]
