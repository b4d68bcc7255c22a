"""Exact k-th largest magnitude by two streaming passes (histogram of bit patterns, then bin members)."""
import math

import pytest
import torch

from merging import topk


@pytest.mark.parametrize("shift", [16, 20])
def test_hand_example(shift):
    tvs = torch.tensor([[0.5, -3.0, 2.0, -1.0], [4.0, 0.0, -0.25, 1.0]])
    # row 0 magnitudes sorted: 3, 2, 1, 0.5 ; row 1: 4, 1, 0.25, 0
    assert topk.kth_largest_magnitude(tvs, torch.tensor([2, 3]), shift).tolist() == [2.0, 0.25]


def test_zero_k_keeps_nothing():
    assert topk.kth_largest_magnitude(torch.ones(1, 5), torch.tensor([0])).item() == math.inf


@pytest.mark.parametrize("shift", [16, 20])
def test_exact_on_random_data_across_scales(shift):
    torch.manual_seed(0)
    tvs = torch.randn(3, 50_000) * torch.tensor([[1e-4], [1.0], [1e3]])
    k = torch.tensor([1, 12_345, 50_000])
    expected = torch.stack([tvs[i].abs().sort(descending=True).values[k[i] - 1] for i in range(3)])
    assert torch.equal(topk.kth_largest_magnitude(tvs, k, shift), expected)


def test_exact_with_many_ties_on_a_bf16_grid():
    torch.manual_seed(1)
    tvs = (torch.randn(2, 20_000) * 0.002).bfloat16().float()  # few distinct values, many ties
    k = torch.tensor([4_000, 777])
    expected = torch.stack([tvs[i].abs().sort(descending=True).values[k[i] - 1] for i in range(2)])
    assert torch.equal(topk.kth_largest_magnitude(tvs, k), expected)


def test_streaming_over_chunks_equals_one_pass():
    torch.manual_seed(2)
    tvs = torch.randn(2, 10_000)
    k = torch.tensor([2_000, 9_999])
    chunks = tvs.split(999, dim=1)
    histogram = sum(topk.bin_histogram(c, 20) for c in chunks)
    bins, k_left = topk.locate_bin(histogram, k)
    members = [torch.cat(parts) for parts in zip(*(topk.bin_members(c, bins, 20) for c in chunks))]
    assert torch.equal(topk.threshold_from_members(members, k_left), topk.kth_largest_magnitude(tvs, k))
