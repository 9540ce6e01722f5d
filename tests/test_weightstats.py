"""Weight-change statistics against values worked out by hand on a 3 x 4 matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from editharm.weightstats import quantile_key, quantiles_of, tensor_stats, threshold_key

# Dyadic values only, so W + dW and (W + dW) - W are exact in binary floating point
# and every expected number below is exact too.
W = [[1.0, -2.0, 0.0, 4.0],
     [0.5, 8.0, -1.0, 2.0],
     [0.0, 4.0, -4.0, 8.0]]
DW = [[0.125, 0.0, 0.0, -3.0],
      [0.0625, 2.0, 0.5, 0.0],
      [1.0, 0.0, 0.5, 0.5]]
# |dW / W| by hand (0/0 = 0, 1/0 = inf):
#   [[0.125, 0,    0 (0/0), 0.75],
#    [0.125, 0.25, 0.5,     0   ],
#    [inf,   0,    0.125,   0.0625]]
# sorted: 0 0 0 0 | 0.0625 | 0.125 0.125 0.125 | 0.25 | 0.5 | 0.75 | inf

EXPECTED = {
    "numel": 12.0,
    "changed_elements": 8.0,
    "changed_share": 8 / 12,
    # strictly above each threshold
    "share_above_0.01": 8 / 12,
    "share_above_0.05": 8 / 12,
    "share_above_0.077": 7 / 12,   # 0.0625 is not above 0.077
    "share_above_0.1": 7 / 12,
    "share_above_0.171": 4 / 12,   # 0.25, 0.5, 0.75, inf
    "share_above_0.5": 2 / 12,     # 0.5 itself is not above 0.5
    "share_above_1": 1 / 12,       # only the inf (W == 0, dW != 0)
    # linear interpolation at position q * 11 in the sorted list
    "rel_change_q50": 0.125,                    # 5.5: 0.125 .. 0.125
    "rel_change_q40": 0.0625 + 0.4 * 0.0625,    # 4.4: 0.0625 .. 0.125 -> 0.0875
    "rel_change_q80": 0.25 + 0.8 * 0.25,        # 8.8: 0.25 .. 0.5 -> 0.45
    "rel_change_q90": 0.5 + 0.9 * 0.25,         # 9.9: 0.5 .. 0.75 -> 0.725
    "rel_change_q99": math.inf,                 # 10.89: 0.75 .. inf
    "rel_change_q0": 0.0,
    "manhattan": 0.125 + 3 + 0.0625 + 2 + 0.5 + 1 + 0.5 + 0.5,            # 7.6875
    "max_abs_change": 3.0,
    "frobenius": math.sqrt(0.015625 + 9 + 0.00390625 + 4 + 0.25 + 1 + 0.25 + 0.25),
    "base_frobenius": math.sqrt(1 + 4 + 16 + 0.25 + 64 + 1 + 4 + 16 + 16 + 64),
}
EXPECTED["relative_frobenius"] = EXPECTED["frobenius"] / EXPECTED["base_frobenius"]

THRESHOLDS = (0.01, 0.05, 0.077, 0.1, 0.171, 0.5, 1.0)
QUANTILES = (0.5, 0.4, 0.8, 0.9, 0.99, 0.0)

# adaptive_avg_pool2d to 2 x 2: row bins [0, 2) and [1, 3), column bins [0, 2) and [2, 4)
HEATMAP_2x2 = [[(0.125 + 0 + 0.0625 + 2) / 4, (0 + 3 + 0.5 + 0) / 4],
               [(0.0625 + 2 + 1 + 0) / 4, (0.5 + 0 + 0.5 + 0.5) / 4]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_statistic_equals_the_hand_computed_value(dtype):
    base = torch.tensor(W, dtype=dtype)
    edited = base + torch.tensor(DW, dtype=dtype)
    stats, heatmap = tensor_stats(base, edited, THRESHOLDS, QUANTILES, (2, 2))
    assert set(stats) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert stats[key] == pytest.approx(value, rel=1e-15, abs=0), key
    assert heatmap.dtype == torch.float32
    assert heatmap.tolist() == HEATMAP_2x2


def test_key_names():
    assert threshold_key(0.077) == "share_above_0.077"
    assert threshold_key(1) == "share_above_1"
    assert quantile_key(0.99) == "rel_change_q99"
    assert quantile_key(0.07) == "rel_change_q7"
    assert quantile_key(0.999) == "rel_change_q99.9"


def test_heatmap_is_capped_at_the_tensor_shape_and_defaults_apply():
    base = torch.tensor(W)
    stats, heatmap = tensor_stats(base, base + torch.tensor(DW))
    assert heatmap.tolist() == torch.tensor(DW).abs().tolist()   # 64 x 64 capped to 3 x 4
    assert {"share_above_0.171", "rel_change_q99", "manhattan"} <= set(stats)


def test_unchanged_tensor_and_zero_weights():
    base = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    stats, heatmap = tensor_stats(base, base.clone(), (0.0,), (1.0,), (1, 1))
    assert stats["changed_elements"] == 0 and stats["share_above_0"] == 0
    assert stats["rel_change_q100"] == 0 and stats["manhattan"] == 0
    assert stats["relative_frobenius"] == 0 and heatmap.tolist() == [[0.0]]
    zero = torch.zeros(2, 2)
    stats, _ = tensor_stats(zero, zero + 1, (1e9,), (0.0,), (2, 2))
    assert stats["share_above_1e+09"] == 1 and stats["relative_frobenius"] == math.inf


def test_vectors_and_shape_errors():
    stats, heatmap = tensor_stats(torch.ones(10), torch.ones(10) * 1.5, (0.1,), (0.5,), (4, 4))
    assert stats["share_above_0.1"] == 1 and heatmap.shape == (1, 4)
    with pytest.raises(ValueError, match="differs"):
        tensor_stats(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tensor_stats(torch.ones(2, 3), torch.ones(2, 3), quantiles=(99,))


def test_quantiles_match_numpy_linear_and_work_beyond_torch_quantile_limit():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1001, generator=g, dtype=torch.float64)
    qs = [0.0, 0.123, 0.5, 0.8, 0.9, 0.99, 1.0]
    assert quantiles_of(x, qs) == pytest.approx(np.quantile(x.numpy(), qs), rel=1e-14)
    # torch.quantile refuses more than 2**24 elements; a 7B model's MLP matrix has 45M.
    n = 2**24 + 3
    big = torch.arange(n - 1, -1, -1, dtype=torch.float64)   # n-1 .. 0, unsorted input
    assert quantiles_of(big, [0.5, 0.25]) == [(n - 1) / 2, (n - 1) / 4]
