"""The SpQR matmul kernels as torch custom ops, so that torch.compile traces through them and CUDA graphs capture
them: `spqrkit::fused_matmul` (the gemv and dot kernel families), `spqrkit::outlier_bases` (their derived outlier
base weights), `spqrkit::dequantize_chunked` (the weight in the activation dtype, for cuBLAS) and
`spqrkit::gather_x_chunked` (x's columns in that weight's order). Each has a fake (meta) implementation giving the
output's shape and dtype. Nothing in them synchronises with the host: the outlier ranges are read from the row
pointers on the device.

Custom ops take flat tensors and integers, so a `PackedLayer` is flattened here and only here: `fused_matmul`,
`outlier_bases` and `dequantize_chunked` take the structure and call the op with `*_args`' flat arguments; the op
rebuilds it (`PackedLayer.from_flat`). Eager callers (`eager`) call the implementations directly
(`fused_matmul_impl`, `dequantize.outlier_bases`, `dequantize.dequantize_chunked`, `gather_x_chunked_impl`), which
spares the host the custom-op dispatch (tens of microseconds a call); `SpQRLinear` does.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..format.packed_layer import PackedLayer
from . import dequantize, dot, gather, gemv, gemv_pairs
from .reach import rows_per_launch

LAUNCHERS = {
    "gemv": gemv.gemv, "gemv_xc": functools.partial(gemv.gemv, x_chunked=True),
    "gemv_seg": functools.partial(gemv.gemv, segments=True), "gemv_pairs": gemv_pairs.gemv_pairs,
    "dot": dot.dot, "dot_pairs": dot.dot_pairs,
}


def eager(x: Tensor) -> bool:
    """Whether a call may skip the custom op's dispatch and run its implementation directly: a plain tensor
    (not a fake, functional or other subclass tensor of a tracer) outside torch.compile / export."""
    return type(x) is Tensor and not torch.compiler.is_compiling()


def fused_matmul_impl(x: Tensor, p: PackedLayer, bias: Tensor | None, kernel: str) -> Tensor:
    """y [..., out] = x [..., in] W^T (+ bias) by `kernel` (a key of LAUNCHERS): "gemv" (few rows, CUDA cores),
    "gemv_xc" (the same after gathering x into the kernel's tile order), "gemv_seg" (x also pre-scaled per code
    position, statistics applied per segment), "gemv_pairs" (one or two rows of fp16 / bf16 x, packed fp16 pairs),
    "dot" (tensor cores, any number of rows in one call) or "dot_pairs" (dot with its operand decoded in fp16
    pairs, fp16 x). `p.bases` (the outliers' base weights, `dequantize.outlier_bases`) is read by gemv_seg,
    gemv_pairs, dot and dot_pairs (None: they decode them again). The gemv kernels take a few rows of x a launch."""
    launch = LAUNCHERS[kernel]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:  # no rows: nothing to launch
        return x.new_empty((*x.shape[:-1], p.out_features))
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    step = rows_per_launch(kernel) or x2.shape[0]
    parts = [launch(x2[i:i + step], p, bias) for i in range(0, x2.shape[0], step)]
    y = parts[0] if len(parts) == 1 else torch.cat(parts)
    return y.reshape(*x.shape[:-1], p.out_features)


@torch.library.custom_op("spqrkit::fused_matmul", mutates_args=())
def fused_matmul_op(
    x: Tensor, codes: Tensor, scale: Tensor, scale_stats: Tensor | None, zero: Tensor, zero_stats: Tensor | None,
    row_ptr: Tensor, cols: Tensor, vals: Tensor, perm: Tensor, bias: Tensor | None, in_features: int,
    out_features: int, wbits: int, group: int, beta2: int, scale_bits: int, zero_bits: int, kernel: str,
    bases: Tensor | None = None,
) -> Tensor:
    """`fused_matmul_impl` on flat arguments (`fused_matmul_args`)."""
    p = PackedLayer.from_flat((codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm),
                              (in_features, out_features, wbits, group, beta2, scale_bits, zero_bits), bases)
    return fused_matmul_impl(x, p, bias, kernel)


@fused_matmul_op.register_fake
def _fused_matmul_fake(x, codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias, in_features,
                       out_features, wbits, group, beta2, scale_bits, zero_bits, kernel, bases=None):
    return x.new_empty((*x.shape[:-1], out_features))


def fused_matmul_args(x: Tensor, p: PackedLayer, bias: Tensor | None, kernel: str) -> tuple:
    return (x, *p.flat_tensors(), bias, *p.flat_layout(), kernel, p.bases)


def fused_matmul(x: Tensor, p: PackedLayer, bias: Tensor | None, kernel: str) -> Tensor:
    """`spqrkit::fused_matmul` (what tracers see) of `fused_matmul_impl`'s arguments."""
    return fused_matmul_op(*fused_matmul_args(x, p, bias, kernel))


@torch.library.custom_op("spqrkit::outlier_bases", mutates_args=())
def outlier_bases_op(
    codes: Tensor, scale: Tensor, scale_stats: Tensor | None, zero: Tensor, zero_stats: Tensor | None,
    row_ptr: Tensor, cols: Tensor, vals: Tensor, perm: Tensor, in_features: int, out_features: int, wbits: int,
    group: int, beta2: int, scale_bits: int, zero_bits: int,
) -> Tensor:
    """fp32 [nnz]: the base weight at each outlier (`dequantize.outlier_bases`)."""
    return dequantize.outlier_bases(PackedLayer.from_flat(
        (codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm),
        (in_features, out_features, wbits, group, beta2, scale_bits, zero_bits)))


@outlier_bases_op.register_fake
def _outlier_bases_fake(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, in_features,
                        out_features, wbits, group, beta2, scale_bits, zero_bits):
    return vals.new_empty(vals.shape, dtype=torch.float32)


def outlier_bases_args(p: PackedLayer) -> tuple:
    return (*p.flat_tensors(), *p.flat_layout())


def outlier_bases(p: PackedLayer) -> Tensor:
    """`spqrkit::outlier_bases` of `p`."""
    return outlier_bases_op(*outlier_bases_args(p))


@torch.library.custom_op("spqrkit::dequantize_chunked", mutates_args=())
def dequantize_chunked_op(
    codes: Tensor, scale: Tensor, scale_stats: Tensor | None, zero: Tensor, zero_stats: Tensor | None,
    row_ptr: Tensor, cols: Tensor, vals: Tensor, perm: Tensor, in_features: int, out_features: int, wbits: int,
    group: int, beta2: int, scale_bits: int, zero_bits: int, dtype: torch.dtype,
) -> Tensor:
    """W [out, ceil(in / 32) * 32] in `dtype`, columns in `gather.chunked_column_order`, outliers in place
    (`dequantize.dequantize_chunked`)."""
    return dequantize.dequantize_chunked(PackedLayer.from_flat(
        (codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm),
        (in_features, out_features, wbits, group, beta2, scale_bits, zero_bits)), dtype)


@dequantize_chunked_op.register_fake
def _dequantize_chunked_fake(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, in_features,
                             out_features, wbits, group, beta2, scale_bits, zero_bits, dtype):
    return codes.new_empty((out_features, -(-in_features // 32) * 32), dtype=dtype)


def dequantize_chunked_args(p: PackedLayer, dtype: torch.dtype) -> tuple:
    return (*p.flat_tensors(), *p.flat_layout(), dtype)


def dequantize_chunked(p: PackedLayer, dtype: torch.dtype) -> Tensor:
    """`spqrkit::dequantize_chunked` of `p`."""
    return dequantize_chunked_op(*dequantize_chunked_args(p, dtype))


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
