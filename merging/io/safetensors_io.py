"""Byte-level safetensors access: a reader that fetches any element range of any tensor with one
``pread`` (no whole-file mmap, so resident memory stays at the size of what is being read) and a writer
that plans every shard's header up front and then accepts tensor pieces in any order (``pwrite``).

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data
block; offsets are relative to the start of the data block.
"""
from __future__ import annotations

import errno
import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MergeError, os_error

DTYPE_CODES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_scratch = threading.local()  # per-thread read buffer, reused so steady-state reads allocate nothing


def _scratch_bytes(nbytes: int) -> torch.Tensor:
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < nbytes:
        buffer = _scratch.buffer = torch.empty(nbytes, dtype=torch.uint8)
    return buffer[:nbytes]


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"key(s) {repeated} appear more than once")
    return dict(pairs)


class SafetensorsFile:
    """Random access to the tensors of one ``.safetensors`` file, element range by element range."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd = -1  # set first: __del__ runs even when __init__ fails
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise MergeError(f"{self.path}: cannot be opened ({err.strerror})") from None
        try:
            self.infos, self._offsets = self._parse_header()
        except BaseException:
            self.close()  # marks the descriptor closed, so __del__ cannot close a reused number
            raise

    def _parse_header(self) -> tuple[dict[str, TensorInfo], dict[str, int]]:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise MergeError(f"{self.path}: not a safetensors file (only {size} bytes; truncated?)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise MergeError(f"{self.path}: header length {header_len} exceeds the file size {size} "
                             "(truncated or not a safetensors file)")
        try:
            header = json.loads(os.pread(self._fd, header_len, 8), object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as err:
            raise MergeError(f"{self.path}: unreadable safetensors header ({err})") from None
        if not isinstance(header, dict):
            raise MergeError(f"{self.path}: unreadable safetensors header (a JSON {type(header).__name__}, "
                             "expected an object)")
        data_start = 8 + header_len
        infos, offsets, spans = {}, {}, []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            info, begin, end = self._entry(name, entry)
            infos[name], offsets[name] = info, data_start + begin
            spans.append((begin, end, name))
        covered, last = 0, ""  # the reference rule: the tensors tile the data block exactly, in offset order
        for begin, end, name in sorted(spans):
            if begin != covered:
                problem = "overlapping the tensor before it" if begin < covered else "a gap before it"
                raise MergeError(f"{self.path}: tensor '{name}' starts at byte {begin} of the data block, "
                                 f"expected {covered} ({problem})")
            covered, last = end, name
        if data_start + covered > size:
            raise MergeError(f"{self.path}: truncated: tensor '{last}' needs bytes up to {data_start + covered} "
                             f"but the file has {size}")
        if data_start + covered < size:
            raise MergeError(f"{self.path}: {size - data_start - covered} bytes after the last tensor; expected "
                             "the tensors to cover the data block exactly")
        return infos, offsets

    def _entry(self, name: str, entry: object) -> tuple[TensorInfo, int, int]:
        """(info, begin, end) of one header entry: a known dtype, whole non-negative dimensions and two whole
        offsets spanning exactly the bytes the shape needs."""
        code = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(code, str) or code not in DTYPE_CODES:
            raise MergeError(f"{self.path}: tensor '{name}' has unsupported dtype {code!r}; "
                             f"expected one of {sorted(DTYPE_CODES)}")
        shape, span = entry.get("shape"), entry.get("data_offsets")
        whole = lambda values: isinstance(values, list) and all(type(v) is int and v >= 0 for v in values)
        if not whole(shape) or not whole(span) or len(span) != 2:
            raise MergeError(f"{self.path}: tensor '{name}' has shape {shape!r} and data_offsets {span!r}; "
                             "expected lists of whole numbers >= 0 (two offsets)")
        info = TensorInfo(name, tuple(shape), DTYPE_CODES[code])
        begin, end = span
        if end - begin != info.nbytes:
            raise MergeError(f"{self.path}: tensor '{name}' spans {end - begin} bytes but shape "
                             f"{list(info.shape)} of {code} needs {info.nbytes}")
        return info, begin, end

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Elements ``[start, stop)`` of tensor ``name`` in row-major order, as a new 1-D tensor."""
        info = self.infos[name]
        stop = info.numel if stop is None else stop
        raw = torch.empty((stop - start) * info.dtype.itemsize, dtype=torch.uint8)
        self._pread(name, start, raw)
        return raw.view(info.dtype)

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        """Copy elements ``[start, stop)`` of ``name`` into ``out`` (any dtype/device), without allocating."""
        dtype = self.infos[name].dtype
        if out.device.type == "cpu" and out.dtype == dtype and out.is_contiguous():
            self._pread(name, start, out.view(torch.uint8))
        else:
            raw = _scratch_bytes((stop - start) * dtype.itemsize)
            self._pread(name, start, raw)
            out.copy_(raw.view(dtype))

    def _pread(self, name: str, start: int, raw: torch.Tensor) -> None:
        if not raw.numel():
            return
        offset = self._offsets[name] + start * self.infos[name].dtype.itemsize
        got = os.preadv(self._fd, [raw.numpy()], offset)
        if got != raw.numel():
            raise MergeError(f"{self.path}: truncated while reading '{name}' (got {got} of {raw.numel()} bytes)")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def plan_shards(infos: list[TensorInfo], max_shard_bytes: int) -> list[list[TensorInfo]]:
    """Split tensors, in order, into shards of at most ``max_shard_bytes`` (a larger tensor gets its own)."""
    shards: list[list[TensorInfo]] = [[]]
    used = 0
    for info in infos:
        if shards[-1] and used + info.nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(info)
        used += info.nbytes
    return shards


class ShardedSafetensorsWriter:
    """Writes a Hugging Face sharded checkpoint whose layout is fixed before any data arrives.

    ``write(name, start, values)`` stores elements ``[start, start + len(values))`` of a tensor; pieces may
    come in any order and from several threads. ``finish()`` checks that every byte was written and adds
    ``model.safetensors.index.json`` when there is more than one shard.
    """

    def __init__(self, folder: Path, infos: list[TensorInfo], max_shard_bytes: int,
                 metadata: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        shards = plan_shards(infos, max_shard_bytes)
        n = len(shards)
        self.file_names = (["model.safetensors"] if n == 1 else
                           [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self.infos = {info.name: info for info in infos}
        self._location: dict[str, tuple[int, int]] = {}  # name -> (shard index, absolute byte offset)
        self._remaining = {info.name: info.nbytes for info in infos}
        self._fds: list[int] = []
        for index, shard in enumerate(shards):
            self._open_shard(index, shard, metadata or {})

    def _open_shard(self, index: int, shard: list[TensorInfo], metadata: dict[str, str]) -> None:
        header: dict[str, dict] = {"__metadata__": {"format": "pt", **metadata}}
        offset = 0
        for info in shard:
            header[info.name] = {"dtype": CODE_OF_DTYPE[info.dtype], "shape": list(info.shape),
                                 "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        path = self.folder / self.file_names[index]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.write(fd, struct.pack("<Q", len(blob)) + blob)
            os.ftruncate(fd, 8 + len(blob) + offset)
        except OSError as err:
            raise os_error(err, path) from None
        data_start = 8 + len(blob)
        for info in shard:
            self._location[info.name] = (index, data_start + header[info.name]["data_offsets"][0])

    def write(self, name: str, start: int, values: torch.Tensor) -> None:
        info = self.infos[name]
        if values.dtype != info.dtype:
            raise TypeError(f"'{name}' is planned as {info.dtype}, got {values.dtype}")
        shard, offset = self._location[name]
        raw = values.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
        path = self.folder / self.file_names[shard]
        try:
            written = os.pwrite(self._fds[shard], raw, offset + start * info.dtype.itemsize)
        except OSError as err:
            raise os_error(err, path) from None
        if written != raw.size:  # pwrite writes less only when the device is full
            raise MergeError(f"{path}: {os.strerror(errno.ENOSPC)} (wrote {written} of {raw.size} bytes of '{name}')")
        self._remaining[name] -= written

    def finish(self) -> None:
        missing = [name for name, left in self._remaining.items() if left != 0]
        if missing:
            raise RuntimeError(f"merge ended with unwritten tensors: {missing[:5]}")
        self.close()
        if len(self.file_names) > 1:
            weight_map = {name: self.file_names[self._location[name][0]] for name in self.infos}
            index = {"metadata": {"total_size": sum(i.nbytes for i in self.infos.values())},
                     "weight_map": weight_map}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
