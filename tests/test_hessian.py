import pytest
import torch

from spqrkit.quant.hessian import HessianAccumulator


def test_running_mean_equals_the_batch_formula():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, n, 24, generator=g, dtype=torch.float64).float() for n in (5, 17, 1, 40)]
    acc = HessianAccumulator(24)
    for b in batches:
        acc.add(b)
    X = torch.cat([b.reshape(-1, 24) for b in batches]).double()
    torch.testing.assert_close(acc.finalize().double(), 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)
    assert acc.count == X.shape[0]


def test_bad_inputs():
    acc = HessianAccumulator(8)
    with pytest.raises(ValueError, match="features"):
        acc.add(torch.randn(3, 7))
    with pytest.raises(ValueError, match="NaN"):
        acc.add(torch.tensor([[float("nan")] * 8]))
    with pytest.raises(ValueError, match="no calibration inputs"):
        HessianAccumulator(8).finalize()


def test_wide_cpu_gram_uses_the_symmetric_blocks_and_equals_the_full_product():
    from spqrkit.quant import hessian

    x = torch.randn(96, hessian.SYMMETRIC_GRAM_MIN_FEATURES + 6, generator=torch.Generator().manual_seed(1))
    G = hessian.gram_fp32(x)
    torch.testing.assert_close(G, x.t() @ x, rtol=1e-5, atol=1e-4)
    k = x.shape[1] // 4
    assert torch.equal(G[:k, -k:], G[-k:, :k].t())  # mirrored, not multiplied again
