"""The weight dequantized once in the activation dtype (`dequantize_chunked`: large batches, then cuBLAS) and the
derived outlier base weights (`outlier_bases`) the fused kernels read instead of decoding each outlier's code and
statistics again. The dequantized weight is the reference's fp32 value rounded once; its columns are in a
chunk-major order so that the stores are contiguous (`gather.chunked_column_order`)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format.packed_layer import PackedLayer
from .decode import (
    chunk_code,
    chunk_words,
    code_to_float,
    group_stats,
    outlier_base_at,
    outlier_range,
    outlier_row_hits,
)
from .plan import layout_sizes, stat_pointers


@triton.jit
def _outlier_base_kernel(
    base_ptr, codes_ptr, s_ptr, sst_ptr, z_ptr, zst_ptr, rowptr_ptr, cols_ptr, vals_ptr,
    OUT, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, BR: tl.constexpr, KO: tl.constexpr,
):
    """base[k] (fp32) = the base weight at outlier k (`outlier_base_at` decoding it from the packed tensors), for
    the outliers of rows BR * pid ...: `outlier_bases`."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < OUT
    lo = tl.load(rowptr_ptr + rows, mask=rmask, other=0)
    hi = tl.load(rowptr_ptr + rows + 1, mask=rmask, other=0)
    kk = tl.arange(0, KO)
    for step in range(0, tl.max(hi - lo, axis=0), KO):
        k = lo[:, None] + step + kk[None, :]  # [BR, KO]
        km = k < hi[:, None]
        _, _, base = outlier_base_at(k, km, rows[:, None], codes_ptr, N_CHUNKS * WB, s_ptr, sst_ptr, z_ptr, zst_ptr,
                                      N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, base_ptr, WB, GROUP,
                                      SB, ZB, False)
        tl.store(base_ptr + k, base, mask=km)


@triton.jit
def _dequantize_kernel(
    w_ptr, codes_ptr, s_ptr, sst_ptr, z_ptr, zst_ptr,
    OUT, IN, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
    BR: tl.constexpr, NCH: tl.constexpr,
):
    """W_chunked [OUT, N_CHUNKS * 32] in w's dtype: column i * N_CHUNKS + j holds permuted column 32 j + i, i.e.
    s * (q - z) exactly as the reference computes it in fp32, then rounded (zero for the padding past IN); outliers
    are NOT applied (`_scatter_outliers_kernel` follows). This column order lets each program decode whole chunks
    with compile-time shifts and store code i of NCH consecutive chunks contiguously."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    ch = tl.program_id(1) * NCH + tl.arange(0, NCH)
    cm = ch < N_CHUNKS
    m2 = (rows < OUT)[:, None] & cm[None, :]
    w0, w1, w2, w3, w4, w5, w6, w7 = chunk_words(codes_ptr + rows[:, None] * (N_CHUNKS * WB) + ch[None, :] * WB,
                                                  m2, WB)
    for i in tl.static_range(32):
        if i == 0 or (GROUP > 0 and GROUP < 32 and i % GROUP == 0):
            s, z = group_stats(i, ch, rows, m2, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS,
                                BETA2, GROUP, SB, ZB)
        w = s * (code_to_float(chunk_code(i, WB, w0, w1, w2, w3, w4, w5, w6, w7)) - z)
        w = tl.where((ch * 32 + i < IN)[None, :], w, 0.0)
        tl.store(w_ptr + rows[:, None] * (N_CHUNKS * 32) + (i * N_CHUNKS + ch)[None, :],
                 w.to(w_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _scatter_outliers_kernel(w_ptr, rowptr_ptr, cols_ptr, vals_ptr, OUT, N_CHUNKS, BR: tl.constexpr,
                             KO: tl.constexpr):
    """W_chunked[row, position of col] = value for the outliers of rows BR * pid .. (after `_dequantize_kernel`)."""
    rows0 = tl.program_id(0) * BR
    k0, k_hi, lo, hi = outlier_range(rowptr_ptr, rows0, OUT, BR)
    while k0 < k_hi:
        k = k0 + tl.arange(0, KO)
        km = k < k_hi
        row = rows0 + outlier_row_hits(k, lo, hi)[1]
        col = tl.load(cols_ptr + k, mask=km, other=0).to(tl.int32) & 0xFFFF
        v = tl.load(vals_ptr + k, mask=km, other=0.0)
        tl.store(w_ptr + row * (N_CHUNKS * 32) + (col % 32) * N_CHUNKS + col // 32, v.to(w_ptr.dtype.element_ty),
                 mask=km)
        k0 += KO


def outlier_bases(p: PackedLayer):
    """fp32 [nnz]: the base weight s q - s z (`base_weight`: the dot operand's arithmetic) at each outlier's position,
    decoded from the packed tensors: a derived tensor (not stored in checkpoints; 4 bytes per outlier) that gemv_seg,
    gemv_pairs, dot and dot_pairs take as `PackedLayer.bases`, so that their outlier steps read (column, value, base)
    instead of decoding the outlier's code and two statistics again (~12 dependent loads). `SpQRLinear` computes it
    once per layer and device."""
    codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals = p.stored_tensors()
    in_features, out_features, wbits, group, beta2, scale_bits, zero_bits = p.flat_layout()
    n_chunks, n_groups, n_sw, n_zw = layout_sizes(in_features, out_features, wbits, group, scale_bits, zero_bits)
    base = torch.empty(vals.shape[0], dtype=torch.float32, device=vals.device)
    if base.numel():
        sp, ssp = stat_pointers(scale, scale_stats)
        zp, zsp = stat_pointers(zero, zero_stats)
        BR = 4
        _outlier_base_kernel[(triton.cdiv(out_features, BR),)](
            base, codes, sp, ssp, zp, zsp, row_ptr, cols, vals,
            out_features, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1),
            WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, BR=BR, KO=32, num_warps=4,
        )
    return base


def dequantize_chunked(p: PackedLayer, dtype):
    """W_chunked [out, ceil(in / 32) * 32] in `dtype`: the weight with column i * n_chunks + j holding permuted
    column 32 j + i (zero past `in`); gather_x_chunked(x, perm) @ W_chunked.T = x @ W.T."""
    codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals = p.stored_tensors()
    in_features, out_features, wbits, group, beta2, scale_bits, zero_bits = p.flat_layout()
    n_chunks, n_groups, n_sw, n_zw = layout_sizes(in_features, out_features, wbits, group, scale_bits, zero_bits)
    w = torch.empty(out_features, n_chunks * 32, dtype=dtype, device=codes.device)
    sp, ssp = stat_pointers(scale, scale_stats)
    zp, zsp = stat_pointers(zero, zero_stats)
    BR, NCH = 8, 32
    _dequantize_kernel[(triton.cdiv(out_features, BR), triton.cdiv(n_chunks, NCH))](
        w, codes, sp, ssp, zp, zsp, out_features, in_features, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1),
        WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, BR=BR, NCH=NCH, num_warps=4,
    )
    BR = 32
    _scatter_outliers_kernel[(triton.cdiv(out_features, BR),)](
        w, row_ptr, cols, vals, out_features, n_chunks, BR=BR, KO=64, num_warps=4,
    )
    return w
