"""The SpQR matmul kernels (gemv, dot, dequantize) against the plain-torch reference, on random layouts.

Without CUDA, Triton's interpreter runs them on the CPU (tests/conftest.py sets TRITON_INTERPRET) on the smallest
cases that reach every code path; on the GPU machine the same tests run compiled on larger shapes, with the
exhaustive sweeps marked gpu_sweep (benchmarks/gpu_tests.sh). The dequantize kernel is exact (it writes the
reference's fp32 weight rounded to the output dtype); the fused kernels sum in a different order than cuBLAS and
the gemv kernel skips the reference's rounding of the weight to the activation dtype, so their outputs are checked
against an fp64 product within a bound that scales with sum |x| |w|.
"""

import os

import pytest
import torch

from spqrkit.config import QuantConfig, get_preset
from spqrkit.format.pack import dequantize_packed
from spqrkit.format.synthetic import random_quantized_weight
from spqrkit.modules.linear import MATMULS, SpQRLinear, choose_kernel, reference_matmul

triton = pytest.importorskip("triton")
from spqrkit.kernels import dot, gather, gemv, ops, plan, reach, select

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
on_cuda = DEVICE == "cuda"


def _layer(out, n_in, config, *, bias=True, seed=0, **kw):
    qw = random_quantized_weight(out, n_in, config, seed=seed, device=DEVICE, **kw)
    b = torch.randn(out, device=DEVICE) if bias else None
    return SpQRLinear.from_quantized(qw, b)


def _check(layer, x, y):
    """y (a kernel's output) against the fp64 product with the reference weight."""
    w = layer.dequantize().double()
    x64 = x.double()
    exact = x64 @ w.T
    if layer.bias is not None:
        exact = exact + layer.bias.double()
    mag = x64.abs() @ w.abs().T + 1e-6
    rel = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[x.dtype]
    out_round = {torch.float32: 0.0, torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}[x.dtype]
    bound = rel * mag + out_round * exact.abs() + 1e-6
    err = (y.double() - exact).abs()
    assert y.dtype == x.dtype and y.shape == exact.shape
    assert bool((err <= bound).all()), f"max err/bound {(err / bound).max().item():.3f}"


# Every wbits 2..4 with every beta1 in {8, 16, 32, 64}; beta2 cycles through {16, 32, 64}; 3-bit statistics.
GRID = [(wb, b1, (16, 32, 64)[(i + j) % 3]) for i, wb in enumerate((2, 3, 4)) for j, b1 in enumerate((8, 16, 32, 64))]
# Three layouts of GRID that together hold every wbits and beta2 of it and each kind of group (8, 16: several
# groups per chunk; 32: a group per chunk; groups spanning chunks run in STAT_VARIANTS): what the CPU runs; the rest
# of the grid is a gpu_sweep (the kernels branch on each of these values separately, never on their combination).
GRID_CPU = [(4, 8, 64), (2, 16, 32), (3, 32, 16)]
assert all(g in GRID for g in GRID_CPU)
SWEEP = pytest.mark.gpu_sweep


def sweep(cases, on_cpu):
    """pytest params of `cases`, those not in `on_cpu` marked gpu_sweep."""
    return [pytest.param(*c, marks=() if c in on_cpu else SWEEP) for c in cases]


@pytest.mark.parametrize("kernel", ["gemv", "gemv_xc", "gemv_seg", "dot"])
@pytest.mark.parametrize("wbits,beta1,beta2", sweep(GRID, GRID_CPU))
def test_fused_kernels_every_layout(kernel, wbits, beta1, beta2):
    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    out, n_in = (beta2 * 2, 200) if not on_cuda else (beta2 * 40, 1000)
    layer = _layer(out, n_in, cfg, seed=wbits * 100 + beta1, dense_rows=3, empty_rows=5)
    for rows in {"gemv_seg": (1, 3, 7)}.get(kernel, (1, 3) if kernel.startswith("gemv") else (1, 5, 17)):
        x = torch.randn(rows, n_in, device=DEVICE)
        _check(layer, x, MATMULS[kernel](layer, x))


@pytest.mark.parametrize("wbits,beta1,beta2", sweep(GRID[::3], GRID[:1]))
def test_gemv_tuning_options(wbits, beta1, beta2):
    """The gemv kernels' tuning options: gemv_seg's PREFETCH (next tile's words loaded ahead), PDL (programmatic
    dependent launch after the x kernel; on a GPU only, Triton's interpreter ignores it) and split K (several
    programs per row block, partial sums added atomically, the last one writes y), and 128 outliers per step."""
    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    layer = _layer(beta2 * 2, 1100 if on_cuda else 300, cfg, dense_rows=3, empty_rows=5)
    for rows in (1, 3, 6) if on_cuda else (1, 6):  # (launches of one, four, eight rows; the CPU: one, eight)
        x = torch.randn(rows, layer.in_features, device=DEVICE)
        y = gemv.gemv(x, layer.packed_layer(), layer.bias, chunks=4, segments=True, prefetch=True)
        _check(layer, x, y)
        if on_cuda:  # (the interpreter ignores PDL)
            y = gemv.gemv(x, layer.packed_layer(), layer.bias, chunks=4, segments=True, pdl=True)
            _check(layer, x, y)
        # split K: 100 is capped at one program per tile (on the CPU's 3 tiles the same as 3: the GPU runs the rest)
        for split in (1, 2, 3, 100) if on_cuda else (3,):
            for rt in (True, False):  # rows in thread ([chunks, rows] tile) or not
                y = gemv.gemv(x, layer.packed_layer(), layer.bias, chunks=4, segments=True, split=split,
                              prefetch=split == 3, rows_in_thread=rt)
                _check(layer, x, y)
        if rows != 3:  # outlier bases given (several steps of 16 outliers) rather than decoded again
            y = gemv.gemv(x, layer.packed_layer(layer.outlier_bases()), layer.bias, chunks=4, segments=True,
                          outliers_per_step=16)
            _check(layer, x, y)
        for flags in ({"segments": True}, {"x_chunked": True}) if rows <= 4 else ():  # 128 outliers per step
            y = gemv.gemv(x, layer.packed_layer(), layer.bias, chunks=4, num_warps=4, outliers_per_step=128, **flags)
            _check(layer, x, y)


STAT_VARIANTS = [
    get_preset("spqr-w3"),
    get_preset("gptq-w4"),  # one group per row, fp16 statistics
    get_preset("gptq-w3-g128"),  # groups of 128, fp16 statistics
    QuantConfig(wbits=3, beta1=16, beta2=32, scale_bits=4, zero_bits=None),  # quantized scales, fp16 zeros
    QuantConfig(wbits=2, beta1=32, beta2=16, scale_bits=None, zero_bits=2),  # fp16 scales, quantized zeros
]
STAT_VARIANT_IDS = ["spqr-w3", "gptq-w4", "gptq-w3-g128", "qscale-fp16zero", "fp16scale-qzero"]


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# On the CPU every statistics variant runs in one dtype (the variants rotate through the three, so every kernel
# meets each dtype); the other combinations are a gpu_sweep.
STAT_DTYPE_CASES = [pytest.param(c, d, id=f"{i}-{str(d)[6:]}", marks=() if d == DTYPES[k % 3] else SWEEP)
                    for k, (c, i) in enumerate(zip(STAT_VARIANTS, STAT_VARIANT_IDS)) for d in DTYPES]


@pytest.mark.parametrize("kernel", ["gemv", "gemv_xc", "gemv_seg", "dot", "dequantize"])
@pytest.mark.parametrize("config,dtype", STAT_DTYPE_CASES)
def test_kernels_statistics_variants_and_dtypes(kernel, config, dtype):
    if kernel == "dot" and dtype == torch.bfloat16 and not on_cuda:
        pytest.skip("Triton 3.6's interpreter multiplies bf16 tl.dot operands wrongly (2.5e10 off on a 16x16 "
                    "product of random bf16 matrices); this case runs compiled on the GPU")
    out, n_in = (64, 136) if not on_cuda else (512, 1064)  # in not a multiple of 32: padded last chunk
    layer = _layer(out, n_in, config, seed=7, dense_rows=2, empty_rows=2)
    x = torch.randn(3, n_in, device=DEVICE).to(dtype)
    y = MATMULS[kernel](layer, x)
    if kernel == "dequantize":  # the weight is the reference's, rounded once: equal to the reference result
        ref = reference_matmul(layer, x)
        torch.testing.assert_close(y.float(), ref.float(), rtol=0, atol=1e-5 if dtype == torch.float32 else
                                   2e-2 * ref.abs().max().item())
    _check(layer, x, y)


@pytest.mark.parametrize("outlier_share,dense_rows,empty_rows", [(0.0, 0, 0), (0.3, 8, 0), (0.01, 0, 30)])
def test_fused_kernels_outlier_extremes(outlier_share, dense_rows, empty_rows):
    """No outliers at all; every row with many (30%, and whole rows with 25%); most rows empty."""
    cfg = get_preset("spqr-w3")
    layer = _layer(48, 128, cfg, outlier_share=outlier_share, dense_rows=dense_rows, empty_rows=empty_rows,
                   bias=False)
    nnz = layer.n_outliers
    assert (nnz == 0) == (outlier_share == 0.0)
    x = torch.randn(2, 128, device=DEVICE)
    for kernel in ("gemv", "gemv_xc", "gemv_seg", "dot", "dequantize"):
        _check(layer, x, MATMULS[kernel](layer, x))


def test_dequantize_kernel_is_the_reference_weight_bit_for_bit():
    cfg = get_preset("spqr-w4")
    layer = _layer(64, 150, cfg, dense_rows=3)  # 150: a padded last chunk
    ref = layer.dequantize()  # fp32, original column order
    order = gather.chunked_column_order(layer.perm, 150)
    real = (torch.arange(160).view(5, 32).t().reshape(-1) < 150).to(DEVICE)  # column i*5+j is permuted 32j+i
    # Triton's interpreter casts fp32 -> bf16 by truncation; compiled kernels round to nearest even, as torch does.
    for dtype in (torch.float32, torch.float16) + ((torch.bfloat16,) if on_cuda else ()):
        w_chunked = ops.dequantize_chunked(layer.packed_layer(), dtype)
        assert w_chunked.shape == (64, 160)
        assert bool((w_chunked[:, ~real] == 0).all())
        w = torch.empty(64, 150, dtype=dtype, device=DEVICE)
        w[:, order[real]] = w_chunked[:, real]
        assert torch.equal(w, ref.to(dtype))


def test_gather_x_kernel_is_the_reference_order():
    layer = _layer(32, 150, get_preset("spqr-w3"))
    x = torch.randn(3, 150, device=DEVICE)
    order = gather.chunked_column_order(layer.perm, 150)
    padded = torch.zeros(3, 160, device=DEVICE)
    padded[:, :150] = x
    expected = padded.index_select(-1, order)
    expected.view(3, 32, 5)[..., 4][:, 150 - 128:] = 0  # chunk 4 holds columns 128..159: those past 150 are zero
    assert torch.equal(ops.gather_x_chunked(x, layer.perm), expected)


@pytest.mark.parametrize("nch", [1, 4, 16])
def test_gather_x_tiles_kernel_is_the_reference_order(nch):
    layer = _layer(32, 150, get_preset("spqr-w3"))
    x = torch.randn(3, 150, device=DEVICE, dtype=torch.float16)
    order, valid = gather.tiled_column_order(layer.perm, 150, nch)
    assert valid.sum() == 150 and order[valid].sort().values.tolist() == list(range(150))
    expected = torch.zeros(4, order.numel(), device=DEVICE)
    expected[:3] = torch.where(valid, x.float().index_select(-1, order), 0.0)
    xt, xs = gather.gather_x_tiles(x, layer.perm, nch, 4)
    assert torch.equal(xt, expected) and xs is None  # row 3: padding
    assert torch.equal(gather.gather_x_tiles(x, layer.perm, nch, 3, dtype=x.dtype)[0], expected[:3].half())


@pytest.mark.parametrize("nch,wbits,group", [(1, 3, 16), (4, 2, 0), (16, 5, 8), (4, 8, 64)])
def test_gather_x_tiles_scaled_with_sums_is_the_reference(nch, wbits, group):
    """x for the gemv_seg kernel: permuted, tiled code-major, scaled by each code position's 2**-e, zero padded
    (150 columns: a padded last chunk; row 3: a padding row), and the sums of x over each segment of a chunk."""
    layer = _layer(32, 150, get_preset("spqr-w3"))
    x = torch.randn(3, 150, device=DEVICE, dtype=torch.float16)
    seg = plan.segment_codes(group)
    xt, xs = gather.gather_x_tiles(x, layer.perm, nch, 4, scale_wbits=wbits, segment=seg)
    ref_t, ref_s = gather.tiled_x_reference(x, layer.perm, nch, 4, scale_wbits=wbits, segment=seg)
    assert torch.equal(xt, ref_t)
    torch.testing.assert_close(xs, ref_s, rtol=1e-6, atol=1e-5)
    assert bool((xt[3] == 0).all()) and bool((xs[3] == 0).all())
    # every x value appears once, scaled by a power of two: the mantissas are x's
    m_xt = torch.frexp(xt[:3][xt[:3] != 0])[0].sort().values
    assert torch.equal(m_xt, torch.frexp(x.float()[x != 0])[0].sort().values)


@pytest.mark.parametrize("nch,kseg", [(1, 16), (2, 8), (4, 32)])
def test_gather_x_cols_is_the_reference(nch, kseg):
    """x for the dot kernel: permuted, tiled segment-major ([tile, code // kseg, chunk, code % kseg]), zero
    padded, in x's dtype, stored transposed."""
    layer = _layer(32, 150, get_preset("spqr-w3"))
    x = torch.randn(3, 150, device=DEVICE, dtype=torch.float16)
    order, valid = gather.tiled_column_order(layer.perm, 150, nch, kseg)
    assert valid.sum() == 150 and order[valid].sort().values.tolist() == list(range(150))
    xk = gather.gather_x_cols(x, layer.perm, nch, kseg, 4).T  # (stored [columns, rows])
    ref = gather.tiled_x_reference(x, layer.perm, nch, 4, kseg=kseg)[0]
    assert torch.equal(xk.float(), ref) and bool((xk[3] == 0).all())
    # column (tile t, code i, chunk j) holds x[perm[32 (t nch + j) + i]]
    t, i, j = 1 if 150 > 32 * nch else 0, 5, 0
    col = (t * nch + j) * 32 + i
    pos = t * 32 * nch + (i // kseg) * nch * kseg + j * kseg + i % kseg
    assert xk[0, pos] == x[0, layer.perm[col].long()]


@pytest.mark.parametrize("wbits,beta1,beta2", sweep([(3, 16, 16), (2, 8, 32), (4, 32, 16), (3, 64, 64)], [(3, 16, 16)]))
def test_dot_kernel_tiles_split_and_outlier_steps(wbits, beta1, beta2):
    """The dot kernel's options: split K (fp32 partial sums added atomically; 100 is capped at one program per
    tile), tiles of rows / chunks, the outlier kernel's rows per program and outliers per step (rows with many
    outliers take several steps), and more than 64 rows of x (the outlier kernel runs per 64)."""
    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    layer = _layer(beta2 * 2, 1100 if on_cuda else 300, cfg, dense_rows=3, empty_rows=5, outlier_share=0.05)
    args = (layer.packed_layer(), layer.bias)
    for rows in (1, 5, 17) + ((70,) if beta1 == 16 else ()):
        x = torch.randn(rows, layer.in_features, device=DEVICE)
        for split in (1, 2, 100):
            _check(layer, x, dot.dot(x, *args, split=split, chunks=2, block_n=16))
        _check(layer, x, dot.dot(x, *args, outlier_rows=2, outliers_per_step=8, block_n=32))
        _check(layer, x.half(), dot.dot(x.half(), *args, outlier_rows=4, outliers_per_step=16))
        # the outliers' base weights given (`outlier_bases`) or decoded again: the same bits (the dense operand's
        # rounding of the same fp32 base weight)
        bases = layer.outlier_bases()
        for xx in (x, x.half()) if rows == 5 else ():
            given = dot.dot(xx, layer.packed_layer(bases), layer.bias, chunks=2, block_n=16, split=1)
            torch.testing.assert_close(given, dot.dot(xx, *args, chunks=2, block_n=16, split=1), rtol=0, atol=0)


def _reference_outlier_bases(layer):
    """fp32 [nnz]: the reference base weight s (q - z) at each outlier, from the layer's tensors without outliers."""
    t = dict(layer.packed_tensors())
    rows = torch.repeat_interleave(torch.arange(layer.out_features, device=DEVICE),
                                   t["outlier_row_ptr"].diff().long())
    cols = t["outlier_cols"].long() & 0xFFFF  # permuted column
    t["outlier_row_ptr"] = torch.zeros_like(t["outlier_row_ptr"])
    t["outlier_cols"] = t["outlier_cols"][:0]
    t["outlier_values"] = t["outlier_values"][:0]
    base = dequantize_packed(t, (layer.out_features, layer.in_features), layer.config)  # original column order
    return base[rows, layer.perm.long()[cols] & 0xFFFF]


@pytest.mark.parametrize("config", [get_preset("spqr-w3"), get_preset("gptq-w4"),
                                    QuantConfig(wbits=2, beta1=8, beta2=32, scale_bits=4, zero_bits=None),
                                    QuantConfig(wbits=4, beta1=64, beta2=16, scale_bits=None, zero_bits=3)],
                         ids=["spqr-w3", "gptq-w4", "w2-qscale", "w4-qzero"])
def test_outlier_bases_are_the_reference_base_weights(config):
    """`outlier_bases` (the fused kernels' derived tensor) against the reference dequantization without the outliers,
    at every outlier (rows with many, none, and the padded last chunk); s q - s z in one FFMA against the reference's
    s (q - z): equal within fp32 rounding."""
    layer = _layer(64, 150, config, dense_rows=3, empty_rows=6, outlier_share=0.05, bias=False)
    assert layer.n_outliers > 0
    bases = layer.outlier_bases()
    ref = _reference_outlier_bases(layer)
    assert bases.dtype == torch.float32 and bases.shape == ref.shape
    torch.testing.assert_close(bases, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


def test_outlier_bases_follow_the_packed_buffers():
    """The layer keeps its outlier bases, and recomputes them when a packed buffer changes in place (new codes copied
    into it, as load_state_dict does) or the buffers are replaced: the fused kernels never read stale bases."""
    cfg = get_preset("spqr-w3")
    layer = _layer(32, 128, cfg, seed=1)
    first = layer.outlier_bases()
    assert layer.outlier_bases() is first  # kept
    before = first.clone()
    with torch.no_grad():
        layer.codes.copy_(_layer(32, 128, cfg, seed=2).codes)  # other codes, same outliers
    bases = layer.outlier_bases()
    assert not torch.equal(bases, before)
    torch.testing.assert_close(bases, _reference_outlier_bases(layer), rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 128, device=DEVICE)
    for kernel in ("gemv_seg", "dot"):
        _check(layer, x, MATMULS[kernel](layer, x))
    layer.load_packed({k: v.clone() for k, v in _layer(32, 128, cfg, seed=3).packed_tensors().items()})
    torch.testing.assert_close(layer.outlier_bases(), _reference_outlier_bases(layer), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("wbits", [5, 6, 7, 8])
def test_wide_codes(wbits):
    """5..8-bit codes (codes straddling words at 5, 6, 7 bits) in every kernel."""
    layer = _layer(32, 100, QuantConfig(wbits=wbits, beta1=16, beta2=16, scale_bits=4, zero_bits=4), seed=wbits)
    x = torch.randn(2, 100, device=DEVICE)
    for kernel in ("gemv", "gemv_xc", "gemv_seg", "dot", "dequantize"):
        _check(layer, x, MATMULS[kernel](layer, x))


def test_leading_dims_and_noncontiguous_input():
    layer = _layer(32, 96, get_preset("spqr-w3"))
    x = torch.randn(2, 3, 192, device=DEVICE)[..., ::2]  # [2, 3, 96], last-dim stride 2
    for kernel in ("gemv", "gemv_xc", "gemv_seg", "dot", "dequantize"):
        y = MATMULS[kernel](layer, x)
        assert y.shape == (2, 3, 32)
        _check(layer, x.reshape(6, 96), y.reshape(6, 32))


def test_custom_op_registration_passes_opcheck():
    layer = _layer(32, 64, get_preset("spqr-w3"))
    x = torch.randn(2, 64, device=DEVICE)
    p = layer.packed_layer()
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.fused_matmul_op, ops.fused_matmul_args(x, p, layer.bias, "gemv"), test_utils=checks)
    torch.library.opcheck(ops.dequantize_chunked_op, ops.dequantize_chunked_args(p, torch.float16), test_utils=checks)
    torch.library.opcheck(ops.gather_x_chunked, (x, layer.perm), test_utils=checks)
    torch.library.opcheck(ops.outlier_bases_op, ops.outlier_bases_args(p), test_utils=checks)
    with_bases = p.with_bases(ops.outlier_bases(p))
    torch.library.opcheck(ops.fused_matmul_op, ops.fused_matmul_args(x, with_bases, layer.bias, "gemv_seg"),
                          test_utils=checks)


@pytest.mark.parametrize("kernel", ["gemv", "gemv_xc", "gemv_seg", "dot", "dequantize"])
def test_torch_compile_traces_the_kernels_without_graph_breaks(kernel, monkeypatch):
    """fullgraph=True fails on any graph break: the ops' fake implementations let dynamo/AOT trace through."""
    monkeypatch.setenv(select.MATMUL_ENV, kernel)
    layer = _layer(32, 64, get_preset("spqr-w3"))
    x = torch.randn(2, 64, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if on_cuda else "aot_eager")
    _check(layer, x, compiled(x))


def test_torch_compile_with_dynamic_rows_picks_per_row_count(monkeypatch):
    """A layer compiled with dynamic shapes (fullgraph) over several row counts: the selector runs at trace time
    (the eager path's kept picks are not used under tracing), each output matches the reference."""
    monkeypatch.delenv(select.MATMUL_ENV, raising=False)
    layer = _layer(32, 64, get_preset("spqr-w3"))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="inductor" if on_cuda else "aot_eager")
    for rows in (2, 3, 9):
        x = torch.randn(rows, 64, device=DEVICE)
        _check(layer, x, compiled(x))
    assert not layer._choices  # (nothing kept from traced calls)


def test_selector(monkeypatch):
    layer = _layer(32, 64, get_preset("spqr-w3"))
    x = torch.randn(1, 64)
    monkeypatch.delenv(select.MATMUL_ENV, raising=False)
    assert choose_kernel(layer, x) == "reference"  # CPU: the reference
    for forced in ("gemv", "gemv_xc", "gemv_pairs", "dot", "dot_pairs", "dequantize", "reference"):
        monkeypatch.setenv(select.MATMUL_ENV, forced)
        assert choose_kernel(layer, x) == forced
    monkeypatch.setenv(select.MATMUL_ENV, "fastest")
    with pytest.raises(ValueError, match="expected auto"):
        choose_kernel(layer, x)
    odd = _layer(32, 96, QuantConfig(wbits=3, beta1=48, beta2=16))  # groups of 48: no kernel covers them
    monkeypatch.setenv(select.MATMUL_ENV, "dot")
    with pytest.raises(ValueError, match="power of two"):
        choose_kernel(odd, x)
    # a layer keeps its pick per (rows, dtype, device type, SPQRKIT_MATMUL): a changed variable is obeyed at once
    # (on the CPU: the reference path, cheap for 99 row counts)
    cpu = layer.to("cpu")
    monkeypatch.delenv(select.MATMUL_ENV, raising=False)
    torch.testing.assert_close(cpu(x), reference_matmul(cpu, x))
    monkeypatch.setenv(select.MATMUL_ENV, "fastest")
    with pytest.raises(ValueError, match="expected auto"):
        cpu(x)
    monkeypatch.delenv(select.MATMUL_ENV)
    for rows in range(1, 100):  # (one pick per row count: the kept picks stay few)
        cpu(torch.randn(rows, 64))
    assert 0 < len(cpu._choices) <= 64
    for kernel in ("gemv", "gemv_xc", "gemv_seg", "dot", "dequantize"):
        assert reach.unsupported_reason(64, 6, 16, kernel) is None
        assert "power of two" in reach.unsupported_reason(64, 3, 48, kernel)


def _policy(rows, dtype, wbits, group):
    """The selector's policy stated as a chain of conditions (independently of `select.SELECTION`'s table)."""
    if rows == 0 or dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return "reference"
    if rows <= select.GEMV_PAIRS_MAX_ROWS and dtype in (torch.float16, torch.bfloat16):
        wanted = ["gemv_pairs", "gemv_seg", "dot", "dequantize"]
    elif rows <= select.GEMV_SEG_MAX_ROWS:
        wanted = ["gemv_seg", "dot", "dequantize"]
    elif rows <= select.DOT_MAX_ROWS:
        wanted = ["dot", "dequantize"]
        if rows <= reach.rows_per_launch("gemv_seg"):
            wanted.insert(1, "gemv_seg")
        if dtype == torch.float16 and rows <= select.DOT_PAIRS_MAX_ROWS:
            wanted.insert(0, "dot_pairs")
    else:
        wanted = ["dequantize"]
    if dtype == torch.float32:
        wanted = [k for k in wanted if k != "dot"]
    return next((k for k in wanted if reach.unsupported_reason(128, wbits, group, k) is None), "reference")


def test_selection_table_is_the_policy():
    """The table picks what the policy says for every row count, dtype and a layout each kernel's reach splits on
    (checked on the CPU by asking for a CUDA device type: the pick needs no device)."""
    for wbits, group in ((3, 16), (6, 16), (3, 4), (3, 48), (2, 0), (4, 64), (8, 8)):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            for rows in range(0, 80):
                assert select.pick(rows, dtype, "cuda", 128, wbits, group) == _policy(rows, dtype, wbits, group), (
                    wbits, group, dtype, rows)
            assert select.pick(1, dtype, "cpu", 128, wbits, group) == "reference"
    assert select.pick(8, torch.float16, "cuda", 128, 3, 16) == "dot_pairs"
    assert select.pick(65, torch.float16, "cuda", 128, 3, 16) == "dequantize"


@pytest.mark.skipif(not on_cuda, reason="needs a CUDA device")
def test_selector_on_cuda_by_batch(monkeypatch):
    monkeypatch.delenv(select.MATMUL_ENV, raising=False)
    layer = _layer(64, 128, get_preset("spqr-w3"))
    x16 = {rows: torch.randn(rows, 128, device="cuda", dtype=torch.float16)
           for rows in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 64, 65)}
    pick = {rows: choose_kernel(layer, x) for rows, x in x16.items()}

    def policy(rows):
        if rows <= select.GEMV_PAIRS_MAX_ROWS:
            return "gemv_pairs"
        for kernel, limit in (("gemv_seg", select.GEMV_SEG_MAX_ROWS), ("dot_pairs", select.DOT_PAIRS_MAX_ROWS),
                              ("dot", select.DOT_MAX_ROWS)):
            if rows <= limit:
                return kernel
        return "dequantize"

    assert pick == {rows: policy(rows) for rows in x16}
    assert pick[1] == "gemv_pairs" and pick[2] == "gemv_pairs" and pick[8] == "dot_pairs" and pick[64] == "dot"
    assert pick[65] == "dequantize"
    bf16 = {rows: torch.randn(rows, 128, device="cuda", dtype=torch.bfloat16) for rows in (1, 2, 8)}
    assert [choose_kernel(layer, bf16[r]) for r in (1, 2, 8)] == ["gemv_pairs", "gemv_pairs", "dot"]
    six = _layer(64, 128, QuantConfig(wbits=6, beta1=16, beta2=16))
    assert choose_kernel(six, x16[1]) == "gemv_seg"
    g4 = _layer(64, 128, QuantConfig(wbits=3, beta1=4, beta2=16))  # groups of 4: not dot's; gemv_seg up to 8 rows
    assert [choose_kernel(g4, x16[r]) for r in (1, 8, 9)] == ["gemv_seg", "gemv_seg", "dequantize"]
    assert choose_kernel(six, x16[8]) == "dot"  # 6-bit codes: no pair schedule
    x32 = {rows: torch.randn(rows, 128, device="cuda") for rows in (1, 8, 16)}  # fp32: no dot (no tensor cores)
    assert [choose_kernel(layer, x32[r]) for r in (1, 8, 16)] == ["gemv_seg", "gemv_seg", "dequantize"]
    odd = _layer(64, 96, QuantConfig(wbits=3, beta1=48, beta2=16))
    assert choose_kernel(odd, torch.randn(1, 96, device="cuda")) == "reference"


@pytest.mark.skipif(not on_cuda, reason="needs a CUDA device")
def test_cuda_graph_capture_of_the_fused_kernels(monkeypatch):
    layer = _layer(256, 512, get_preset("spqr-w3"))
    x = torch.randn(1, 512, device="cuda", dtype=torch.float16)
    for kernel in ("gemv", "gemv_xc", "gemv_seg", "gemv_pairs", "dot", "dot_pairs", "dequantize"):
        monkeypatch.setenv(select.MATMUL_ENV, kernel)
        y = layer(x)  # compile before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y_graph = layer(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        _check(layer, x, y_graph)
        del y


def test_interpreter_fix_is_only_installed_under_the_interpreter():
    from triton.runtime import interpreter

    fixed = getattr(interpreter._patch_lang_tensor, "_spqrkit_fixed", False)
    assert fixed == (os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.parametrize("kernel", ["gemv", "gemv_xc", "gemv_seg", "gemv_pairs", "dot", "dot_pairs"])
def test_fused_kernels_forced_on_an_empty_input(kernel):
    """No rows of x: an empty [..., out] result, no launch (the selector's auto mode takes the reference there)."""
    layer = _layer(32, 64, get_preset("spqr-w3"))
    y = MATMULS[kernel](layer, torch.randn(2, 0, 64, device=DEVICE).half())
    assert y.shape == (2, 0, 32) and y.dtype == torch.float16


def test_chunk_major_tile_follows_the_triton_version():
    """gemv_seg's and gemv_pairs' default tile orientation: [chunks, rows] up to Triton 3.6, [rows, chunks] after
    (the one each version lays out with a chunk of every row in one thread: tests/test_sass_report.py)."""
    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    assert plan.chunk_major_tile() == ((major, minor) <= (3, 6))
