"""The SpQR matmul kernels as torch custom ops, so that torch.compile traces through them and CUDA graphs capture
them: `spqrkit::fused_matmul` (the `gemv` and `dot` kernels), `spqrkit::outlier_bases` (their derived outlier
base weights), `spqrkit::dequantize_chunked` (the weight in the activation dtype, for cuBLAS) and
`spqrkit::gather_x_chunked` (x's columns in that weight's order). Each has a fake (meta) implementation giving the
output's shape and dtype. Nothing in them synchronises with the host: the outlier ranges are read from the row
pointers on the device.

Argument order and meaning: see the launchers in spqrkit.kernels. Eager callers (`eager`) may call the
implementations directly (`fused_matmul_impl`, `dequantize.dequantize_chunked`, `gather_x_chunked_impl`), which
spares the host the custom-op dispatch; `SpQRLinear` does.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import dequantize, dot, gather, gemv, gemv_pairs
from .reach import rows_per_launch


def eager(x: Tensor) -> bool:
    """Whether a call may skip the custom op's dispatch and run its implementation directly: a plain tensor
    (not a fake, functional or other subclass tensor of a tracer) outside torch.compile / export. The dispatch of a
    Python custom op costs the host 25-55 us per call (H100 machines, torch 2.11, benchmarks/host_overhead.py),
    which an eager forward (no CUDA graph) pays at every linear; compiled and captured code is unaffected."""
    return type(x) is Tensor and not torch.compiler.is_compiling()


def fused_matmul_impl(
    x: Tensor, codes: Tensor, scale: Tensor, scale_stats: Tensor | None, zero: Tensor,
    zero_stats: Tensor | None, row_ptr: Tensor, cols: Tensor, vals: Tensor, perm: Tensor, bias: Tensor | None,
    out_features: int, wbits: int, group: int, beta2: int, scale_bits: int, zero_bits: int, kernel: str,
    bases: Tensor | None = None,
) -> Tensor:
    """`spqrkit::fused_matmul`'s implementation: y [..., out] = x [..., in] W^T (+ bias); kernel "gemv" (few rows, CUDA
    cores), "gemv_xc" (the same after gathering x into the kernel's tile order), "gemv_seg" (x also pre-scaled per code
    position, statistics applied per segment), "gemv_pairs" (one or two rows of fp16 / bf16 x per launch, packed fp16
    pairs), "dot" (tensor cores, any number of rows in one call) or "dot_pairs" (dot with its operand decoded in fp16
    pairs, fp16 x). `bases`: the outliers' base weights (`dequantize.outlier_bases`), taken by gemv_seg, gemv_pairs,
    dot and dot_pairs (None: they decode them again)."""
    fn = {"gemv": gemv.gemv, "gemv_xc": functools.partial(gemv.gemv, x_chunked=True),
          "gemv_seg": functools.partial(gemv.gemv, segments=True, bases=bases),
          "gemv_pairs": functools.partial(gemv_pairs.gemv_pairs, bases=bases),
          "dot": functools.partial(dot.dot, bases=bases),
          "dot_pairs": functools.partial(dot.dot_pairs, bases=bases)}[kernel]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:  # no rows: nothing to launch
        return x.new_empty((*x.shape[:-1], out_features))
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    step = rows_per_launch(kernel) or x2.shape[0]
    parts = [
        fn(x2[i:i + step], codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias,
           out_features, wbits, group, beta2, scale_bits, zero_bits)
        for i in range(0, x2.shape[0], step)
    ]  # the gemv kernels take a few rows of x at a time
    y = parts[0] if len(parts) == 1 else torch.cat(parts)
    return y.reshape(*x.shape[:-1], out_features)


# The custom op is the implementation itself (what torch.compile and other tracers see); eager callers may call
# `fused_matmul_impl` directly, sparing the dispatch.
fused_matmul = torch.library.custom_op("spqrkit::fused_matmul", mutates_args=())(fused_matmul_impl)


@fused_matmul.register_fake
def _fused_matmul_fake(x, codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias,
                       out_features, wbits, group, beta2, scale_bits, zero_bits, kernel, bases=None):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("spqrkit::outlier_bases", mutates_args=())
def outlier_bases(
    codes: Tensor, scale: Tensor, scale_stats: Tensor | None, zero: Tensor, zero_stats: Tensor | None,
    row_ptr: Tensor, cols: Tensor, vals: Tensor, in_features: int, out_features: int, wbits: int, group: int,
    beta2: int, scale_bits: int, zero_bits: int,
) -> Tensor:
    """fp32 [nnz]: the base weight at each outlier (`dequantize.outlier_bases`)."""
    return dequantize.outlier_bases(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, in_features,
                                     out_features, wbits, group, beta2, scale_bits, zero_bits)


@outlier_bases.register_fake
def _outlier_bases_fake(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, in_features, out_features,
                        wbits, group, beta2, scale_bits, zero_bits):
    return vals.new_empty(vals.shape, dtype=torch.float32)


@torch.library.custom_op("spqrkit::dequantize_chunked", mutates_args=())
def dequantize_chunked(
    codes: Tensor, scale: Tensor, scale_stats: Tensor | None, zero: Tensor, zero_stats: Tensor | None,
    row_ptr: Tensor, cols: Tensor, vals: Tensor, in_features: int, out_features: int, wbits: int, group: int,
    beta2: int, scale_bits: int, zero_bits: int, dtype: torch.dtype,
) -> Tensor:
    """W [out, ceil(in / 32) * 32] in `dtype`, columns in `gather.chunked_column_order`, outliers in place
    (the implementation: `dequantize.dequantize_chunked`)."""
    return dequantize.dequantize_chunked(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals,
                                          in_features, out_features, wbits, group, beta2, scale_bits, zero_bits,
                                          dtype)


@dequantize_chunked.register_fake
def _dequantize_chunked_fake(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, in_features,
                             out_features, wbits, group, beta2, scale_bits, zero_bits, dtype):
    return codes.new_empty((out_features, -(-in_features // 32) * 32), dtype=dtype)


def gather_x_chunked_impl(x: Tensor, perm: Tensor) -> Tensor:
    """x [..., in] -> [..., ceil(in / 32) * 32]: the columns in `dequantize_chunked`'s order (zero padding)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return gather.gather_x_chunked(x2, perm).reshape(*x.shape[:-1], -1)


gather_x_chunked = torch.library.custom_op("spqrkit::gather_x_chunked", mutates_args=())(gather_x_chunked_impl)


@gather_x_chunked.register_fake
def _gather_x_chunked_fake(x, perm):
    return x.new_empty((*x.shape[:-1], -(-x.shape[-1] // 32) * 32))
