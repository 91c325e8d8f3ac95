"""The batch-1 fp16-pair kernel (spqrkit.kernels.gemv_pairs) and its code-pair schedules (pair_schedule).

The schedules are checked exactly (every code once, both codes inside their half's mantissa, the or-ed exponents
and masks); the x kernel against its plain-torch reference (bit for bit but the group sums); the kernel against the
fp64 product within the bound of tests/test_kernels_matmul.py on every layout, with outliers at the extremes,
large activations (the chunk scaling), split K and other tiles. Without CUDA they run in Triton's interpreter,
which emulates the fp16-pair instructions (`_pair_mac`, `_pair_halves`); on the GPU the inline PTX runs.
"""

import pytest
import torch

from spqrkit.config import QuantConfig, get_preset
from spqrkit.kernels.pair_schedule import (
    SCHEDULES,
    half_magic,
    pair_exponents,
    pair_order,
    pair_plan,
    schedule_group,
)
from spqrkit.modules.linear import MATMULS

triton = pytest.importorskip("triton")
from test_kernels_matmul import (
    DEVICE,
    GRID,
    GRID_CPU,
    STAT_VARIANT_IDS,
    STAT_VARIANTS,
    _check,
    _layer,
    on_cuda,
    sweep,
)

from spqrkit.kernels import gemv_pairs, ops, reach, select


@pytest.mark.parametrize("key", sorted(SCHEDULES))
def test_pair_schedules_cover_every_code_inside_the_mantissas(key):
    wbits, group = key
    sched = SCHEDULES[key]
    assert sorted(c for _, a, b in sched for c in (a, b)) == list(range(32))
    for start, a, b in sched:
        lo, hi = wbits * a - start, wbits * b - start
        assert 0 <= lo and lo + wbits <= 10, (start, a)  # low half's mantissa: bits 0..9
        assert 16 <= hi and hi + wbits <= 26, (start, b)  # high half's: bits 16..25
    plan, types = pair_plan(wbits, group)
    windows = {(w, s) for w, s, *_ in plan if s}
    assert len(windows) <= {2: 2, 3: 5, 4: 4}[wbits]  # the shifts a chunk costs
    assert pair_order(wbits, group) == tuple(c for _, a, b in sched for c in (a, b))
    exps = pair_exponents(wbits, group)  # each code's bit in its half: the code alone is a subnormal half
    assert exps == tuple(e for start, a, b in sched for e in (wbits * a - start, wbits * b - start - 16))
    assert all(0 <= e <= 10 - wbits for e in exps)
    for (word, shift, funnel, mask, magic, t), (start, a, b) in zip(plan, sched):
        assert word * 32 + shift == start and funnel == (shift > 0 and word + 1 < wbits)
        lo = wbits * a - start
        assert mask == ((1 << wbits) - 1) << lo | ((1 << wbits) - 1) << (wbits * b - start)
        assert magic == half_magic(lo) | half_magic(wbits * b - start - 16) << 16
        g = (lambda c: c // group) if group < 32 else (lambda c: 0)
        assert types[t] == (g(a), g(b))


def test_half_magic_makes_the_code_an_integer_above_a_power_of_two():
    for e in range(8):
        for q in range(8):
            half = torch.tensor([half_magic(e) | q << e], dtype=torch.int16).view(torch.float16).item()
            assert half == 2 ** (10 - e) + q


def test_masked_codes_are_subnormal_halves():
    """gemv_pairs' decode: a code at bit e of a half with a zero exponent field is exactly q 2**(e - 24), and the
    fp16 FMA with x'' = x 2**(24 - e - k) gives q x 2**-k (here exactly: no rounding at these sizes)."""
    for e in range(8):
        for q in range(1 << min(4, 10 - e)):
            half = torch.tensor([q << e], dtype=torch.int16).view(torch.float16)
            assert half.item() == q * 2.0 ** (e - 24)
            x, k = 0.75, 9  # (k as the x kernel picks it for a chunk whose largest |x| is 0.75)
            xs = torch.tensor([x * 2.0 ** (24 - e - k)], dtype=torch.float16)
            assert (half.float() * xs.float()).item() == q * x * 2.0 ** -k


def test_schedule_group_and_unsupported_layouts():
    assert [schedule_group(g) for g in (0, 2, 4, 8, 16, 32, 64, 128)] == [32, None, None, 8, 16, 32, 32, 32]
    assert pair_plan(5, 16) is None and pair_plan(3, 4) is None
    assert reach.unsupported_reason(64, 3, 16, "gemv_pairs") is None
    assert "no fp16-pair schedule" in reach.unsupported_reason(64, 3, 4, "gemv_pairs")
    assert "no fp16-pair schedule" in reach.unsupported_reason(64, 6, 16, "gemv_pairs")
    assert gemv_pairs.supports(torch.float16, 3, 16)
    layer = _layer(32, 64, get_preset("spqr-w3"))
    assert gemv_pairs.supports(torch.bfloat16, 3, 16) and not gemv_pairs.supports(torch.float32, 3, 16)
    with pytest.raises(ValueError, match="1..2 rows of fp16 / bf16 x"):
        gemv_pairs.gemv_pairs(torch.randn(3, 64, device=DEVICE).half(), layer.packed_layer())


@pytest.mark.parametrize("wbits,group,nch", [(3, 16, 4), (2, 8, 8), (4, 0, 2)])
def test_gather_x_pairs_is_the_reference(wbits, group, nch):
    n_in = 200
    perm = torch.randperm(n_in, device=DEVICE).to(torch.int16)
    x = (torch.randn(2, n_in, device=DEVICE) * 3).half()  # (two rows: each output's rows, one per row of x)
    x[0, 5] = 3000.0  # a chunk scaled by 2**-4
    x[1, 40] = -70000 / 1.1  # the largest fp16 range
    xp, sc, xs, xo = gemv_pairs.gather_x_pairs(x, perm, wbits, group, nch, 8)
    rp, rsc, rxs, rxo = gemv_pairs.pairs_x_reference(x, perm, wbits, group, nch, 8)
    assert torch.equal(xp, rp) and torch.equal(sc, rsc) and torch.equal(xo, rxo)
    assert xp.float().abs().max() < 2 ** 15 and torch.isfinite(xp).all()  # every x'' fits fp16 with headroom
    assert sc.max() / sc.min() >= 2 ** 10  # (the 3000 / 63636 chunks scaled further than the others)
    torch.testing.assert_close(xs, rxs, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("wbits,beta1,beta2", sweep(GRID, GRID_CPU))
def test_gemv_pairs_every_layout(wbits, beta1, beta2):
    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    out, n_in = (beta2 * 2, 200) if not on_cuda else (beta2 * 40, 1000)
    layer = _layer(out, n_in, cfg, seed=wbits * 100 + beta1, dense_rows=3, empty_rows=5)
    for rows in (1, 2):  # (two rows of x: one launch, each code pair decoded once for both)
        x = torch.randn(rows, n_in, device=DEVICE).half()
        _check(layer, x, MATMULS["gemv_pairs"](layer, x))


@pytest.mark.parametrize("config", STAT_VARIANTS, ids=STAT_VARIANT_IDS)
def test_gemv_pairs_statistics_variants(config):
    out, n_in = (64, 136) if not on_cuda else (512, 1064)  # in not a multiple of 32: padded last chunk
    layer = _layer(out, n_in, config, seed=7, dense_rows=2, empty_rows=2)
    for rows in (1, 2):
        x = torch.randn(rows, n_in, device=DEVICE).half()
        _check(layer, x, MATMULS["gemv_pairs"](layer, x))


@pytest.mark.parametrize("outlier_share,dense_rows,empty_rows", [(0.0, 0, 0), (0.3, 8, 0), (0.01, 0, 30)])
def test_gemv_pairs_outlier_extremes(outlier_share, dense_rows, empty_rows):
    rows = 48 if on_cuda else 32  # (two or three groups of beta2 rows; the interpreter's time grows with the rows)
    layer = _layer(rows, 128, get_preset("spqr-w3"), outlier_share=outlier_share, dense_rows=dense_rows,
                   empty_rows=empty_rows, bias=False)
    x = torch.randn(2, 128, device=DEVICE).half()
    _check(layer, x, MATMULS["gemv_pairs"](layer, x))
    for late in (True, False):  # (the first outlier step inside the loop, or loaded before it and added after)
        y = gemv_pairs.gemv_pairs(x[:1], layer.packed_layer(), chunks=2, outliers_late=late)
        _check(layer, x[:1], y)


@pytest.mark.parametrize("wbits", [2, 3, 4])
def test_gemv_pairs_large_activations_do_not_overflow_the_fp16_sums(wbits):
    """A chunk with |x| up to 20000 (16 products of up to 15 x 20000 would overflow fp16 without the chunk's
    2**-k scaling), and one with tiny values next to it."""
    cfg = QuantConfig(wbits=wbits, beta1=32, beta2=16, scale_bits=3, zero_bits=3)
    layer = _layer(32, 256, cfg, seed=3)
    x = torch.randn(2, 256, device=DEVICE)
    x[0, :40] *= 8000.0
    x[0, 40:80] *= 1e-3
    x[1, 100:140] *= 5000.0  # (the second row of x scaled by its own chunk scales)
    x = x.half()
    _check(layer, x, MATMULS["gemv_pairs"](layer, x))
    _check(layer, x[:1], MATMULS["gemv_pairs"](layer, x[:1]))


@pytest.mark.parametrize("wbits,beta1,beta2", sweep(GRID[::3], GRID[:1]))
def test_gemv_pairs_tiles_and_split(wbits, beta1, beta2):
    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    layer = _layer(beta2 * 2, 1100 if on_cuda else 300, cfg, dense_rows=3, empty_rows=5)
    one_row = [{"chunks": 4, "split": 3}, {"block_rows": 8, "chunks": 8, "num_warps": 4},
               {"block_rows": 2, "chunks": 16, "bases": layer.outlier_bases()},
               {"chunks": 4, "split": 2, "rows_in_thread": True},
               {"chunks": 4, "split": 3, "outliers_late": True}, {"block_rows": 2, "outliers_late": False},
               {"chunks": 4, "split": 2, "rows_in_thread": False}]  # both tile orientations (`chunk_major_tile`)
    two_rows = [{"chunks": 4, "split": 3, "bases": layer.outlier_bases()},
                {"block_rows": 2, "chunks": 8, "num_warps": 2, "rows_in_thread": True},
                {"chunks": 4, "split": 2, "rows_in_thread": False, "max_registers": None},
                {"chunks": 4, "split": 2, "outliers_late": True, "bases": layer.outlier_bases()}]
    if on_cuda:  # (no split is every other test's path; 100 is capped to 3 on the CPU's 3 tiles; PDL and register
        # caps are compiled-only)
        one_row += [{"chunks": 4, "split": 1}, {"chunks": 4, "split": 2}, {"chunks": 4, "split": 100},
                    {"chunks": 4, "pdl": True}]
        two_rows += [{"chunks": 4, "split": 1}]
    for rows, cases in ((1, one_row), (2, two_rows)):
        x = torch.randn(rows, layer.in_features, device=DEVICE).half()
        for opts in cases:
            p = layer.packed_layer(opts.pop("bases", None))
            _check(layer, x, gemv_pairs.gemv_pairs(x, p, layer.bias, **opts))


def test_gemv_pairs_custom_op_and_torch_compile(monkeypatch):
    """The op's schema and fake implementation, and a fullgraph torch.compile through it (three rows of x: a launch
    of two rows and one of one)."""
    layer = _layer(32, 64, get_preset("spqr-w3"))
    x = torch.randn(3, 64, device=DEVICE).half()
    bases = layer.outlier_bases()
    torch.library.opcheck(ops.fused_matmul_op, ops.fused_matmul_args(x, layer.packed_layer(bases), layer.bias,
                                                                    "gemv_pairs"),
                          test_utils=("test_schema", "test_faketensor"))
    monkeypatch.setenv(select.MATMUL_ENV, "gemv_pairs")
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if on_cuda else "aot_eager")
    _check(layer, x, compiled(x))


@pytest.mark.parametrize("wbits,beta1,beta2", sweep(GRID[1::4], GRID[1:2]))
def test_gemv_pairs_bf16_activations(wbits, beta1, beta2):
    """bf16 x, multiplied as fp16 after the x kernel's per-chunk scaling (which also takes |x| far past fp16's
    range), y in bf16."""
    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    layer = _layer(beta2 * 2, 200, cfg, seed=wbits + beta1)
    x = torch.randn(2, 200, device=DEVICE)
    x[0, :20] *= 1e6  # beyond fp16's 65504
    x[1, 150:170] *= 1e5
    x = x.to(torch.bfloat16)
    _check(layer, x, MATMULS["gemv_pairs"](layer, x))
