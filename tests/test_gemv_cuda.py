"""The CUDA batch-1 kernel (spqrkit.kernels.gemv_cuda), against the fp64 product of the reference weight within
tests/test_kernels_matmul.py's bound, on every layout, the statistics variants, outliers at the extremes, large
and bf16 activations, and other tiles. Its source is compiled at run time by NVRTC, so these run on a GPU only
(benchmarks/gpu_tests.sh); the source's generation is checked everywhere."""

import pytest
import torch

from spqrkit.config import QuantConfig, get_preset

triton = pytest.importorskip("triton")
from test_kernels_matmul import DEVICE, GRID, STAT_VARIANT_IDS, STAT_VARIANTS, _check, _layer, on_cuda

from spqrkit.kernels import gemv_cuda

gpu = pytest.mark.skipif(not on_cuda, reason="gemv_cuda compiles CUDA C++ with NVRTC: GPU only")


def _run(layer, x, **opts):
    return gemv_cuda.gemv_cuda(x, *layer.kernel_tensors(), layer.bias, layer.out_features, *layer.kernel_layout(),
                               bases=layer.outlier_bases(), **opts)


def test_source_bakes_the_layout_and_shape_in():
    src = gemv_cuda.source(4096, 11008, 3, 16, 16, 3, 3, out_bf16=False)
    for line in ("#define WB 3", "#define N_CHUNKS 344", "#define N_GROUPS 688", "#define OUT 4096",
                 "#define NSEG 2", "#define SHARED2 1", "#define R 4", "#define BIAS 0"):
        assert line in src
    assert "@" not in src  # every placeholder filled
    small = gemv_cuda.source(64, 64, 3, 16, 2, 3, 3, bias_dtype=torch.float32, out_bf16=True)
    assert "#define SHARED2 0" in small and "#define BIAS 3" in small and "#define OUT_BF16 1" in small
    assert gemv_cuda.supports(torch.float16, 3, 16, 16, 3, 3) and gemv_cuda.supports(torch.bfloat16, 4, 0, 0, 0, 0)
    assert not gemv_cuda.supports(torch.float32, 3, 16, 16, 3, 3) and not gemv_cuda.supports(torch.float16, 3, 4,
                                                                                              16, 3, 3)


@gpu
@pytest.mark.parametrize("wbits,beta1,beta2", GRID)
def test_gemv_cuda_every_layout(wbits, beta1, beta2):
    cfg = QuantConfig(wbits=wbits, beta1=beta1, beta2=beta2, scale_bits=3, zero_bits=3)
    layer = _layer(beta2 * 40, 1000, cfg, seed=wbits * 100 + beta1, dense_rows=3, empty_rows=5)
    x = torch.randn(1, 1000, device=DEVICE).half()
    for bulk in (False, True):  # (32 chunks: whole 16-byte groups at every wbits)
        _check(layer, x, _run(layer, x, bulk=bulk))


@gpu
@pytest.mark.parametrize("config", STAT_VARIANTS, ids=STAT_VARIANT_IDS)
def test_gemv_cuda_statistics_variants(config):
    layer = _layer(512, 1064, config, seed=7, dense_rows=2, empty_rows=2)  # (in: a padded last chunk)
    x = torch.randn(1, 1064, device=DEVICE).half()
    _check(layer, x, _run(layer, x))


@gpu
@pytest.mark.parametrize("outlier_share,dense_rows,empty_rows", [(0.0, 0, 0), (0.3, 8, 0), (0.01, 0, 30)])
def test_gemv_cuda_outlier_extremes(outlier_share, dense_rows, empty_rows):
    layer = _layer(48, 128, get_preset("spqr-w3"), outlier_share=outlier_share, dense_rows=dense_rows,
                   empty_rows=empty_rows, bias=False)
    x = torch.randn(1, 128, device=DEVICE).half()
    _check(layer, x, _run(layer, x))


@gpu
@pytest.mark.parametrize("wbits", [2, 3, 4])
def test_gemv_cuda_large_and_bf16_activations(wbits):
    cfg = QuantConfig(wbits=wbits, beta1=32, beta2=16, scale_bits=3, zero_bits=3)
    layer = _layer(32, 256, cfg, seed=3)
    x = torch.randn(1, 256, device=DEVICE)
    x[0, :40] *= 8000.0  # (16 products of up to 15 x 8000 overflow fp16 without the chunk's scaling)
    x[0, 40:80] *= 1e-3
    _check(layer, x.half(), _run(layer, x.half()))
    xb = torch.randn(1, 256, device=DEVICE)
    xb[0, :20] *= 1e6  # beyond fp16's range: scaled into it by the x kernel, y in bf16
    xb = xb.bfloat16()
    y = _run(layer, xb)
    assert y.dtype == torch.bfloat16
    _check(layer, xb, y)


@gpu
@pytest.mark.parametrize("rows,threads", [(1, 32), (2, 64), (8, 128), (4, 256), (3, 128)])  # (3: 112 rows, a partial last block)
def test_gemv_cuda_tiles(rows, threads):
    layer = _layer(112, 1100, get_preset("spqr-w3"), dense_rows=3, empty_rows=5)
    x = torch.randn(1, 1100, device=DEVICE).half()
    _check(layer, x, _run(layer, x, rows=rows, threads=threads))


def test_gemv_cuda_refuses_what_it_cannot_run():
    layer = _layer(32, 64, get_preset("spqr-w3"))
    with pytest.raises(ValueError, match="one row of fp16 / bf16 x"):
        gemv_cuda.gemv_cuda(torch.randn(2, 64, device=DEVICE).half(), *layer.kernel_tensors(), None, 32,
                            *layer.kernel_layout(), bases=layer.outlier_bases())


@gpu
@pytest.mark.parametrize("n_in,threads,stages", [(1152, 32, 1), (1152, 32, 2), (4096, 32, 2), (4096, 64, 3),
                                                 (1024, 128, 2)])
def test_gemv_cuda_bulk_copies(n_in, threads, stages):
    """The words through shared memory: one stage (no refill), two (refilled after one, parity flipping), more
    stages than the loop has."""
    layer = _layer(64, n_in, get_preset("spqr-w3"), dense_rows=3, empty_rows=5)
    x = torch.randn(1, n_in, device=DEVICE).half()
    _check(layer, x, _run(layer, x, threads=threads, stages=stages, bulk=True))
    _check(layer, x, _run(layer, x, threads=threads, bulk=False))
