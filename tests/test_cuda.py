"""CPU and CUDA agree. These run on the GPU machine (the `device` tool); without CUDA they are skipped."""

import math

import pytest
import torch

from spqrkit.config import get_preset
from spqrkit.quant.solver import layer_error, quantize_matrices

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _problem(out=256, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4096, n, generator=g) @ (torch.randn(n, n, generator=g) * 0.2 + torch.eye(n))
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(out, n, generator=g) * 0.02
    W += (torch.rand(out, n, generator=g) < 0.005) * torch.randn(out, n, generator=g) * 0.2
    return W, H


@cuda
@pytest.mark.parametrize("preset", ["spqr-w3", "spqr-w4", "gptq-w4", "gptq-w3-g128", "rtn-w4"])
def test_solver_cpu_and_cuda_agree(preset):
    torch.backends.cuda.matmul.allow_tf32 = False
    W, H = _problem()
    cfg = get_preset(preset)
    (cpu,) = quantize_matrices([W], H, cfg)
    (gpu,) = quantize_matrices([W.cuda()], H.cuda(), cfg)
    w_cpu, w_gpu = cpu.dequantize(), gpu.dequantize().cpu()
    # A sequential rounding algorithm: fp32 summation order differs between devices, so a few codes near a rounding
    # boundary may flip and shift later columns slightly. The errors must agree closely and most weights exactly.
    assert (w_cpu == w_gpu).float().mean() > 0.95
    e_cpu, e_gpu = layer_error(W, w_cpu, H), layer_error(W, w_gpu, H)
    assert abs(e_cpu - e_gpu) <= 0.03 * e_cpu, (e_cpu, e_gpu)
    if math.isfinite(cfg.outlier_threshold):
        assert abs(cpu.n_outliers - gpu.n_outliers) <= max(3, 0.05 * cpu.n_outliers)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_hessian_on_cuda_matches_fp32(dtype):
    from spqrkit.quant.hessian import HessianAccumulator

    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(3, 1000, 256, device="cuda").to(dtype)
    fast, slow = HessianAccumulator(256), HessianAccumulator(256)
    for chunk in x:
        fast.add(chunk)
        slow.add(chunk.float())
    torch.testing.assert_close(fast.finalize(), slow.finalize(), rtol=1e-5, atol=1e-5)
