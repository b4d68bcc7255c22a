"""Exact k-th largest magnitude per row over a stream of chunks, in two passes with bounded memory.

For non-negative float32 values the int32 bit pattern orders like the value. Pass 1 counts, per row, the
values in each bin of the top bits (``bits >> shift``: 8 exponent bits and 23 − shift mantissa bits, so a
bin is 1/8 of an octave for shift 20 and 1/128 for shift 16); the counts locate the bin holding the k-th
largest and how many of the k lie above it. Pass 2 collects the values inside that bin (about 4% of
Gaussian magnitudes near a 20%-density threshold for shift 20, 0.3% for shift 16) and the exact
threshold is their k_left-th largest. Used by TIES trimming (``prune_magnitude`` keeps |τ| >= threshold:
the top k, plus any exact ties at the threshold).
"""
from __future__ import annotations

import math

import torch


def magnitude_bits(tvs: torch.Tensor) -> torch.Tensor:
    """Bit pattern of |x| in float32 (int32, same order as the values). [n, c] -> [n, c]."""
    return tvs.abs().float().contiguous().view(torch.int32)


def bin_histogram(tvs: torch.Tensor, shift: int) -> torch.Tensor:
    """Pass 1: per-row counts of ``|x|.bits >> shift`` (sign bit is 0). [n, c] -> [n, 2^(31 - shift)]."""
    bins = magnitude_bits(tvs) >> shift  # [n, c]
    return torch.stack([torch.bincount(row, minlength=1 << (31 - shift)) for row in bins])


def locate_bin(histogram: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bin of each row's k-th largest value and how many of the k remain inside it.
    histogram: [n, B], k: [n] with 1 <= k <= row total -> (bin [n], k_left [n])."""
    descending = histogram.flip(-1)  # [n, B]: largest values first
    from_top = descending.cumsum(-1)  # count in this bin or above
    index = torch.searchsorted(from_top, k.unsqueeze(1)).squeeze(1)  # [n]
    above = from_top.gather(1, index.unsqueeze(1)).squeeze(1) - descending.gather(1, index.unsqueeze(1)).squeeze(1)
    return histogram.shape[1] - 1 - index, k - above


def bin_members(tvs: torch.Tensor, bins: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """Pass 2: per row, the magnitude bits that fall in that row's bin. [n, c], [n] -> n tensors."""
    bits = magnitude_bits(tvs)  # [n, c]
    return [row[(row >> shift) == wanted] for row, wanted in zip(bits, bins.tolist())]


class BinMembers:
    """Per-row growing buffers of bin members across chunks (capacity doubles, so few allocations and no
    heap littered with thousands of small tensors)."""

    def __init__(self, rows: int) -> None:
        self._buffers = [torch.empty(4096, dtype=torch.int32) for _ in range(rows)]
        self._sizes = [0] * rows

    def add(self, parts: list[torch.Tensor]) -> BinMembers:
        for row, part in enumerate(parts):
            size, buffer = self._sizes[row], self._buffers[row]
            if size + part.numel() > buffer.numel():
                grown = torch.empty(max(2 * buffer.numel(), size + part.numel()), dtype=torch.int32)
                grown[:size] = buffer[:size]
                self._buffers[row] = buffer = grown
            buffer[size:size + part.numel()] = part.cpu()
            self._sizes[row] = size + part.numel()
        return self

    def rows(self) -> list[torch.Tensor]:
        return [buffer[:size] for buffer, size in zip(self._buffers, self._sizes)]


def threshold_from_members(members: list[torch.Tensor], k_left: torch.Tensor) -> torch.Tensor:
    """The k_left-th largest of each row's bin members, as float32. -> [n]."""
    values = []
    for row, left in zip(members, k_left.tolist()):
        values.append(torch.kthvalue(row, row.numel() - left + 1).values if row.numel() else torch.tensor(0))
    return torch.stack(values).to(torch.int32).view(torch.float32)


def kth_largest_magnitude(tvs: torch.Tensor, k: torch.Tensor, shift: int = 20) -> torch.Tensor:
    """Exact k-th largest |x| of each row of one chunk (+inf where k = 0). [n, c], [n] -> [n] float32."""
    k = k.to(torch.int64)
    bins, k_left = locate_bin(bin_histogram(tvs, shift), k.clamp(min=1))
    threshold = threshold_from_members(bin_members(tvs, bins, shift), k_left)
    return torch.where(k > 0, threshold, math.inf)


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys that order like the float32 ``values``, signs included: a non-negative float keeps its bit
    pattern, a negative one flips every bit but the sign (so larger magnitudes give smaller keys). [n, c]."""
    bits = values.float().contiguous().view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def values_of_keys(keys: torch.Tensor) -> torch.Tensor:
    """The float32 values of ``order_keys`` (the transform is its own inverse)."""
    return torch.where(keys >= 0, keys, keys ^ 0x7FFFFFFF).view(torch.float32)


def key_histogram(keys: torch.Tensor, shift: int) -> torch.Tensor:
    """Pass 1 for signed values: per-row counts of ``keys >> shift``, offset to start at bin 0.
    [n, c] -> [n, 2^(32 - shift)]."""
    bins = (keys >> shift) + (1 << (31 - shift))  # [n, c]
    return torch.stack([torch.bincount(row, minlength=1 << (32 - shift)) for row in bins])


def key_members(keys: torch.Tensor, bins: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """Pass 2 for signed values: per row, the keys that fall in that row's bin (as ``key_histogram`` numbers
    them). [n, c], [n] -> n tensors."""
    offset = 1 << (31 - shift)
    return [row[(row >> shift) + offset == wanted] for row, wanted in zip(keys, bins.tolist())]


def kth_largest_with_zeros(values: list[torch.Tensor], k_left: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The k_left-th largest of each row's bin from its nonzero members' float values and the bin's count: the
    rest of the bin is exact zeros, which are counted, not collected (a bin of zeros can hold most of a sparse
    task vector). -> [n] float32."""
    out = []
    for row, left, count in zip(values, k_left.tolist(), counts.tolist()):
        ordered = row.float().sort(descending=True).values
        above, zeros = int((ordered > 0).sum()), count - row.numel()
        value = ordered[left - 1] if left <= above else (
            torch.tensor(0.0) if left <= above + zeros else ordered[left - zeros - 1])
        out.append(value)
    return torch.stack(out).float()
