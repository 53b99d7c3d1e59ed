"""The FLOP counter used by the benchmarks sees CPU attention (torch alone counts it as 0)."""
import torch
import torch.nn.functional as F

from harness.measure import count_flops


def test_cpu_attention_is_counted():
    q = torch.randn(2, 4, 64, 16)
    k, v = torch.randn(2, 4, 80, 16), torch.randn(2, 4, 80, 16)
    flops, _ = count_flops(F.scaled_dot_product_attention, q, k, v)
    expected = 2 * (2 * 4 * 64 * 16 * 80) * 2  # QK^T and PV, 2 FLOPs per multiply-add
    assert flops == expected
