"""What a merge method is: per tensor, zero or more statistics passes over the tensor's chunks, then an
element-wise ``combine`` of each chunk. The engine streams chunks from disk; ``merge_in_memory`` runs the
same code on tensors already in memory (tests, data-driven methods).

A data-driven method (merging/registry.py, kind ``data_driven``) is one function of ``DataDrivenInputs``, which
any caller (a benchmark pool, a user's own checkpoints) builds: no domain reaches the method but through the
``Objective`` protocol."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import MergeError
from ..io.candidates import as_source

if TYPE_CHECKING:
    from ..io.candidates import TensorSource
    from ..objective import Objective

Tensors = dict[str, torch.Tensor]


class Params(BaseModel):
    """Base of every parameter schema: unknown keys, non-finite numbers (NaN, ±Inf) and values of another type
    (``true`` or ``"0.5"`` for a number; strict mode still takes an integer for a float) are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False, strict=True)


class NoParams(Params):
    """A method or model entry without parameters."""


DRAW_BLOCK = 1 << 15  # elements per random stream: a random method's draws never depend on the chunking


@dataclass(frozen=True)
class Chunk:
    """Elements ``[start, stop)`` of the flattened tensor ``name``. ``seed`` is the run's seed; random methods
    draw with ``uniform``, whose streams are fixed by (seed, name, block of ``DRAW_BLOCK`` elements), so a
    result is the same however the tensor is chunked, and every pass sees the same draws."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int
    seed: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def uniform(self, rows: int) -> torch.Tensor:
        """U[0, 1) draws for ``rows`` values of each element of the chunk. Block b (elements
        [b·DRAW_BLOCK, (b+1)·DRAW_BLOCK)) draws ``torch.rand((rows, block length))``, row 0 first, from a
        generator seeded with ``chunk_seed(seed, name, b)``; the chunk takes its columns. -> [rows, stop − start]"""
        pieces = []
        for block in range(self.start // DRAW_BLOCK, -(-self.stop // DRAW_BLOCK)):
            first, last = block * DRAW_BLOCK, min((block + 1) * DRAW_BLOCK, self.numel)
            generator = torch.Generator().manual_seed(chunk_seed(self.seed, self.name, block))
            draws = torch.rand((rows, last - first), generator=generator)  # [rows, block length]
            pieces.append(draws[:, max(self.start, first) - first:min(self.stop, last) - first])
        if len(pieces) == 1:
            return pieces[0].contiguous()
        return torch.cat(pieces, 1) if pieces else torch.empty(rows, 0)


def chunks(name: str, shape: tuple[int, ...], chunk_size: int, seed: int, row_aligned: bool = False,
           whole: bool = False) -> list[Chunk]:
    """The chunks of a tensor, ``chunk_size`` elements each (the last shorter). ``row_aligned``: whole rows
    along the last dimension (a whole 1-D tensor), as many as fit, at least one; ``whole``: one chunk."""
    numel = math.prod(shape)
    if whole:
        chunk_size = max(numel, 1)
    elif row_aligned:
        width = shape[-1] if len(shape) >= 2 else max(numel, 1)
        chunk_size = max(width, chunk_size // width * width)
    return [Chunk(name, shape, s, min(s + chunk_size, numel), seed)
            for s in range(0, numel, chunk_size)] or [Chunk(name, shape, 0, 0, seed)]


def chunk_seed(run_seed: int, name: str, index: int) -> int:
    digest = hashlib.blake2b(f"{run_seed}/{name}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class Method:
    """A merge method, instantiated once per tensor with that tensor's resolved parameters.

    Subclasses set ``Params`` (method-level schema), ``ModelParams`` (per-model schema), ``passes`` and
    override ``observe``/``conclude`` (statistics; ``observe`` returns an additive tensor that is summed
    over chunks, and over tensors when ``scope == "model"``) and ``combine`` (the element-wise merge).
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    Params: ClassVar[type[Params]] = NoParams
    ModelParams: ClassVar[type[Params]] = NoParams
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    uses_base: ClassVar[bool] = True  # False: the formula reads only the models (the base supplies copied tensors)
    row_aligned: ClassVar[bool] = False  # True: every chunk holds whole rows (the last dimension), see ``chunks``
    whole_tensor: ClassVar[bool] = False  # True: one chunk per tensor (a matrix decomposition needs all of it)
    # The Params field s in which the merge is affine, θ(s) = θ(0) + s·(θ(1) − θ(0)) with every other parameter
    # fixed (a scale of the merged task vector); None where that is not so or not known.
    affine_in: ClassVar[str | None] = None
    passes: int = 0
    scope: Literal["tensor", "model"] = "tensor"

    def __init__(self, params: Params, model_params: list[Params]) -> None:
        self.params = params
        self.model_params = model_params

    def model_values(self, key: str) -> torch.Tensor:
        """Per-model parameter ``key`` as a float64 vector [n]; a model's None falls back to the method-level
        value of the same name (e.g. a per-model TIES density overriding the global one)."""
        values = [getattr(p, key) for p in self.model_params]
        return torch.tensor([float(getattr(self.params, key) if v is None else v) for v in values],
                            dtype=torch.float64)

    def check(self) -> None:
        """Raise MergeError if these resolved parameters cannot give a finite merge (e.g. weights that sum to
        0 where the formula divides by their sum). Called for every tensor before any work."""

    def output_reveals_nonfinite_inputs(self, dtype: torch.dtype) -> bool:
        """True when, computed in ``dtype``, every input value reaches every output element it belongs to through
        a product with a nonzero factor and sums (a linear combination whose coefficients are nonzero in
        ``dtype``): a NaN or Inf input then makes the output non-finite, and the engine checks the output instead
        of the inputs (one pass fewer)."""
        return False

    def observe(self, pass_index: int, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        """A statistic of one chunk for pass ``pass_index`` (``stats`` holds earlier passes' results)."""
        raise NotImplementedError

    def accumulate(self, total: Any, part: Any) -> Any:
        """Combine chunk statistics (None starts); the sum unless a method says otherwise."""
        return part if total is None else total + part

    def conclude(self, pass_index: int, total: Any, stats: dict[str, Any], numel: int) -> None:
        """Turn a pass's accumulated statistic into ``stats`` entries for later passes and ``combine``."""
        raise NotImplementedError

    def combine(self, chunk: Chunk, base: torch.Tensor, models: torch.Tensor,
                stats: dict[str, Any]) -> torch.Tensor:
        """Merged values of one chunk. base: [c], models: [n, c] in the compute dtype -> [c]."""
        raise NotImplementedError


def merge_in_memory(method: Method, base: torch.Tensor, models: list[torch.Tensor] | torch.Tensor, *,
                    name: str = "tensor", seed: int = 0, chunk_size: int | None = None) -> torch.Tensor:
    """Run ``method`` on whole tensors held in memory (same code path as the streaming engine). ``models``: a
    list of tensors shaped as ``base``, or them already stacked, [n, *shape] (not copied again)."""
    flat_base = base.reshape(-1)
    stacked = (models.reshape(len(models), -1) if isinstance(models, torch.Tensor)
               else torch.stack([m.reshape(-1) for m in models]))  # [n, numel]
    numel = flat_base.numel()
    pieces = chunks(name, tuple(base.shape), chunk_size or max(numel, 1), seed, method.row_aligned,
                    method.whole_tensor)
    stats: dict[str, Any] = {}
    for p in range(method.passes):
        total = None
        for c in pieces:
            total = method.accumulate(total, method.observe(p, c, flat_base[c.start:c.stop],
                                                            stacked[:, c.start:c.stop], stats))
        method.conclude(p, total, stats, numel)
    return torch.cat([method.combine(c, flat_base[c.start:c.stop], stacked[:, c.start:c.stop], stats)
                      for c in pieces]).reshape(base.shape)


def scale_names(method: type[Method]) -> tuple[str, ...]:
    """The parameter names that set ``method.affine_in`` (its field, then the field's alias); () where the merge
    is not declared affine in a parameter."""
    field = method.affine_in
    if field is None:
        return ()
    alias = method.Params.model_fields[field].alias
    return (field, alias) if alias else (field,)


def per_tensor_method(name: str, params: dict[str, Any], n_models: int, key: str) -> Method:
    """The registered per-tensor method ``name`` with ``params`` (a data-driven method's parameter ``key``, e.g.
    FW's ``merge_params``) for ``n_models``, to run with ``merge_in_memory``; a ValueError naming ``key`` when
    they are invalid or ask for a whole-model scope (a tensor at a time is all ``merge_in_memory`` sees)."""
    from ..registry import get_method

    cls = get_method(name, "per_tensor").method_class
    try:
        method_params = cls.Params(**params)
    except ValidationError as err:
        raise ValueError(f"{key} for '{name}': {err}") from None
    if getattr(method_params, "scope", "tensor") != "tensor":
        raise ValueError(f"{key} scope: model is not supported: this merge runs '{name}' one tensor at a time")
    return cls(method_params, [cls.ModelParams() for _ in range(n_models)])


@dataclass
class DataDrivenInputs:
    """What a data-driven merge gets. ``objective``: the tasks the merge is for (the targets); ``base``: the
    pre-trained mergeable tensors (or a source of them); ``candidates``: the checkpoints to merge, by label, read
    tensor by tensor (the caller opens and closes them); ``params``: the method's validated parameters;
    ``candidate_tasks``: each candidate's own task and ``candidate_objective`` an objective over those tasks
    (RegMean and Fisher collect candidate i's statistics on its own task; default: the targets, one candidate
    per target); ``score``: a held-out score of a merged body, higher is better (greedy soup); ``progress``:
    per-iteration lines on stderr."""

    objective: Objective
    base: Mapping[str, torch.Tensor] | TensorSource
    candidates: dict[str, TensorSource]
    params: Params
    candidate_tasks: list[str] | None = None
    candidate_objective: Objective | None = None
    score: Callable[[Mapping[str, torch.Tensor]], float] | None = None
    progress: bool = True

    def base_tensors(self) -> Tensors:
        base = as_source(self.base, "base")
        return {name: base.read(name) for name in base.names}

    def bodies(self) -> list[Tensors]:
        """Every candidate's mergeable tensors, in memory (the methods that need them all at once)."""
        names = as_source(self.base, "base").names
        return [{name: source.read(name) for name in names} for source in self.candidates.values()]

    def paired(self) -> tuple[Objective, list[str]]:
        """The objective and the task each candidate's statistics are collected on."""
        tasks = self.candidate_tasks or list(self.objective.tasks)
        return self.candidate_objective or self.objective, tasks

    def held_out_score(self) -> Callable[[Mapping[str, torch.Tensor]], float]:
        if self.score is None:
            raise MergeError("this merge scores candidates on held-out data, but no held-out score was given")
        return self.score


DataDrivenResult = tuple[Tensors, dict[str, Any]]  # the merged mergeable tensors and the method's log


Factors = tuple[torch.Tensor, torch.Tensor]  # a LoRA module's (A [r, in], B [out, r])


@dataclass
class AdapterMerge:
    """What an adapter merge (merging/registry.py, kind ``adapter``) returns: the merged factors by base parameter
    name, written as a peft adapter of ``rank`` and ``alpha``, and a JSON-able summary."""

    factors: dict[str, Factors]
    rank: int
    alpha: float
    summary: dict[str, Any]


@dataclass
class RoutedModel:
    """What a routed merge (merging/registry.py, kind ``routed``; Twin-Merging) returns: not one set of weights but
    a body per input. The router maps an input's features (``Objective.features`` under the shared body, [b, d])
    to logits over the experts; with w(x) = softmax(router(features)),

        θ(x) = θ_shared + Σ_t w_t(x) · E_t,

    E_t expert t's exclusive part. ``shared``: the body by name (mergeable tensors; the caller may complete it with
    buffers and running statistics); ``exclusive``: name -> [T, *shape], the experts' parts stacked (names absent
    are θ_shared for every input); ``tasks``: each expert's own task; ``log``: the method's log."""

    shared: Tensors
    exclusive: Tensors
    tasks: list[str]
    router: torch.nn.Module
    log: dict[str, Any]

    @torch.no_grad()
    def weights(self, features: torch.Tensor) -> torch.Tensor:
        """w(x) per input: [b, d] features -> [b, T], rows on the simplex."""
        return torch.softmax(self.router.eval()(features.float()), dim=-1)

    def body(self, weights: torch.Tensor) -> Tensors:
        """θ(x) for one input's expert weights ``weights`` [T]."""
        return next(self.bodies(weights.unsqueeze(0)))

    def bodies(self, weights: torch.Tensor, budget_bytes: int = 1 << 30) -> Iterator[Tensors]:
        """θ(x) of each row of ``weights`` [b, T], in order. Rows are built together, as many bodies as fit in
        ``budget_bytes`` (at least one), so the stacked exclusive parts are read once per group, not per input; a
        row's body does not depend on the others (up to float rounding of the product)."""
        per_row = sum(parts[0].numel() * parts.element_size() for parts in self.exclusive.values())  # one body
        group = max(1, budget_bytes // max(per_row, 1))
        for start in range(0, len(weights), group):
            rows = weights[start:start + group]
            mixed = {name: (rows.to(parts.dtype) @ parts.reshape(len(parts), -1)).reshape(len(rows), *parts.shape[1:])
                     for name, parts in self.exclusive.items()}  # name -> [rows, *shape]
            for i in range(len(rows)):
                yield {name: tensor + mixed[name][i] if name in mixed else tensor
                       for name, tensor in self.shared.items()}
