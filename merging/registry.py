"""Every merge method, by name, in one table: what it is (its paper), what kind of merge it is, the schema of its
parameters and the data it reads. Command lines, runners and grids look methods up here, nowhere else.

Four kinds share the table:

- ``per_tensor``: a ``Method`` subclass (merging/methods/base.py) run tensor by tensor by the streaming engine on
  full checkpoints, and on LoRA adapters through their ΔW; registered with ``@register(name, paper)``.
- ``adapter``: LoRA adapters in, one adapter out (FroM-LoRA); ``implementation(adapters, params, *, seed,
  progress) -> AdapterMerge`` (merging/methods/base.py); the caller writes the peft folder.
- ``data_driven``: reads data through the ``Objective`` protocol (merging/objective.py);
  ``implementation(inputs: DataDrivenInputs) -> DataDrivenResult`` (merging/methods/base.py).
- ``routed``: reads data like the data-driven kind but yields a model whose weights depend on its input (a router
  mixes experts per example), not one set of weights: ``implementation(inputs: DataDrivenInputs) ->
  RoutedModel`` (merging/methods/base.py); only the benchmarks run it, example by example.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .errors import MergeError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .methods.base import Method

Kind = Literal["per_tensor", "adapter", "data_driven", "routed"]
M = TypeVar("M", bound="type[Method]")


@dataclass(frozen=True)
class MethodSpec:
    """One registered method. ``Params``: its method-level parameter schema; ``ModelParams``: the per-model one
    (per-tensor methods; ``None`` otherwise); ``data``: what it reads beyond the checkpoints (``"none"`` for the
    data-free ones); ``lora``: whether it merges LoRA adapters (generative pools, ``kind: lora``)."""

    name: str
    paper: str
    kind: Kind
    Params: type[BaseModel]
    implementation: Any
    data: str = "none"
    ModelParams: type[BaseModel] | None = None
    lora: bool = False

    @property
    def method_class(self) -> type[Method]:
        """The ``Method`` subclass of a per-tensor method."""
        if self.kind != "per_tensor":
            raise MergeError(f"method '{self.name}' is a {self.kind} merge, not a per-tensor one")
        return self.implementation

    def schemas(self) -> tuple[type[BaseModel], ...]:
        """The schemas a request's parameters are checked against: the method's own, then the per-model one
        (a per-model key given with the method's parameters is every model's default)."""
        return (self.Params,) if self.ModelParams is None else (self.Params, self.ModelParams)


METHODS: dict[str, MethodSpec] = {}


def _add(spec: MethodSpec) -> None:
    if spec.name in METHODS:
        raise RuntimeError(f"merge method '{spec.name}' is registered twice")
    METHODS[spec.name] = spec


def register(name: str, paper: str) -> Callable[[M], M]:
    """Register a per-tensor ``Method`` class under ``name``; ``paper`` is the URL of the formula it implements.
    Every per-tensor method also merges LoRA adapters (on their ΔW, generative/merge.py)."""

    def decorate(cls: M) -> M:
        cls.name, cls.paper = name, paper
        _add(MethodSpec(name, paper, "per_tensor", cls.Params, cls, ModelParams=cls.ModelParams, lora=True))
        return cls

    return decorate


def register_adapter_method(name: str, paper: str, params: type[BaseModel], merge: Callable[..., Any]) -> None:
    """Register a method whose inputs and output are LoRA adapters: ``merge(adapters, params, *, seed, progress)
    -> AdapterMerge`` (the merged factors, rank, alpha and a summary; ``run.run_adapter_merge`` writes them)."""
    _add(MethodSpec(name, paper, "adapter", params, merge, lora=True))


def register_data_driven(name: str, paper: str, params: type[BaseModel], merge: Callable[..., Any], data: str,
                         lora: bool = False) -> None:
    """Register a method that reads data: ``merge(inputs: DataDrivenInputs) -> DataDrivenResult``; ``data`` says
    which splits it reads, ``lora`` whether it also merges LoRA adapters."""
    _add(MethodSpec(name, paper, "data_driven", params, merge, data=data, lora=lora))


def methods(kind: Kind | None = None) -> list[MethodSpec]:
    """Every registered method (of ``kind``), by name."""
    from . import methods as _  # noqa: F401  (importing the package registers every method)

    return [METHODS[name] for name in sorted(METHODS) if kind is None or METHODS[name].kind == kind]


def known_methods(kind: Kind | None = None) -> list[str]:
    return [spec.name for spec in methods(kind)]


def get_method(name: str, *kinds: Kind) -> MethodSpec:
    """The method registered as ``name``; an unknown name, or one of another kind than ``kinds`` (when given),
    is a MergeError that lists the methods of the kinds asked for."""
    known = {spec.name: spec for spec in methods()}
    spec = known.get(name)
    wanted = ", ".join(n for n, s in known.items() if not kinds or s.kind in kinds)
    if spec is None:
        raise MergeError(f"unknown merge method '{name}'; known methods: {wanted}")
    if kinds and spec.kind not in kinds:
        why = (" (its model is a body per input, with no single checkpoint to write: run it on a benchmark pool, "
               "python -m discriminative|vision run --method " + name + ")") if spec.kind == "routed" else ""
        raise MergeError(f"merge method '{name}' is a {spec.kind} merge, which this command does not run{why}; "
                         f"methods here: {wanted}")
    return spec


def register_routed(name: str, paper: str, params: type[BaseModel], build: Callable[..., Any], data: str) -> None:
    """Register a method that builds a routed model from data: ``build(inputs: DataDrivenInputs) -> RoutedModel``
    (the shared body, the experts and the router); ``data`` says which splits it reads."""
    _add(MethodSpec(name, paper, "routed", params, build, data=data))
