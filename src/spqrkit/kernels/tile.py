"""Shared `@triton.jit` helpers for the kernels' tiles: a tile's words and statistic windows, the orientation of a
[chunks, rows] / [rows, chunks] tile, a program's share under split K and the stores that end it (fp32 partial sums
added atomically, the row block's last program writing y), and the PDL intrinsics (programmatic dependent launch)."""
from __future__ import annotations

import triton
import triton.language as tl

from .decode import chunk_words, stat_windows

try:  # grid dependency control (programmatic dependent launch), Triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None


@triton.jit
def gemv_store(acc0, acc1, acc2, acc3, o0, o1, o2, o3, y_ptr, stride_yb, bias_ptr, rows, rmask, M,
                HAS_BIAS: tl.constexpr, BB: tl.constexpr):
    """y[b, rows] = the sums of the dense accumulator [BR, NCH] and of the outlier one [BR, KO] (+ bias)."""
    bias = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, (tl.sum(acc0, axis=1) + tl.sum(o0, axis=1) + bias).to(y_ptr.dtype.element_ty),
             mask=rmask)
    if BB > 1:
        tl.store(y_ptr + stride_yb + rows, (tl.sum(acc1, axis=1) + tl.sum(o1, axis=1) + bias)
                 .to(y_ptr.dtype.element_ty), mask=rmask & (rows * 0 + 1 < M))
    if BB > 2:
        tl.store(y_ptr + 2 * stride_yb + rows, (tl.sum(acc2, axis=1) + tl.sum(o2, axis=1) + bias)
                 .to(y_ptr.dtype.element_ty), mask=rmask & (rows * 0 + 2 < M))
        tl.store(y_ptr + 3 * stride_yb + rows, (tl.sum(acc3, axis=1) + tl.sum(o3, axis=1) + bias)
                 .to(y_ptr.dtype.element_ty), mask=rmask & (rows * 0 + 3 < M))


@triton.jit
def zero_share(zero_ptr, N_ZERO, pid, n_programs):
    """Program pid of n_programs zeroes its share of the N_ZERO int32 words at zero_ptr."""
    ZBLOCK: tl.constexpr = 1024
    for z0 in range(pid * ZBLOCK, N_ZERO, n_programs * ZBLOCK):
        zo = z0 + tl.arange(0, ZBLOCK)
        tl.store(zero_ptr + zo, tl.zeros([ZBLOCK], dtype=tl.int32), mask=zo < N_ZERO)


@triton.jit
def chunk_vec(c, RT: tl.constexpr):
    """A per-chunk vector [NCH] as a column of the gemv_seg tile: [1, NCH], or [NCH, 1] when RT (the tile is
    [NCH, BR], rows in thread)."""
    if RT:
        return c[:, None]
    else:
        return c[None, :]


@triton.jit
def row_vec(r, RT: tl.constexpr):
    """A per-row vector [BR] as a row of the gemv_seg tile: [BR, 1], or [1, BR] when RT."""
    if RT:
        return r[None, :]
    else:
        return r[:, None]


@triton.jit
def tile_zeros(NCH: tl.constexpr, BR: tl.constexpr, RT: tl.constexpr):
    """fp32 zeros in the shape of a gemv tile: [NCH, BR] when RT, else [BR, NCH]."""
    if RT:
        return tl.zeros([NCH, BR], dtype=tl.float32)
    else:
        return tl.zeros([BR, NCH], dtype=tl.float32)


@triton.jit
def split_share(CPS, N_CHUNKS, first, end, SPLIT: tl.constexpr):
    """(first chunk, end chunk, first, end) of this program's share of a row block (split K, program_id 1: chunks
    [s CPS, s CPS + CPS) and the s-th share of the outlier work [first, end)); without SPLIT all of both."""
    c_begin = 0
    c_end = N_CHUNKS
    if SPLIT:
        sp = tl.program_id(1)
        c_begin = sp * CPS
        c_end = tl.minimum(c_begin + CPS, N_CHUNKS)
        share = tl.cdiv(end - first, tl.num_programs(1))
        first = first + sp * share
        end = tl.minimum(first + share, end)
    return c_begin, c_end, first, end


@triton.jit
def tile_words(t, jj, wp, RM, s_ptr, z_ptr, R, N_CHUNKS, N_SWORDS, N_ZWORDS, WB: tl.constexpr, GROUP: tl.constexpr,
                NSEG: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, RC: tl.constexpr = False):
    """One tile of a [chunks, rows] loop (dot, dot_pairs, gemv_pairs; RC: a [rows, chunks] loop, gemv_pairs under
    Triton >= 3.7): its chunks ch = t + jj, as a column C (RC: a row), the mask m2 of (row, chunk) that exist, the WB
    words of each chunk (wp: word 0 of chunk jj of each row) and the statistic windows (`stat_windows`)."""
    ch = t + jj
    if RC:
        C = ch[None, :]
    else:
        C = ch[:, None]
    m2 = RM & (C < N_CHUNKS)
    w0, w1, w2, w3, w4, w5, w6, w7 = chunk_words(wp + t * WB, m2, WB)
    swin, zwin = stat_windows(s_ptr, z_ptr, R, C, m2, N_SWORDS, N_ZWORDS, GROUP, NSEG, SB, ZB)
    return ch, C, m2, w0, w1, w2, w3, w4, w5, w6, w7, swin, zwin


@triton.jit
def split_add(acc, o, ws_ptr, rows, rmask, OUT, B: tl.constexpr, M):
    """ws[B, rows] += this program's partial sums of row B of x (split K)."""
    tl.atomic_add(ws_ptr + B * OUT + rows, tl.sum(acc, axis=1) + tl.sum(o, axis=1), mask=rmask & (rows * 0 + B < M),
                  sem="relaxed")


@triton.jit
def row_block(OUT, BR: tl.constexpr):
    """(row block = program_id(0), its first row, its BR rows, which of them exist) of a gemv program."""
    rb = tl.program_id(0)
    rows = rb * BR + tl.arange(0, BR)
    return rb, rb * BR, rows, rows < OUT


@triton.jit
def split_last_store(ws_ptr, cnt_ptr, rb, rows, rmask, OUT, y_ptr, stride_yb, bias_ptr, M, HAS_BIAS: tl.constexpr,
                      BB: tl.constexpr):
    """Split K's end, after a program has added its partial sums (`split_add`): it counts itself in cnt[rb], and
    the row block's last program writes y[b, rows] = ws[b, rows] (+ bias) for the BB rows b of x."""
    tl.debug_barrier()  # every thread's partial sums are in before the block is counted
    if tl.atomic_add(cnt_ptr + rb, 1, sem="acq_rel") == tl.num_programs(1) - 1:  # the row block's last program
        zero = tl.zeros([rows.shape[0], 1], dtype=tl.float32)
        B4: tl.constexpr = min(4, BB)
        s1 = zero  # (ws holds BB rows of x: no load past them)
        s2 = zero
        s3 = zero
        if BB > 1:
            s1 = split_sum(ws_ptr, rows, rmask, OUT, 1)
        if BB > 2:
            s2 = split_sum(ws_ptr, rows, rmask, OUT, 2)
            s3 = split_sum(ws_ptr, rows, rmask, OUT, 3)
        gemv_store(split_sum(ws_ptr, rows, rmask, OUT, 0), s1, s2, s3,
                    zero, zero, zero, zero, y_ptr, stride_yb, bias_ptr, rows, rmask, M, HAS_BIAS, B4)
        if BB > 4:  # rows 4.. of x (M > 4 whenever BB = 8)
            gemv_store(split_sum(ws_ptr, rows, rmask, OUT, 4), split_sum(ws_ptr, rows, rmask, OUT, 5),
                        split_sum(ws_ptr, rows, rmask, OUT, 6), split_sum(ws_ptr, rows, rmask, OUT, 7),
                        zero, zero, zero, zero, y_ptr + 4 * stride_yb, stride_yb, bias_ptr, rows, rmask, M - 4,
                        HAS_BIAS, 4)


@triton.jit
def split_sum(ws_ptr, rows, rmask, OUT, B: tl.constexpr):
    """[BR, 1]: ws[B, rows] as summed by every program of the row block (read from L2: written by atomics)."""
    return tl.load(ws_ptr + B * OUT + rows, mask=rmask, other=0.0, cache_modifier=".cg")[:, None]


@triton.jit
def dot_tile(OUT, N_CHUNKS, BETA2, CPS, BN: tl.constexpr, BM: tl.constexpr):
    """The dense dot kernels' program: (rows [BN], rows of x bb [BM], the rows' beta2 block, rows as a row R and its
    mask RM of a [chunks, rows] tile, first and end chunk of its share (program_id 1; split K))."""
    rows0 = tl.program_id(0) * BN
    rows = rows0 + tl.arange(0, BN)
    bb = tl.program_id(2) * BM + tl.arange(0, BM)
    c_begin = tl.program_id(1) * CPS
    c_end = tl.minimum(c_begin + CPS, N_CHUNKS)
    return rows, bb, rows0 // BETA2, rows[None, :], (rows < OUT)[None, :], c_begin, c_end


@triton.jit
def dot_store(acc, ws_ptr, rows, bb, M, OUT, SPLIT: tl.constexpr):
    """ws[b, rows] (+)= acc [BN, BM] transposed (SPLIT: fp32 atomics; the x kernel zeroed ws)."""
    out = tl.trans(acc)  # [BM, BN]
    yp = ws_ptr + bb[:, None] * OUT + rows[None, :]
    wm = (bb < M)[:, None] & (rows < OUT)[None, :]
    if SPLIT:
        tl.atomic_add(yp, out, mask=wm, sem="relaxed")
    else:
        tl.store(yp, out, mask=wm)
