"""Streaming execution of a planned merge: tensors are split into chunks of ``chunk_size`` elements that are
read from every checkpoint, merged in the compute dtype on the chosen device and written straight to their
place in the output shards. Peak memory is about workers × (#models + 1) × chunk, independent of model size.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import MergeError
from .io.checkpoint import Checkpoint
from .io.safetensors_io import ShardedSafetensorsWriter, TensorInfo
from .logs import progress_bar
from .methods.base import Chunk, Method, chunks


@dataclass
class Sources:
    """Where chunks come from and how they are prepared for the math."""

    base: Checkpoint
    models: list[Checkpoint]
    dtype: torch.dtype
    device: torch.device
    _local: threading.local = field(default_factory=threading.local)

    def _buffer(self, rows: int, cols: int) -> torch.Tensor:
        """This thread's reusable [rows, cols] workspace (reuse avoids page-faulting fresh memory)."""
        flat = getattr(self._local, "buffer", None)
        if flat is None or flat.numel() < rows * cols:
            flat = self._local.buffer = torch.empty(rows * cols, dtype=self.dtype, device=self.device)
        return flat[:rows * cols].view(rows, cols)

    def chunk(self, name: str, start: int, stop: int, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Base [c] and models [n, c] for elements [start, stop) of ``name``, in the compute dtype, checked to be
        finite unless ``check`` is False. Views of this thread's workspace: valid until the thread reads its next
        chunk."""
        checkpoints = [self.base, *self.models]
        values = self._buffer(len(checkpoints), stop - start)  # [n + 1, c]
        for row, ckpt in enumerate(checkpoints):
            ckpt.read_into(name, start, stop, values[row])
        if check:
            self.check(name, values)
        return values[0], values[1:]

    def check(self, name: str, values: torch.Tensor) -> None:
        """MergeError naming the checkpoint if a row of ``values`` [n + 1, c] (base first) holds NaN or Inf."""
        checkpoints = [self.base, *self.models]
        sums = values.sum(1)  # [n + 1]: NaN/Inf anywhere makes a row sum non-finite (isfinite().all() is 10x slower)
        if not bool(torch.isfinite(sums).all()):
            for row in (~torch.isfinite(sums)).nonzero().flatten().tolist():
                if not bool(torch.isfinite(values[row]).all()):  # not merely a sum that overflowed
                    raise MergeError(f"{checkpoints[row].describe(name)} contains NaN or Inf values")


@dataclass
class TensorPlan:
    """One output tensor: merged by ``method`` or, when it is None, copied from the base; read from ``sources``
    (a slice's views, merging/slices.py) or, when None, from the engine's."""

    info: TensorInfo
    out_dtype: torch.dtype
    method: Method | None
    sources: Sources | None = None


def check_finite(values: torch.Tensor, problem: Callable[[], str]) -> None:
    """Raise MergeError(problem()) if floating ``values`` hold NaN or ±Inf (one sum first; the element-wise
    test runs only when the sum is not finite, which a large but finite half-precision chunk can also give)."""
    if not values.is_floating_point():
        return
    values = values.float() if values.dtype.itemsize == 1 else values  # float8 has no sum
    if not bool(torch.isfinite(values.sum())) and not bool(torch.isfinite(values).all()):
        raise MergeError(problem())


def chunks_of(plan: TensorPlan, chunk_size: int, seed: int) -> list[Chunk]:
    method = plan.method
    return chunks(plan.info.name, plan.info.shape, chunk_size, seed, bool(method and method.row_aligned),
                  bool(method and method.whole_tensor))


class InMemoryWriter:
    """The engine's output held in memory instead of safetensors shards (a benchmark's grid point, whose body is
    scored at once): the same ``write(name, start, values)`` pieces, any order, several threads."""

    def __init__(self, infos: list[TensorInfo]) -> None:
        self.infos = {info.name: info for info in infos}
        self.flat = {info.name: torch.empty(info.numel, dtype=info.dtype) for info in infos}
        self._remaining = {info.name: info.numel for info in infos}
        self._lock = threading.Lock()

    def write(self, name: str, start: int, values: torch.Tensor) -> None:
        if values.dtype != self.infos[name].dtype:
            raise TypeError(f"'{name}' is planned as {self.infos[name].dtype}, got {values.dtype}")
        flat = values.detach().to("cpu").reshape(-1)
        self.flat[name][start:start + flat.numel()] = flat
        with self._lock:
            self._remaining[name] -= flat.numel()

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every planned tensor, shaped; an incomplete one is an error (as ``ShardedSafetensorsWriter.finish``)."""
        missing = [name for name, left in self._remaining.items() if left != 0]
        if missing:
            raise MergeError(f"merge incomplete: tensors {missing[:5]} were not fully written")
        return {name: self.flat[name].reshape(info.shape) for name, info in self.infos.items()}


class Engine:
    """Runs the plans of one merge into a writer, ``workers`` tensors at a time. A tensor whose values from
    every checkpoint fit in ``cache_bytes`` is read once for all passes; a larger one is re-read per pass."""

    def __init__(self, sources: Sources, writer: ShardedSafetensorsWriter | InMemoryWriter, chunk_size: int, seed: int,
                 workers: int = 2, progress: bool = True, cache_bytes: int = 128 << 20) -> None:
        self.sources, self.writer = sources, writer
        self.chunk_size, self.seed, self.workers, self.progress = chunk_size, seed, workers, progress
        self.cache_bytes = cache_bytes

    def reader(self, plan: TensorPlan, check: bool = True) -> Callable[[Chunk], tuple[torch.Tensor, torch.Tensor]]:
        """chunk -> (base [c], models [n, c]) for one tensor, from memory when it fits, else from disk; inputs
        checked to be finite unless ``check`` is False."""
        name, numel, sources = plan.info.name, plan.info.numel, plan.sources or self.sources
        if (len(sources.models) + 1) * numel * sources.dtype.itemsize <= self.cache_bytes:
            base, models = sources.chunk(name, 0, numel, check)
            return lambda chunk: (base[chunk.start:chunk.stop], models[:, chunk.start:chunk.stop])
        return lambda chunk: sources.chunk(name, chunk.start, chunk.stop, check)

    def observe_tensor(self, plan: TensorPlan, pass_index: int, stats: dict[str, Any],
                       read: Callable[[Chunk], tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
        """One statistics pass over one tensor: the sum of its chunks' observations."""
        read = read or self.reader(plan)
        total = None
        for chunk in chunks_of(plan, self.chunk_size, self.seed):
            total = plan.method.accumulate(total, plan.method.observe(pass_index, chunk, *read(chunk), stats))
        return total

    def merge_tensor(self, plan: TensorPlan, shared_stats: dict[str, Any] | None) -> None:
        name, method = plan.info.name, plan.method
        if plan.info.numel == 0:  # nothing to read, merge or write
            return
        chunks = chunks_of(plan, self.chunk_size, self.seed)
        if method is None:
            base = (plan.sources or self.sources).base
            for chunk in chunks:
                values = base.read(name, chunk.start, chunk.stop).to(plan.out_dtype)
                check_finite(values, lambda: f"{base.describe(name)} contains NaN or Inf values "
                                             "(it is copied to the output, not merged)")
                self.writer.write(name, chunk.start, values)
            return
        # a method whose output carries any NaN or Inf of its inputs lets the output check stand for theirs
        checks_inputs = not method.output_reveals_nonfinite_inputs((plan.sources or self.sources).dtype)
        read = self.reader(plan, checks_inputs)
        stats = shared_stats if shared_stats is not None else {}
        if shared_stats is None:
            for p in range(method.passes):
                method.conclude(p, self.observe_tensor(plan, p, stats, read), stats, plan.info.numel)
        for chunk in chunks:
            merged = method.combine(chunk, *read(chunk), stats).to(plan.out_dtype)

            def problem(chunk: Chunk = chunk) -> str:
                if not checks_inputs:  # name the checkpoint when an input is the cause
                    (plan.sources or self.sources).chunk(name, chunk.start, chunk.stop)
                return (f"method '{method.name}' gives NaN or Inf in tensor '{name}' (elements "
                        f"{chunk.start}..{chunk.stop} as {plan.out_dtype}); nothing was saved")
            check_finite(merged, problem)
            self.writer.write(name, chunk.start, merged)

    def model_scope_stats(self, plans: list[TensorPlan], pool: ThreadPoolExecutor) -> dict[str, Any]:
        """Statistics pooled over every merged tensor (e.g. TIES trimming over the whole task vector)."""
        merged = [p for p in plans if p.method is not None and p.info.numel]
        lead = merged[0].method
        stats: dict[str, Any] = {}
        numel = sum(p.info.numel for p in merged)
        for pass_index in range(lead.passes):
            total = None
            for part in pool.map(self.observe_tensor, merged, [pass_index] * len(merged), [stats] * len(merged)):
                total = lead.accumulate(total, part)
            lead.conclude(pass_index, total, stats, numel)
        return stats

    def run(self, plans: list[TensorPlan]) -> None:
        order = sorted(plans, key=lambda p: -p.info.numel)  # largest first balances the workers
        model_scope = any(p.method is not None and p.method.scope == "model" for p in plans)
        with _torch_threads(max(1, (os.cpu_count() or 1) // self.workers)), \
                ThreadPoolExecutor(self.workers) as pool, \
                progress_bar(total=sum(p.info.nbytes for p in plans), unit="B", unit_scale=True, desc="merging",
                     disable=not self.progress) as bar:
            try:
                shared = self.model_scope_stats(plans, pool) if model_scope else None
                for plan in pool.map(lambda plan: (self.merge_tensor(plan, shared), plan)[1], order):
                    bar.update(plan.info.nbytes)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # stop early; nothing is left half-running
                raise


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
