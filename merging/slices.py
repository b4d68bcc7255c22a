"""mergekit's slices: an output model assembled from layer ranges of its inputs (mergekit 0.1.5 plan.py).

A config's ``slices`` list the output's layers in order. Slice s spans L_s layers; its layer i (output layer
o_s + i, o_s = Σ_{s'<s} L_s') merges layer start_j + i of each source j, with the base's layer taken from
``base_range`` (the base's own source in mergekit's YAML). So one slice over every layer is the plain merge,
a partial range drops layers, and several slices stack them: with ``passthrough`` (one source per slice)
that is a "frankenmerge".

Per slice, parameters resolve as mergekit resolves them: a source's own > the slice's > the top level; a
gradient's depth is the position in the slice, t = i/(L_s − 1) (t = 1 for a one-layer slice). Tensors
outside the layers are merged at t = 0 from the first slice's sources and parameters (embeddings: names
holding "embed") or from the last slice's (final norm, output head), as mergekit's pre- and post-weights are.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import DTYPES, LAYER, MergeConfig, ModelEntry, Slice, count_layers
from .engine import Sources, TensorPlan
from .errors import MergeError
from .io.checkpoint import Checkpoint
from .io.safetensors_io import TensorInfo
from .methods.base import Method


def layer_of(name: str) -> int | None:
    match = LAYER.search(name)
    return int(match[1]) if match else None


def renumbered(name: str, layer: int) -> str:
    """``name`` with its (first) layer index replaced by ``layer``."""
    match = LAYER.search(name)
    return name if match is None else f"{name[:match.start(1)]}{layer}{name[match.end(1):]}"


class ShiftedLayers(Checkpoint):
    """``inner`` read under output names: output layer ``out_first + i`` is ``inner``'s layer ``first + i``;
    tensors outside the layers keep their names."""

    def __init__(self, inner: Checkpoint, first: int, out_first: int) -> None:
        super().__init__(inner.path, inner.config)
        self.inner, self.shift = inner, first - out_first
        self.infos = inner.infos

    def source_name(self, name: str) -> str:
        layer = layer_of(name)
        return name if layer is None else renumbered(name, layer + self.shift)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.inner.read(self.source_name(name), start, stop)

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        self.inner.read_into(self.source_name(name), start, stop, out)

    def describe(self, name: str) -> str:
        return self.inner.describe(self.source_name(name))


@dataclass
class SlicePart:
    """One slice resolved against the opened checkpoints: where its layers go and what merges them."""

    index: int
    out_first: int
    length: int
    sources: Sources          # base and merged models as views under output names
    config: MergeConfig       # the top-level config with this slice's models and parameters


def _part(cfg: MergeConfig, index: int, piece: Slice, out_first: int, opened: dict[str, Checkpoint],
          device: torch.device, uses_base: bool) -> SlicePart:
    """Slice ``index`` with views of its checkpoints. Without ``base_range`` the slice's first source stands
    in for the base (copied tensors come from it): only for methods that do not read the base."""
    if piece.base_range is None and uses_base:
        raise MergeError(f"slices[{index}]: method '{cfg.method}' reads the base model's layers, but the slice "
                         f"does not say which: list base_model '{cfg.base}' among its sources with its layer_range")
    stand_in = piece.sources[0]
    base_ref, base_range = (cfg.base, piece.base_range) if piece.base_range else (stand_in.model,
                                                                                  stand_in.layer_range)
    for ref, (start, end), what in [*((s.model, s.layer_range, f"source '{s.model}'") for s in piece.sources),
                                    (base_ref, base_range, f"base '{base_ref}'")]:
        layers = count_layers(list(opened[ref].infos))
        if end > layers:
            raise MergeError(f"slices[{index}]: the {what} has {layers} layers; its layer_range [{start}, {end}] "
                             "goes past them")
    base = ShiftedLayers(opened[base_ref], base_range[0], out_first)
    models = [ShiftedLayers(opened[s.model], s.layer_range[0], out_first) for s in piece.sources]
    config = cfg.model_copy(update={
        "parameters": {**cfg.parameters, **piece.parameters},
        "models": [ModelEntry(model=s.model, parameters=s.parameters) for s in piece.sources]})
    return SlicePart(index, out_first, piece.length, Sources(base, models, DTYPES[cfg.dtype], device), config)


def plan_slices(cfg: MergeConfig, opened: dict[str, Checkpoint], device: torch.device, uses_base: bool,
                method_for: Callable[[MergeConfig, str, float], Method | None]) -> list[TensorPlan]:
    """The tensor plans of a sliced merge. ``method_for(config, name, t)``: the method of output tensor ``name``
    under a slice's config at depth t, or None when it is copied."""
    parts, out_first = [], 0
    for index, piece in enumerate(cfg.slices or []):
        parts.append(_part(cfg, index, piece, out_first, opened, device, uses_base))
        out_first += piece.length
    plans = []

    def plan(part: SlicePart, out_name: str, info: TensorInfo, t: float) -> None:
        out_dtype = DTYPES[cfg.out_dtype] if cfg.out_dtype and info.dtype.is_floating_point else info.dtype
        method = method_for(part.config, out_name, t) if info.dtype.is_floating_point else None
        if method is not None:
            for model in part.sources.models:
                other = model.inner.infos.get(model.source_name(out_name))
                if other is None or other.shape != info.shape:
                    found = "missing" if other is None else f"of shape {list(other.shape)}"
                    raise MergeError(f"slices[{part.index}]: {model.describe(out_name)} is {found}; the base's "
                                     f"is {list(info.shape)}")
        plans.append(TensorPlan(TensorInfo(out_name, info.shape, out_dtype), out_dtype, method, part.sources))

    for name, info in opened[cfg.base].infos.items():  # outside the layers, at t = 0 (module docstring)
        if layer_of(name) is None:
            plan(parts[0] if "embed" in name else parts[-1], name, info, 0.0)
    for part in parts:
        base = part.sources.base
        for i in range(part.length):
            layer = base.shift + part.out_first + i  # the base's layer behind output layer out_first + i
            t = i / (part.length - 1) if part.length > 1 else 1.0
            for name, info in base.inner.infos.items():
                if layer_of(name) == layer:
                    plan(part, renumbered(name, part.out_first + i), info, t)
    return plans
