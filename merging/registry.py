"""Merge methods by name: ``@register("ties", paper=URL)`` on a Method subclass."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .errors import MergeError

if TYPE_CHECKING:
    from .methods.base import Method

M = TypeVar("M", bound="type[Method]")
METHODS: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class AdapterMethod:
    """A method whose inputs and output are LoRA adapters rather than full weights (e.g. FroM-LoRA)."""

    name: str
    paper: str
    Params: type
    run: Callable[..., dict]


ADAPTER_METHODS: dict[str, AdapterMethod] = {}


def register_adapter_method(name: str, paper: str, params: type, run: Callable[..., dict]) -> None:
    if name in METHODS or name in ADAPTER_METHODS:
        raise RuntimeError(f"merge method '{name}' is registered twice")
    ADAPTER_METHODS[name] = AdapterMethod(name, paper, params, run)


def register(name: str, paper: str) -> Callable[[M], M]:
    """Register a Method class under ``name``; ``paper`` is the URL of the formula it implements."""

    def decorate(cls: M) -> M:
        if name in METHODS:
            raise RuntimeError(f"merge method '{name}' is registered twice")
        cls.name, cls.paper = name, paper
        METHODS[name] = cls
        return cls

    return decorate


def known_methods() -> list[str]:
    from . import methods  # noqa: F401  (importing registers every method)

    return sorted([*METHODS, *ADAPTER_METHODS])


def get_method(name: str) -> type[Method] | AdapterMethod:
    """The method registered as ``name``; an unknown name lists the known ones."""
    known = known_methods()
    if name not in known:
        raise MergeError(f"unknown merge method '{name}'; known methods: {', '.join(known)}")
    return METHODS.get(name) or ADAPTER_METHODS[name]
