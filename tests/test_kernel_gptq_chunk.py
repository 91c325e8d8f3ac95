"""The fused Triton chunk sweep against the plain-torch reference.

On a machine without CUDA, Triton's interpreter runs the kernel on the CPU (tests/conftest.py sets TRITON_INTERPRET
before anything imports Triton); on the GPU machine the compiled kernel runs.
"""

import pytest
import torch

from spqrkit.config import get_preset
from spqrkit.quant.solver import layer_error, quantize_matrices, sweep_chunk_reference

triton = pytest.importorskip("triton")
from spqrkit.kernels.gptq_chunk import sweep_chunk_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _u_block(C, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(C, C, generator=g)
    H = A @ A.T + C * torch.eye(C)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


@pytest.mark.parametrize("C,rows,with_outliers", [(16, 64, True), (16, 70, False), (12, 33, True), (32, 40, True),
                                                   (8, 5, True), (64, 48, False)])
def test_chunk_kernel_matches_reference(C, rows, with_outliers):
    g = torch.Generator().manual_seed(C * 1000 + rows)
    W = torch.randn(rows, C + 20, generator=g) * 0.02
    W[:, 3] += (torch.rand(rows, generator=g) < 0.2) * 0.3  # heavy weights: outliers when enabled
    U = _u_block(C, rows)
    scale = torch.rand(rows, 1, generator=g) * 0.01 + 0.002
    scale[0] = 0.0  # a zero scale must not produce NaN
    zero = torch.rand(rows, 1, generator=g) * 7
    thr = torch.full((rows, 1), 1e-3) if with_outliers else None
    W_ref, W_ker = W.clone(), W.clone().to(DEVICE)
    q_ref, o_ref, e_ref = sweep_chunk_reference(W_ref[:, 5 : 5 + C], U, scale, zero, thr, 7)
    q_ker, o_ker, e_ker = sweep_chunk_triton(
        W_ker[:, 5 : 5 + C], U.to(DEVICE), scale.to(DEVICE), zero.to(DEVICE), None if thr is None else thr.to(DEVICE),
        7,
    )
    if with_outliers:
        assert o_ref.any() and not o_ref.all()
        assert torch.equal(o_ref, o_ker.cpu())
    else:
        assert o_ker is None
    # Same operations in the same order (IEEE division, half-to-even rounding); a fused multiply-add on the GPU may
    # move a weight by an ulp and, rarely, a code across a rounding boundary.
    assert (q_ref == q_ker.cpu()).float().mean() > 0.99
    torch.testing.assert_close(W_ker.cpu(), W_ref, rtol=0, atol=float(scale.max()))
    assert torch.equal(W_ker.cpu()[:, :5], W[:, :5]) and torch.equal(W_ker.cpu()[:, 5 + C :], W[:, 5 + C :])
    assert torch.isfinite(e_ker).all()


@pytest.mark.parametrize("preset", ["spqr-w3", "gptq-w4", "gptq-w3-g128"])
def test_solver_with_kernel_matches_solver_with_reference(preset):
    g = torch.Generator().manual_seed(1)
    n, out = 96, 48
    X = torch.randn(1024, n, generator=g) @ (torch.randn(n, n, generator=g) * 0.2 + torch.eye(n))
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(out, n, generator=g) * 0.02
    cfg = get_preset(preset)
    (ref,) = quantize_matrices([W], H, cfg, kernel="reference")
    (ker,) = quantize_matrices([W.to(DEVICE)], H.to(DEVICE), cfg, kernel="triton")
    w_ref, w_ker = ref.dequantize(), ker.dequantize().cpu()
    assert (w_ref == w_ker).float().mean() > 0.98
    assert abs(layer_error(W, w_ref, H) - layer_error(W, w_ker, H)) < 0.02 * layer_error(W, w_ref, H)
