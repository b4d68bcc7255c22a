"""Data parallelism over proxy examples for the data-driven methods, through ``accelerate``: the same code runs
on a CPU, one GPU or several processes (``accelerate launch``, ``torchrun``, ``mpirun``).

Every process holds the whole model and the same parameters, iterates the objective's deterministic batch list
and keeps its share (``shard``: batch i goes to process i mod P; ``row_range``: a contiguous share of one
batch's rows). Per-process partial SUMS (loss·rows, row counts, gradients, Gram matrices, squared gradients)
are then added across processes (``all_reduce_sum``), and only then divided, so a mean over examples is the
single-process mean up to float rounding, however unequal the shares.

    one process:  rank 0 of 1; ``shard``, ``row_range`` and ``all_reduce_sum`` are identities; nothing is
                  set up and ``accelerate`` is not imported (plain ``python`` needs zero setup)
    launched:     a launcher's environment (WORLD_SIZE, PMI_SIZE, OMPI_COMM_WORLD_SIZE, MV2_COMM_WORLD_SIZE
                  > 1) or an initialised ``torch.distributed``: ``accelerate.PartialState`` joins the
                  process group (gloo on CPU, NCCL on GPUs). CPU processes when ``ACCELERATE_USE_CPU`` is
                  set or no accelerator is present, as ``accelerate.Accelerator`` does.

Contract: every process makes the same collective calls in the same order. The methods guarantee it because
every decision they take depends only on reduced values, which are identical on every process (all-reduce
computes each element once and hands it to every process). ``objective.batches`` must yield the same batches
in the same order on every process (no unseeded shuffling).

Launching 2 CPU processes: ``accelerate launch --cpu --num_processes 2`` starts ONE process on a single
machine (accelerate's "simple" launcher needs ``mpirun`` and a hostfile for several CPU processes); use
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 …`` (the torchrun launcher) or
``torchrun --nproc_per_node 2 …`` instead (tests/test_distributed.py).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_TRUE = {"1", "true", "yes", "on", "y"}


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes; ``device`` collectives run on (None: no collectives)."""

    rank: int = 0
    size: int = 1
    device: torch.device | None = None


_WORLD: World | None = None  # resolved once, on first use


def launched() -> bool:
    """Whether this process is one of several: ``torch.distributed`` is initialised or a launcher said so."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    for var in _SIZE_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            try:
                if int(value) > 1:
                    return True
            except ValueError:
                raise RuntimeError(f"environment variable {var}={value!r} is not an integer") from None
    return False


def use_cpu() -> bool:
    """CPU processes: ``ACCELERATE_USE_CPU`` is set (``accelerate launch --cpu``) or no accelerator exists."""
    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in _TRUE:
        return True
    accelerator = getattr(torch, "accelerator", None)
    return not (accelerator.is_available() if accelerator is not None else torch.cuda.is_available())


def world() -> World:
    """This process's ``World``; the first call of a launched process joins the process group (accelerate)."""
    global _WORLD
    if _WORLD is None:
        if not launched():
            _WORLD = World()
        else:
            from accelerate import PartialState  # only a launched process needs accelerate

            state = PartialState(cpu=use_cpu())
            if state.num_processes < 2:
                said = ", ".join(f"{v}={os.environ[v]}" for v in _SIZE_VARS if os.environ.get(v))
                raise RuntimeError(f"a launcher started this process ({said or 'torch.distributed'}) but accelerate "
                                   f"set up {state.num_processes} process ({state.distributed_type}); on a machine "
                                   "without GPUs set ACCELERATE_USE_CPU=true")
            _WORLD = World(state.process_index, state.num_processes, torch.device(state.device))
    return _WORLD


def finish() -> None:
    """Leave the process group together: a barrier, then ``destroy_process_group``. A launched process that
    simply exits while another still talks to it can be aborted by gloo ("terminate called without an active
    exception"); call this last in every entry point that may run under a launcher. No-op in one process."""
    if _WORLD is not None and _WORLD.size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def rank() -> int:
    return world().rank


def world_size() -> int:
    return world().size


def is_main() -> bool:
    """Whether this is process 0 (the one that prints and writes)."""
    return world().rank == 0


def device() -> torch.device:
    """The device this process should compute on: the accelerator's (``cuda:LOCAL_RANK`` on GPUs, CPU with
    ``ACCELERATE_USE_CPU``) when launched; one process: the accelerator if any, else the CPU."""
    w = world()
    if w.device is not None:
        return w.device
    if use_cpu():
        return torch.device("cpu")
    accelerator = getattr(torch, "accelerator", None)
    return torch.device(accelerator.current_accelerator()) if accelerator is not None else torch.device("cuda")


def shard(items: Iterable[T]) -> Iterator[T]:
    """This process's share of ``items``: item i when i mod P = rank. Every process iterates all of
    ``items`` (so an empty-split check inside the iterable still fires), keeping its share."""
    w = world()
    if w.size == 1:
        yield from items
        return
    for index, item in enumerate(items):
        if index % w.size == w.rank:
            yield item


def row_range(n: int) -> tuple[int, int]:
    """This process's contiguous share [start, stop) of n rows (sizes differ by at most one; may be empty)."""
    w = world()
    return w.rank * n // w.size, (w.rank + 1) * n // w.size


def _reduce_tensor(t: torch.Tensor, w: World) -> torch.Tensor:
    wide = torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else t.dtype
    buffer = t.detach().to(device=w.device, dtype=wide, copy=True)
    torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
    return buffer.to(device=t.device, dtype=t.dtype)


def all_reduce_sum(value: Any) -> Any:
    """Σ over processes of ``value``: a tensor, a float or int, or a mapping / list / tuple of them (nested),
    returned with the same structure, dtypes and devices (floating tensors are summed in float32 or wider).
    One process: ``value`` itself. Every process must pass the same structure (names, shapes, order)."""
    w = world()
    if w.size == 1:
        return value
    numbers: list[float] = []

    def collect(v: Any) -> None:
        if isinstance(v, Mapping):
            for item in v.values():
                collect(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                collect(item)
        elif isinstance(v, (bool, int, float)):
            numbers.append(float(v))
        elif not isinstance(v, torch.Tensor):
            raise TypeError(f"all_reduce_sum: cannot sum a {type(v).__name__}; pass tensors, numbers or "
                            "mappings / lists / tuples of them")

    collect(value)
    summed = iter(_reduce_tensor(torch.tensor(numbers, dtype=torch.float64), w).tolist() if numbers else [])

    def rebuild(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {key: rebuild(item) for key, item in v.items()}
        if isinstance(v, (list, tuple)):
            items = [rebuild(item) for item in v]
            return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)  # namedtuple / list / tuple
        if isinstance(v, torch.Tensor):
            return _reduce_tensor(v, w)
        total = next(summed)
        return int(round(total)) if isinstance(v, (bool, int)) else total  # counts (and flags) as ints

    return rebuild(value)


def gather_objects(obj: Any) -> Sequence[Any]:
    """``obj`` of every process, in rank order (picklable objects; for checks, not for tensors in bulk)."""
    w = world()
    if w.size == 1:
        return [obj]
    out: list[Any] = [None] * w.size
    torch.distributed.all_gather_object(out, obj)
    return out
