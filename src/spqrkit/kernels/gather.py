"""The x kernels: x gathered through the permutation into the order the main kernels read, each with its plain-torch
reference. `gather_x_tiles` (gemv_xc, gemv_seg: tiles of chunks, code-major, optionally pre-scaled per code position
and with segment sums), `gather_x_cols` (dot, dot_pairs: transposed, segment-major, optionally in the pair order) and
`gather_x_chunked` (dequantize + cuBLAS: the chunk-major order of the dequantized weight's columns)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .decode import code_shift
from .tile import gdc_launch_dependents, zero_share


@triton.jit
def _gather_x_kernel(x_ptr, stride_xb, xc_ptr, perm_ptr, IN, N_CHUNKS, BLOCK: tl.constexpr):
    """xc[b, i * N_CHUNKS + j] = x[b, perm[32 j + i]] (0 past IN): x in the chunk-major permuted order."""
    b = tl.program_id(0)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c = (k % N_CHUNKS) * 32 + k // N_CHUNKS
    valid = (k < N_CHUNKS * 32) & (c < IN)
    p = tl.load(perm_ptr + c, mask=valid, other=0).to(tl.int32) & 0xFFFF
    v = tl.load(x_ptr + b * stride_xb + p, mask=valid, other=0.0)
    tl.store(xc_ptr + b * (N_CHUNKS * 32) + k, v, mask=k < N_CHUNKS * 32)


@triton.jit
def _gather_x_cols_kernel(x_ptr, stride_xb, xk_ptr, perm_ptr, zero_ptr, order_ptr, M, IN, ROWS, N_COLS, N_ZERO,
                          NCH: tl.constexpr, KSEG: tl.constexpr, CB: tl.constexpr, RB: tl.constexpr,
                          ORDERED: tl.constexpr, PDL: tl.constexpr):
    """x for the dot kernel, one program per (CB columns, RB rows of x): xk [N_COLS, ROWS] in xk's dtype,
    TRANSPOSED (the rows of x of one column contiguous: the dot kernel's operand slice is one block and an outlier's
    x values one vector); the columns in tiles of NCH chunks, each segment-major, [t, i // KSEG, j, i % KSEG] =
    x[b, perm[32 (t NCH + j) + i]] (zero past IN and for rows b >= M), so that a segment of KSEG codes of the
    tile's chunks is one contiguous slice (column j KSEG + i % KSEG of it); ORDERED: code i of a chunk is code
    order[i] (order_ptr) instead: x in the pair order of dot_pairs. Also zeroes the N_ZERO int32 words at zero_ptr
    (the dot kernel's split-K sums). PDL: let the dependent dot kernel launch at once."""
    if PDL:
        gdc_launch_dependents()
    zero_share(zero_ptr, N_ZERO, tl.program_id(1) * tl.num_programs(0) + tl.program_id(0),
                tl.num_programs(0) * tl.num_programs(1))
    k = tl.program_id(0) * CB + tl.arange(0, CB)  # column of xk
    r = k % (32 * NCH)  # place in its tile
    i = (r // (NCH * KSEG)) * KSEG + r % KSEG
    if ORDERED:
        i = tl.load(order_ptr + i)
    c = ((k // (32 * NCH)) * NCH + (r % (NCH * KSEG)) // KSEG) * 32 + i  # permuted column
    cm = (c < IN) & (k < N_COLS)
    b = tl.program_id(1) * RB + tl.arange(0, RB)
    p = tl.load(perm_ptr + c, mask=cm, other=0).to(tl.int32) & 0xFFFF
    v = tl.load(x_ptr + b[None, :] * stride_xb + p[:, None], mask=cm[:, None] & (b < M)[None, :], other=0.0)
    tl.store(xk_ptr + k[:, None] * ROWS + b[None, :], v.to(xk_ptr.dtype.element_ty),
             mask=(k < N_COLS)[:, None] & (b < ROWS)[None, :])


@triton.jit
def _gather_x_tiles_kernel(x_ptr, stride_xb, xt_ptr, xs_ptr, perm_ptr, zero_ptr, M, IN, N_TILES, N_ZERO,
                           NCH: tl.constexpr, SCALE_WB: tl.constexpr, SEG: tl.constexpr, PDL: tl.constexpr):
    """One program per (row b of x, tile t of NCH chunks): x in the tile order of the gemv / dot kernels,
    xt[b, t, i, j] = x[b, perm[32 (t NCH + j) + i]] in xt's dtype (code-major inside the tile, so that code i of
    the tile's chunks is contiguous; zero past IN and for rows b >= M), times 2**-e(i) when SCALE_WB > 0 (the
    in-place decode of SCALE_WB-bit codes, `chunk_code_scaled`); with SEG > 0 also xs[b, t, g, j] = the sum of
    (unscaled) x over codes g SEG .. g SEG + SEG - 1 of chunk t NCH + j.
    Also zeroes the N_ZERO int32 words at zero_ptr (split K's sums and counters, `_gemv_seg_kernel`, `_dot_kernel`).
    PDL: let the dependent gemv kernel launch at once (it waits for this grid before reading xt / xs)."""
    if PDL:
        gdc_launch_dependents()
    b = tl.program_id(0)
    t = tl.program_id(1)
    zero_share(zero_ptr, N_ZERO, b * N_TILES + t, tl.num_programs(0) * N_TILES)
    i = tl.arange(0, 32)
    j = tl.arange(0, NCH)
    c = (t * NCH + j[None, :]) * 32 + i[:, None]  # [32, NCH] permuted column
    valid = (c < IN) & (c * 0 + b < M)
    p = tl.load(perm_ptr + c, mask=valid, other=0).to(tl.int32) & 0xFFFF
    v = tl.load(x_ptr + b * stride_xb + p, mask=valid, other=0.0).to(tl.float32)
    base = b * N_TILES + t
    xv = v
    if SCALE_WB > 0:
        xv = v * ((127 - code_shift(i, SCALE_WB)) << 23).to(tl.float32, bitcast=True)[:, None]  # exactly 2**-e(i)
    tl.store(xt_ptr + base * (32 * NCH) + i[:, None] * NCH + j[None, :], xv.to(xt_ptr.dtype.element_ty))
    if SEG > 0:
        NSEG: tl.constexpr = 32 // SEG
        seg = tl.sum(tl.reshape(v, (NSEG, SEG, NCH)), axis=1)
        tl.store(xs_ptr + base * (NSEG * NCH) + tl.arange(0, NSEG)[:, None] * NCH + j[None, :], seg)


def gather_x_tiles(x, perm, nch: int, rows: int, *, dtype=None, scale_wbits: int = 0, segment: int = 0,
                   pdl: bool = False, zero=None):
    """x [M, in] -> (xt, xs), one kernel (`_gather_x_tiles_kernel`). xt [rows, n_tiles * 32 * nch] in `dtype`
    (default fp32; rows >= M, rows past M are zero): tile t holds the permuted columns of chunks t * nch .. t * nch +
    nch - 1, code-major: [t, i, j] = x[b, perm[32 (t nch + j) + i]] (zero past `in`), times 2**-e(i) for
    `scale_wbits`-bit codes (`code_shift`; gemv_seg). xs (with `segment`, else None) fp32 [rows, n_tiles * (32 /
    segment) * nch]: the sums of x over each segment of `segment` codes of every chunk. gemv_xc takes xt in fp32,
    gemv_seg scaled with the sums (the dot kernel's order: `gather_x_cols`).
    Reference: `tiled_x_reference`. `zero`: an int32 tensor the same kernel fills with zeros (the split-K sums and
    counters of gemv_seg)."""
    M, n_in = x.shape
    n_tiles = triton.cdiv(-(-n_in // 32), nch)
    xt = torch.empty(rows, n_tiles * 32 * nch, dtype=dtype or torch.float32, device=x.device)
    xs = torch.empty(rows, n_tiles * (32 // segment) * nch, dtype=torch.float32, device=x.device) if segment else None
    _gather_x_tiles_kernel[(rows, n_tiles)](
        x, x.stride(0), xt, xt if xs is None else xs, perm, zero if zero is not None else perm, M, n_in, n_tiles,
        0 if zero is None else zero.numel(), NCH=nch, SCALE_WB=scale_wbits, SEG=segment, PDL=pdl, num_warps=4)
    return xt, xs


def gather_x_cols(x, perm, nch: int, kseg: int, rows: int, *, out=None, zero=None, pdl: bool = False, order=None):
    """x [M, in] -> xk [n_tiles * 32 * nch, rows] in x's dtype, one kernel (`_gather_x_cols_kernel`): the dot
    kernel's x, transposed, tiles of nch chunks segment-major (rows past M zero). Reference: `tiled_x_reference`
    with `kseg`, transposed. `zero`: an int32 tensor the same kernel fills with zeros; `out`: xk given; `order`
    (int32 [32]): code i of each chunk is code order[i] (dot_pairs' pair order)."""
    M, n_in = x.shape
    n_tiles = triton.cdiv(-(-n_in // 32), nch)
    xk = out if out is not None else torch.empty(n_tiles * 32 * nch, rows, dtype=x.dtype, device=x.device)
    rb = min(16, triton.next_power_of_2(rows))
    cb = 1024 // rb  # (a [cb, rb] block per program)
    _gather_x_cols_kernel[(triton.cdiv(xk.shape[0], cb), triton.cdiv(rows, rb))](
        x, x.stride(0), xk, perm, zero if zero is not None else perm, order if order is not None else perm, M, n_in,
        rows, xk.shape[0], 0 if zero is None else zero.numel(), NCH=nch, KSEG=kseg, CB=cb, RB=rb,
        ORDERED=order is not None, PDL=pdl, num_warps=4)
    return xk


def tiled_column_order(perm, in_features: int, nch: int, kseg: int = 0):
    """(int64 [n_tiles * 32 * nch] original input column of each entry of `gather_x_tiles`'s rows, bool mask of
    the entries that hold one (the rest are zero padding)); `kseg`: the segment-major order."""
    n_chunks = -(-in_features // 32)
    total = -(-n_chunks // nch) * 32 * nch
    k = torch.arange(total, device=perm.device)
    r = k % (32 * nch)
    if kseg:  # r = (i // kseg) nch kseg + j kseg + i % kseg
        j, i = (r % (nch * kseg)) // kseg, (r // (nch * kseg)) * kseg + r % kseg
    else:  # r = i nch + j
        j, i = r % nch, r // nch
    c = ((k // (32 * nch)) * nch + j) * 32 + i
    valid = c < in_features
    order = torch.zeros(total, dtype=torch.int64, device=perm.device)
    order[valid] = perm.to(torch.int64)[c[valid]] & 0xFFFF
    return order, valid


def tiled_x_reference(x, perm, nch: int, rows: int, *, scale_wbits: int = 0, segment: int = 0, kseg: int = 0):
    """Plain-torch reference of `gather_x_tiles` in fp32 (the segment sums equal up to summation order; scaling
    and sums only in the code-major order; with `kseg` xt is [rows, columns] here, the kernel's transposed)."""
    M, n_in = x.shape
    order, valid = tiled_column_order(perm, n_in, nch, kseg)
    xp = torch.zeros(rows, order.numel(), dtype=torch.float32, device=x.device)
    xp[:M] = torch.where(valid, x.float().index_select(-1, order), 0.0)
    xt = xp
    if scale_wbits:
        o = ((torch.arange(order.numel(), device=x.device) % (32 * nch)) // nch * scale_wbits) % 32  # code i's bit
        e = torch.where(o + scale_wbits > 32, 0, torch.where(o + scale_wbits <= 23, o, o - 16))
        xt = torch.ldexp(xp, -e)  # exact powers of two
    xs = None
    if segment:
        xs = xp.view(rows, -1, 32 // segment, segment, nch).sum(3).reshape(rows, -1)
    return xt, xs


def gather_x_chunked(x, perm):
    """x [M, in] -> [M, ceil(in / 32) * 32] in the chunk-major permuted order of `dequantize_chunked`'s columns
    (column i * n_chunks + j = x[:, perm[32 j + i]], zero past `in`); one kernel. Reference: x padded with zeros,
    indexed by `chunked_column_order`."""
    M, n_in = x.shape
    n_chunks = -(-n_in // 32)
    xc = torch.empty(M, n_chunks * 32, dtype=x.dtype, device=x.device)
    _gather_x_kernel[(M, triton.cdiv(n_chunks * 32, 1024))](x, x.stride(0), xc, perm, n_in, n_chunks, BLOCK=1024)
    return xc


def chunked_column_order(perm, in_features: int):
    """int64 [ceil(in / 32) * 32]: the original input column of each column of `dequantize_chunked`'s weight
    (0 for the zero padding columns). perm: the stored int16 permutation. The plain-torch reference of
    `gather_x_chunked`'s order."""
    n_chunks = -(-in_features // 32)
    order = torch.zeros(n_chunks * 32, dtype=torch.int64, device=perm.device)
    order[:in_features] = perm.to(torch.int64) & 0xFFFF
    return order.view(n_chunks, 32).t().reshape(-1)
