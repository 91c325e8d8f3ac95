"""The small-batch tensor-core kernel with its operand decoded in fp16 pairs (spqrkit.kernels.dot_pairs).

Checked against the fp64 product within the bound of tests/test_kernels_matmul.py on every layout, every statistics
variant, outliers at the extremes, other tiles and split K; its x in the pair order against a plain-torch gather;
its fp16-pair arithmetic (emulated under Triton's interpreter, inline PTX on the GPU) against the weights it must
give. Without CUDA they run in Triton's interpreter on small shapes.
"""

import pytest
import torch

from spqrkit.config import get_preset
from spqrkit.kernels.pair_schedule import pair_order
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

from spqrkit.kernels import dot, dot_pairs, gather, ops, reach, select


def _run(layer, x, **options):
    bases = options.pop("bases", layer.outlier_bases())
    return dot.dot_pairs(x, layer.packed_layer(bases), layer.bias, **options)


@pytest.mark.parametrize("wbits,beta1,beta2", sweep(GRID, GRID_CPU))
def test_dot_pairs_every_layout(wbits, beta1, beta2):
    from spqrkit.config import QuantConfig

    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    out, n_in = (beta2 * 2, 200) if not on_cuda else (beta2 * 40, 1000)
    layer = _layer(out, n_in, cfg, seed=wbits * 100 + beta1, dense_rows=3, empty_rows=5)
    for rows in (2, 5, 17):
        x = torch.randn(rows, n_in, device=DEVICE).half()
        _check(layer, x, MATMULS["dot_pairs"](layer, x))


@pytest.mark.parametrize("config", STAT_VARIANTS, ids=STAT_VARIANT_IDS)
def test_dot_pairs_statistics_variants(config):
    out, n_in = (64, 136) if not on_cuda else (512, 1064)  # in not a multiple of 32: a padded last chunk
    layer = _layer(out, n_in, config, seed=7, dense_rows=2, empty_rows=2)
    x = torch.randn(3, n_in, device=DEVICE).half()
    _check(layer, x, MATMULS["dot_pairs"](layer, x))


@pytest.mark.parametrize("outlier_share,dense_rows,empty_rows", [(0.0, 0, 0), (0.3, 8, 0), (0.01, 0, 30)])
def test_dot_pairs_outlier_extremes(outlier_share, dense_rows, empty_rows):
    layer = _layer(48, 128, get_preset("spqr-w3"), outlier_share=outlier_share, dense_rows=dense_rows,
                   empty_rows=empty_rows, bias=False)
    x = torch.randn(4, 128, device=DEVICE).half()
    _check(layer, x, MATMULS["dot_pairs"](layer, x))
    _check(layer, x, _run(layer, x, bases=None))  # the outliers' codes and statistics decoded again


@pytest.mark.parametrize("wbits,beta1,beta2", sweep(GRID[1::4], GRID[1:2]))
def test_dot_pairs_tiles_and_split(wbits, beta1, beta2):
    from spqrkit.config import QuantConfig

    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    layer = _layer(beta2 * 4 if on_cuda else 64, 1100 if on_cuda else 300, cfg, dense_rows=3, empty_rows=5)
    x = torch.randn(6, layer.in_features, device=DEVICE).half()
    for options in ({"chunks": 2, "split": 1}, {"chunks": 2, "split": 3}, {"chunks": 4, "split": 100},
                    {"block_n": 32, "chunks": 2, "num_warps": 2}, {"pdl": False, "chunks": 2},
                    {"block_m": 16, "chunks": 4, "outlier_rows": 2, "outliers_per_step": 16}):
        _check(layer, x, _run(layer, x, **options))


def test_gather_x_in_the_pair_order_is_the_reference():
    layer = _layer(32, 150, get_preset("spqr-w3"))  # 150: a padded last chunk
    x = torch.randn(3, 150, device=DEVICE).half()
    order, inv = dot_pairs.pair_column_orders(3, 16, x.device)
    assert [int(inv[c]) for c in pair_order(3, 16)] == list(range(32))
    xk = gather.gather_x_cols(x, layer.perm, 2, 16, 16, order=order)  # [n_tiles * 64, 16 rows]
    perm = layer.perm.to(torch.int64) & 0xFFFF
    expected = torch.zeros(xk.shape[0], 16, dtype=torch.float16, device=DEVICE)
    for k in range(xk.shape[0]):  # tiles of 2 chunks, segment-major: pairs 0-7 of both chunks, then pairs 8-15
        r = k % 64
        c = ((k // 64) * 2 + (r % 32) // 16) * 32 + pair_order(3, 16)[(r // 32) * 16 + r % 16]
        if c < 150:
            expected[k, :3] = x[:, perm[c]]
    assert torch.equal(xk, expected)


def test_pair_weight_arithmetic_is_one_fp16_rounding():
    """The operand's weight is q s16 + c16 (s16 = s and c16 = -s z, each rounded to fp16) rounded ONCE to fp16: with
    fp16 statistics (s z exact in fp32) and one-hot rows of x the kernel's output is those weights exactly."""
    from spqrkit.format.synthetic import random_quantized_weight
    from spqrkit.modules.linear import SpQRLinear

    qw = random_quantized_weight(64, 64, get_preset("gptq-w4"), seed=3, device=DEVICE, outlier_share=0.0)
    layer = SpQRLinear.from_quantized(qw, None)
    cols = (5, 40, 63)
    x = torch.zeros(len(cols), 64, device=DEVICE, dtype=torch.float16)
    for b, c in enumerate(cols):
        x[b, c] = 1.0
    y = _run(layer, x).float()
    place = torch.argsort(qw.perm.to(torch.int64))  # original column c sits at place[c] of the codes
    s, z = qw.scale[:, 0].float(), qw.zero[:, 0].float()
    for b, c in enumerate(cols):
        q = qw.codes[:, place[c]].double()
        w = (q * s.half().double() + (-s * z).half().double()).half().float()  # fp64: q s16 + c16 exactly
        torch.testing.assert_close(y[b], w, rtol=0, atol=0)


def test_dot_pairs_refuses_other_dtypes_and_layouts():
    layer = _layer(32, 64, get_preset("spqr-w3"))
    with pytest.raises(ValueError, match="fp16 x"):
        _run(layer, torch.randn(2, 64, device=DEVICE))
    assert "no fp16-pair schedule" in reach.unsupported_reason(64, 6, 16, "dot_pairs")
    assert reach.unsupported_reason(64, 3, 16, "dot_pairs") is None


def test_dot_pairs_custom_op_and_torch_compile(monkeypatch):
    layer = _layer(32, 64, get_preset("spqr-w3"))
    x = torch.randn(2, 64, device=DEVICE).half()
    args = ops.fused_matmul_args(x, layer.packed_layer(layer.outlier_bases()), layer.bias, "dot_pairs")
    torch.library.opcheck(ops.fused_matmul_op, args, test_utils=("test_schema", "test_faketensor"))
    monkeypatch.setenv(select.MATMUL_ENV, "dot_pairs")
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if on_cuda else "aot_eager")
    _check(layer, x, compiled(x))
