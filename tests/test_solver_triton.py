"""The solver's fused Triton kernels (chunk sweep, group fit) against their plain-torch references.

On a machine without CUDA, Triton's interpreter runs the kernel on the CPU (tests/conftest.py sets TRITON_INTERPRET
before anything imports Triton); on the GPU machine the compiled kernel runs.
"""

import math

import pytest
import torch

from spqrkit.config import get_preset
from spqrkit.quant.solver import (
    _StatStore,
    fit_group_reference,
    layer_error,
    quantize_matrices,
    sweep_chunk_reference,
)

triton = pytest.importorskip("triton")
from spqrkit.quant.solver_triton import fit_group_triton, sweep_chunk_triton  # noqa: E402

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


@pytest.mark.parametrize(
    "preset,overrides,rows,G",
    [
        ("spqr-w3", {}, 64, 16),
        ("spqr-w4", {}, 32, 16),
        ("spqr-w3", {"beta1": 12}, 48, 12),  # a group narrower than the padded tile
        ("spqr-w3", {"beta1": 32, "beta2": 32}, 64, 32),
        ("spqr-w3", {"zero_bits": None, "beta1": 8}, 16, 8),  # quantized scales, fp16 zeros
        ("spqr-w3", {"outlier_threshold": math.inf}, 32, 16),
        ("gptq-w3-g128", {"beta1": 16, "round_zero": True}, 20, 16),  # fp16 statistics, partial row tile
        ("spqr-w3", {}, 16, 1),  # a one-column group (the tail of a row)
    ],
)
def test_fit_kernel_matches_reference(preset, overrides, rows, G):
    cfg = get_preset(preset, **overrides)
    g = torch.Generator().manual_seed(rows * 100 + G)
    wg = torch.randn(rows, G, generator=g) * 0.02
    wg += (torch.rand(rows, G, generator=g) < 0.05) * torch.randn(rows, G, generator=g) * 0.3
    wg[1] = 0.01  # a constant row
    if G > 2:
        wg[2, :2] = wg[2].min()  # a tie at the minimum
    dg = torch.rand(G, generator=g) + 0.5
    thr = torch.full((rows, 1), 2e-4) if cfg.has_outliers else None
    maxq = 2**cfg.wbits - 1
    n_groups = 3

    def stores(device):
        return (_StatStore.empty(rows, n_groups, cfg.scale_bits, cfg.beta2, device),
                _StatStore.empty(rows, n_groups, cfg.zero_bits, cfg.beta2, device))

    ref_s, ref_z = stores("cpu")
    s_ref, z_ref = fit_group_reference(wg, dg, thr, cfg, maxq, ref_s, ref_z, 1)
    ker_s, ker_z = stores(DEVICE)
    s_ker, z_ker = fit_group_triton(wg.to(DEVICE), dg.to(DEVICE), None if thr is None else thr.to(DEVICE), cfg, maxq,
                                    ker_s, ker_z, 1)
    torch.testing.assert_close(s_ker.cpu(), s_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(z_ker.cpu(), z_ref, rtol=1e-6, atol=1e-6)
    for ref, ker in ((ref_s, ker_s), (ref_z, ker_z)):
        for field in ("fp", "codes", "stats"):
            a, b = getattr(ref, field), getattr(ker, field)
            if a is not None:
                assert torch.equal(a[:, 1].cpu(), b[:, 1].cpu()), field


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
