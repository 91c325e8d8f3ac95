"""The SpQR solver against independent references: textbook GPTQ, brute-force leave-one-out, exact representation."""

import math

import pytest
import torch

from spqrkit.config import QuantConfig, get_preset
from spqrkit.format.pack import real_bits
from spqrkit.quant import solver as S
from spqrkit.quant.minmax import minmax_params, quantize_dequantize
from spqrkit.quant.solver import SolverError, layer_error, loo_error_reduction, quantize_matrices

# Small matrices solve fastest on one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def make_problem(out=64, n=96, tokens=2048, seed=0, heavy_tail=False):
    """A weight and a correlated, anisotropic Hessian like a real layer's."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) * 0.3 + torch.eye(n)
    X = torch.randn(tokens, n, generator=g) @ mix * torch.linspace(0.2, 3.0, n)
    H = 2 * X.T @ X / tokens
    W = torch.randn(out, n, generator=g) * 0.02
    if heavy_tail:
        W = W + (torch.rand(out, n, generator=g) < 0.01) * torch.randn(out, n, generator=g) * 0.3
    return W, H


def textbook_gptq(W, H, wbits, percdamp, act_order):
    """Plain GPTQ, per-channel min-max (fp16 statistics), one column at a time with full-width updates, no blocks."""
    W = W.clone().float()
    H = H.clone().float()
    n = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.diag(H).mean() * torch.eye(n)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H.double())), upper=True).float()
    maxq = 2**wbits - 1
    s, z = minmax_params(W.amin(1), W.amax(1), maxq)
    s, z = s.half().float()[:, None], z.half().float()[:, None]
    Q = torch.zeros_like(W)
    for j in range(n):
        q = quantize_dequantize(W[:, j : j + 1], s, z, maxq)
        Q[:, j : j + 1] = q
        err = (W[:, j : j + 1] - q) / U[j, j]
        W[:, j + 1 :] -= err @ U[j : j + 1, j + 1 :]
    out = torch.empty_like(Q)
    out[:, perm] = Q
    return out


@pytest.mark.parametrize("wbits,act_order", [(3, True), (4, False), (2, True)])
def test_spqr_without_outliers_one_group_fp16_stats_is_gptq(wbits, act_order):
    W, H = make_problem()
    cfg = QuantConfig(wbits=wbits, beta1=None, beta2=None, scale_bits=None, zero_bits=None,
                      outlier_threshold=math.inf, act_order=act_order, percdamp=0.01, blocksize=32)
    (qw,) = quantize_matrices([W], H, cfg)
    ref = textbook_gptq(W, H, wbits, 0.01, act_order)
    got = qw.dequantize()
    # Same algorithm, different summation order (lazy block updates): a rare rounding tie may flip one code.
    same = (got == ref).float().mean().item()
    assert same > 0.995, same
    assert abs(layer_error(W, got, H) - layer_error(W, ref, H)) < 0.02 * layer_error(W, ref, H)


def brute_force_loo(wg, dg, maxq):
    rows, g = wg.shape
    out = torch.empty(rows, g)
    for r in range(rows):
        w = wg[r]
        s, z = minmax_params(w.min(), w.max(), maxq)
        base = (((w - quantize_dequantize(w, s, z, maxq)) / dg) ** 2).sum()
        for k in range(g):
            keep = torch.arange(g) != k
            wk = w[keep]
            s, z = minmax_params(wk.min(), wk.max(), maxq)
            err = (((wk - quantize_dequantize(wk, s, z, maxq)) / dg[keep]) ** 2).sum()
            out[r, k] = base - err
    return out


@pytest.mark.parametrize("g,bits", [(4, 2), (8, 3), (16, 3), (7, 4)])
def test_batched_leave_one_out_equals_brute_force_refit(g, bits):
    gen = torch.Generator().manual_seed(g)
    wg = torch.randn(12, g, generator=gen)
    wg[0, 1] = wg[0, 0]  # a tie at the minimum or elsewhere must still be handled exactly
    wg[1] = 0.5  # a constant row
    wg[2, :2] = wg[2].max()  # two equal maxima
    dg = torch.rand(g, generator=gen) + 0.5
    fast = loo_error_reduction(wg, dg, 2**bits - 1)
    slow = brute_force_loo(wg, dg, 2**bits - 1)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_leave_one_out_chunking_does_not_change_the_result(monkeypatch):
    wg = torch.randn(50, 16)
    dg = torch.rand(16) + 0.5
    full = loo_error_reduction(wg, dg, 7)
    monkeypatch.setattr(S, "_LOO_CHUNK_ELEMENTS", 16 * 16 * 3)
    assert torch.equal(loo_error_reduction(wg, dg, 7), full)


def test_outlier_share_grows_as_tau_falls_and_error_does_not_rise():
    W, H = make_problem(out=64, n=64, heavy_tail=True)
    shares, errors = [], []
    for tau in [math.inf, 2.0, 0.5, 0.2, 0.05]:
        (qw,) = quantize_matrices([W], H, get_preset("spqr-w3", outlier_threshold=tau))
        shares.append(qw.outlier_share)
        errors.append(layer_error(W, qw.dequantize(), H))
    assert shares[0] == 0
    assert all(a < b for a, b in zip(shares, shares[1:])), shares
    # More outliers are more fp16 weights: the error may wobble by rounding but must not grow materially.
    assert all(b <= a * 1.05 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_representation_reproduces_the_simulated_weights_exactly():
    W, H = make_problem(heavy_tail=True)
    cfg = get_preset("spqr-w3")
    Wp = W.clone()
    perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    (qw,) = quantize_matrices([W], H, cfg)
    assert torch.equal(qw.perm, perm)
    assert qw.n_outliers > 0
    # Rebuild the sweep's own simulated output and compare bit for bit with the stored representation.
    Hp = H[perm][:, perm].clone()
    Hp.diagonal().add_(cfg.percdamp * torch.diag(Hp).mean())
    U = S._inverse_cholesky_upper(Hp)
    d = torch.diag(U)
    thr = torch.full((W.shape[0],), cfg.outlier_threshold * S.outlier_threshold_scale(Wp[:, perm], d))
    w_hat = Wp[:, perm].clone()
    codes, outliers, _, _ = S._sweep(w_hat, U, d, thr, cfg)  # leaves the simulated weights in w_hat
    assert torch.equal(qw.codes, codes)
    assert torch.equal(qw.dequantize_permuted(), w_hat)
    assert int(outliers.sum()) == qw.n_outliers
    assert torch.equal(W, Wp), "the solver must not modify its input"


def test_codes_and_statistics_are_in_range():
    W, H = make_problem()
    for name in ["spqr-w3", "spqr-w4", "gptq-w3-g128"]:
        cfg = get_preset(name)
        (qw,) = quantize_matrices([W], H, cfg)
        assert int(qw.codes.max()) <= 2**cfg.wbits - 1
        for codes, bits in ((qw.scale_codes, cfg.scale_bits), (qw.zero_codes, cfg.zero_bits)):
            if codes is not None:
                assert int(codes.max()) <= 2**bits - 1
        assert qw.outlier_row_ptr[-1] == qw.n_outliers


def test_block_size_does_not_change_the_result():
    W, H = make_problem(n=128)
    a = quantize_matrices([W], H, get_preset("spqr-w3", blocksize=16))[0].dequantize()
    b = quantize_matrices([W], H, get_preset("spqr-w3", blocksize=128))[0].dequantize()
    assert (a == b).float().mean() > 0.995
    assert abs(layer_error(W, a, H) - layer_error(W, b, H)) < 0.02 * layer_error(W, b, H)


def test_joint_solve_of_matrices_sharing_an_input_equals_separate_solves():
    W, H = make_problem(out=96, n=64, heavy_tail=True)
    parts = [W[:64] * 3, W[64:80], W[80:]]  # different scales: thresholds must stay per matrix
    cfg = get_preset("spqr-w3")
    joint = quantize_matrices(parts, H, cfg)
    for part, qj in zip(parts, joint):
        (qs,) = quantize_matrices([part], H, cfg)
        assert qj.n_outliers == qs.n_outliers
        torch.testing.assert_close(qj.dequantize(), qs.dequantize(), rtol=0, atol=1e-6)


def test_dead_columns_are_zeroed_and_do_not_break_the_solve():
    W, H = make_problem(n=64)
    dead = torch.tensor([3, 17, 40])
    H[dead, :] = 0
    H[:, dead] = 0
    (qw,) = quantize_matrices([W], H, get_preset("spqr-w3"))
    Wq = qw.dequantize()
    assert torch.isfinite(Wq).all()
    # A dead column's weights are set to 0 before quantization; with a real-valued zero point, 0 itself is coded
    # to within half a quantization step of its group (never an outlier: its error does not count).
    scale, _ = qw.statistics()  # [out, n_groups]
    half_step = scale.max(dim=1).values[:, None] / 2  # [out, 1]
    assert torch.all(Wq[:, dead].abs() <= half_step * 1.001)
    assert torch.all(W[:, dead].abs().amax() > half_step.amax())


def test_rtn_ignores_the_hessian_and_gptq_beats_it():
    W, H = make_problem()
    rtn = quantize_matrices([W], None, get_preset("rtn-w4"))[0].dequantize()
    gptq = quantize_matrices([W], H, get_preset("gptq-w4"))[0].dequantize()
    # RTN is plain per-row min-max rounding.
    s, z = minmax_params(W.amin(1, keepdim=True), W.amax(1, keepdim=True), 15)
    torch.testing.assert_close(rtn, quantize_dequantize(W, s.half().float(), z.half().float(), 15))
    assert layer_error(W, gptq, H) < layer_error(W, rtn, H)


def test_bad_inputs_are_refused():
    W, H = make_problem()
    with pytest.raises(SolverError, match="beta2"):
        quantize_matrices([W[:60]], H, get_preset("spqr-w3"))
    bad = W.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(SolverError, match="NaN"):
        quantize_matrices([bad], H, get_preset("spqr-w3"))
    with pytest.raises(SolverError, match="Hessian"):
        quantize_matrices([W], None, get_preset("gptq-w4"))
    with pytest.raises(SolverError, match="positive definite"):
        quantize_matrices([W], -H, get_preset("gptq-w4"))


def test_paper_average_bits_formula():
    cfg = get_preset("spqr-w3")
    assert cfg.paper_avg_bits(4096) == pytest.approx(3.625)
    assert get_preset("spqr-w4").paper_avg_bits(4096, outlier_share=0.01) == pytest.approx(4.625 + 0.32)
    assert get_preset("gptq-w4").paper_avg_bits(4096) == pytest.approx(4 + 32 / 4096)
    W, H = make_problem(out=64, n=96)
    (qw,) = quantize_matrices([W], H, cfg)
    # Real bits (docs/format.md): each row's 96 codes are 3 chunks of 32 at 3 words each; the 6 groups' 3-bit
    # statistic codes are padded to one 32-code chunk of 3 words (twice); fp16 second-level pairs for 4 row groups
    # x 6 groups (twice), 32 bits per outlier, row pointers, permutation.
    expected = 64 * 9 * 32 + 2 * (64 * 3 * 32 + 4 * 6 * 2 * 16) + qw.n_outliers * 32 + 65 * 32 + 96 * 16
    assert real_bits(qw) == expected
    assert qw.paper_bits == pytest.approx(64 * 96 * (3.625 + 32 * qw.outlier_share))
