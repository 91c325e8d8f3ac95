"""The CUDA-core decode kernels for a few rows of x: "gemv", "gemv_xc" and "gemv_seg".

One program owns BLOCK_R output rows and walks the input in tiles of NCH 32-code chunks: it loads each chunk's
`wbits` words once, decodes code i of every chunk with constant shifts, multiplies by the group's scale and zero,
and accumulates x * w on CUDA cores, one register tile per row of x.
- "gemv": x gathered through the permutation inside the loop (no pre-kernel; a baseline, forced only);
- "gemv_xc": one small kernel first gathers x (fp32) into tiles of NCH chunks, code-major (`gather_x_tiles`), so the
  loop reads x contiguously, unmasked, at compile-time offsets;
- "gemv_seg": the x kernel also scales x by 2**-e(i) for code position i, so each code is decoded IN PLACE (mask
  and or into the mantissa of 2**23, one subtraction: no shift), the products q x are summed per segment (one group,
  or a chunk) and s * sum - s z * sum(x) is added once per segment with the segment sums of x. Its tile is [chunks,
  rows] or [rows, chunks] (`plan.chunk_major_tile`: a thread holds one chunk of several rows, so one x load serves
  them all), the statistic codes of a chunk's groups come from one window of words, long rows are split across
  programs (split K), and on Hopper it is launched as a programmatic dependent of the x kernel (PDL).
Outliers (CSR, rows sorted) replace base weights: the dense base weights are summed first, then for the outliers of
the program's rows (value - base) * x is added, elementwise into a [rows, KO] register tile summed once at the end.
docs/kernels.md has the measurements behind the tiles and options.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format.packed_layer import PackedLayer
from .decode import (
    chunk_code,
    chunk_code_scaled,
    chunk_words,
    code_to_float,
    group_stats,
    outlier_add,
    outlier_range,
    outlier_terms,
    seg_group,
    seg_stat,
    stat_windows,
)
from .gather import gather_x_tiles
from .plan import (
    FLOAT_2_23_BITS,
    chunk_major_tile,
    has_pdl,
    int32_pairs,
    layout_sizes,
    segment_codes,
    split_plan,
    stat_pointers,
)
from .reach import rows_per_launch
from .tile import (
    chunk_vec,
    gdc_wait,
    gemv_store,
    row_block,
    row_vec,
    split_add,
    split_last_store,
    split_share,
    tile_zeros,
)


@triton.jit
def _gemv_outliers(
    o0, o1, o2, o3, o4, o5, o6, o7, k0, k_hi, lo, hi, rows0, x_ptr, stride_xb, M,
    codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    cols_ptr, vals_ptr, perm_ptr, bases_ptr,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
    BB: tl.constexpr, KO: tl.constexpr, XC: tl.constexpr, XSCALED: tl.constexpr, HAS_BASE: tl.constexpr,
):
    """The gemv kernels' outlier step: KO outliers from k0, decoded once (`outlier_terms`), added to the [BR, KO]
    accumulators o_b of the BB (<= 8) rows b of x (gemv / gemv_xc pass four)."""
    hit, dv, p, km = outlier_terms(
        k0, k_hi, lo, hi, rows0, x_ptr, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS,
        N_ZWORDS, BETA2, cols_ptr, vals_ptr, perm_ptr, bases_ptr, WB, GROUP, SB, ZB, KO, XC, XSCALED, HAS_BASE)
    o0 = outlier_add(o0, hit, dv, x_ptr, p, km)
    # (row b of x exists: a tensor comparison, since Triton 3.9's interpreter rejects `mask & (M > b)`)
    if BB > 1:
        o1 = outlier_add(o1, hit, dv, x_ptr + stride_xb, p, km & (p * 0 + 1 < M))
    if BB > 2:
        o2 = outlier_add(o2, hit, dv, x_ptr + 2 * stride_xb, p, km & (p * 0 + 2 < M))
        o3 = outlier_add(o3, hit, dv, x_ptr + 3 * stride_xb, p, km & (p * 0 + 3 < M))
    if BB > 4:
        o4 = outlier_add(o4, hit, dv, x_ptr + 4 * stride_xb, p, km & (p * 0 + 4 < M))
        o5 = outlier_add(o5, hit, dv, x_ptr + 5 * stride_xb, p, km & (p * 0 + 5 < M))
        o6 = outlier_add(o6, hit, dv, x_ptr + 6 * stride_xb, p, km & (p * 0 + 6 < M))
        o7 = outlier_add(o7, hit, dv, x_ptr + 7 * stride_xb, p, km & (p * 0 + 7 < M))
    return o0, o1, o2, o3, o4, o5, o6, o7


@triton.jit
def _gemv_seg_kernel(
    xt_ptr, xs_ptr, stride_xtb, stride_xsb, y_ptr, stride_yb, ws_ptr, cnt_ptr,
    codes_ptr, s_ptr, sst_ptr, z_ptr, zst_ptr, sst32_ptr, zst32_ptr, rowptr_ptr, cols_ptr, vals_ptr, perm_ptr,
    bases_ptr, bias_ptr,
    M, OUT, IN, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, CPS, MAGIC,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_BASE: tl.constexpr,
    BB: tl.constexpr, BR: tl.constexpr, NCH: tl.constexpr, KO: tl.constexpr, SEG: tl.constexpr,
    SPLIT: tl.constexpr, SHARED2: tl.constexpr, RT: tl.constexpr, PREFETCH: tl.constexpr, PDL: tl.constexpr,
):
    """The "gemv_seg" decode kernel: `_gemv_kernel`'s tiles, x from `_gather_x_tiles_kernel` scaled, with sums.
    Per segment of SEG codes of a chunk (one group: SEG = beta1 < 32, else the whole chunk), it sums
    (q 2**e) (x 2**-e) = q x (a mask, an or, one FADD and one FFMA per weight: no shift, no scale), then adds
    s * sum - s z * sum(x) once. The statistic codes of a chunk's groups come from one window of words
    (`stat_window`), their second-level pairs as one int32 each (sst32_ptr / zst32_ptr: int32 views of sst_ptr /
    zst_ptr), per row block when SHARED2 (BR divides beta2).
    SPLIT (split K): program (i, s) takes chunks [s CPS, (s + 1) CPS) of row block i and the s-th share of its
    outliers, adds its fp32 partial sums to ws [BB, OUT] (zeroed by the x kernel) and counts itself in cnt[i]; the
    last of the row block's programs writes y = ws (+ bias). Measured worth it only for long rows (SPLIT_CHUNKS).
    BB <= 8 rows of x: one [tile] accumulator each (acc0..acc7, p0..p7, o0..o7), the weight decoded once for all.
    RT (rows in thread): the tile is [NCH, BR] instead of [BR, NCH], which puts a thread's elements in several rows
    of one chunk (Triton's layout), so that each x value it loads serves all of them.
    PREFETCH: the next tile's code words are loaded before this one is decoded.
    PDL (launched as a programmatic dependent of the x kernel): everything up to the first tile's words runs while
    the x kernel finishes; `gdc_wait` orders the reads of xt / xs (and ws) after it."""
    rb, rows0, rows, rmask = row_block(OUT, BR)
    jj = tl.arange(0, NCH)
    n_words = N_CHUNKS * WB
    NSEG: tl.constexpr = 32 // SEG
    blk = rows0 // BETA2
    acc0 = tile_zeros(NCH, BR, RT)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    acc4 = acc0
    acc5 = acc0
    acc6 = acc0
    acc7 = acc0
    k0, k_hi, lo, hi = outlier_range(rowptr_ptr, rows0, OUT, BR)
    c_begin, c_end, k0, k_hi = split_share(CPS, N_CHUNKS, k0, k_hi, SPLIT)  # (and its share of the outliers)
    o0 = tl.zeros([BR, KO], dtype=tl.float32)  # outlier terms, summed over KO at the end
    o1 = o0
    o2 = o0
    o3 = o0
    o4 = o0
    o5 = o0
    o6 = o0
    o7 = o0
    R = row_vec(rows, RT)
    RM = row_vec(rmask, RT)
    magic = MAGIC.to(tl.uint32, bitcast=True)  # 0x4B000000, a runtime value (`code_to_float`)
    wp = codes_ptr + R * n_words + chunk_vec(jj, RT) * WB
    if PREFETCH:
        n0, n1, n2, n3, n4, n5, n6, n7 = chunk_words(wp + c_begin * WB, RM & chunk_vec(c_begin + jj < c_end, RT), WB)
    if PDL:
        gdc_wait()
    for t in range(c_begin, c_end, NCH):
        ch = t + jj
        C = chunk_vec(ch, RT)
        m2 = RM & (C < N_CHUNKS)
        if PREFETCH:  # the next tile's words are in flight while this one is decoded
            w0, w1, w2, w3, w4, w5, w6, w7 = n0, n1, n2, n3, n4, n5, n6, n7
            n0, n1, n2, n3, n4, n5, n6, n7 = chunk_words(wp + (t + NCH) * WB, RM & (C + NCH < c_end), WB)
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = chunk_words(wp + t * WB, m2, WB)
        o0, o1, o2, o3, o4, o5, o6, o7 = _gemv_outliers(
            o0, o1, o2, o3, o4, o5, o6, o7, k0, k_hi, lo, hi, rows0, xt_ptr, stride_xtb, M,
            codes_ptr, n_words, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
            cols_ptr, vals_ptr, perm_ptr, bases_ptr, WB, GROUP, SB, ZB, BB, KO, NCH, True, HAS_BASE,
        )
        k0 += KO
        xt = xt_ptr + t * 32 + jj  # this tile's x: code i of its chunks at xt + i * NCH (fp32, zero padded)
        xs = xs_ptr + t * NSEG + jj  # and its segment sums: segment g at xs + g * NCH
        swin, zwin = stat_windows(s_ptr, z_ptr, R, C, m2, N_SWORDS, N_ZWORDS, GROUP, NSEG, SB, ZB)
        for g in tl.static_range(NSEG):
            grp, gm1 = seg_group(ch, g, SEG, GROUP, N_CHUNKS, N_GROUPS)
            G = chunk_vec(grp, RT)
            GM1 = chunk_vec(gm1, RT)
            gm = RM & GM1
            s = seg_stat(swin, g, s_ptr, sst32_ptr, R, blk, G, gm, GM1, N_GROUPS, BETA2, SB, SHARED2)
            z = seg_stat(zwin, g, z_ptr, zst32_ptr, R, blk, G, gm, GM1, N_GROUPS, BETA2, ZB, SHARED2)
            sz = -s * z
            p0 = tl.zeros_like(acc0)
            p1 = p0
            p2 = p0
            p3 = p0
            p4 = p0
            p5 = p0
            p6 = p0
            p7 = p0
            for ii in tl.static_range(SEG):
                q = chunk_code_scaled(g * SEG + ii, WB, w0, w1, w2, w3, w4, w5, w6, w7, magic)
                xo = xt + (g * SEG + ii) * NCH
                p0 += q * chunk_vec(tl.load(xo), RT)
                if BB > 1:
                    p1 += q * chunk_vec(tl.load(xo + stride_xtb), RT)
                if BB > 2:
                    p2 += q * chunk_vec(tl.load(xo + 2 * stride_xtb), RT)
                    p3 += q * chunk_vec(tl.load(xo + 3 * stride_xtb), RT)
                if BB > 4:
                    p4 += q * chunk_vec(tl.load(xo + 4 * stride_xtb), RT)
                    p5 += q * chunk_vec(tl.load(xo + 5 * stride_xtb), RT)
                    p6 += q * chunk_vec(tl.load(xo + 6 * stride_xtb), RT)
                    p7 += q * chunk_vec(tl.load(xo + 7 * stride_xtb), RT)
            acc0 += s * p0 + sz * chunk_vec(tl.load(xs + g * NCH), RT)
            if BB > 1:
                acc1 += s * p1 + sz * chunk_vec(tl.load(xs + stride_xsb + g * NCH), RT)
            if BB > 2:
                acc2 += s * p2 + sz * chunk_vec(tl.load(xs + 2 * stride_xsb + g * NCH), RT)
                acc3 += s * p3 + sz * chunk_vec(tl.load(xs + 3 * stride_xsb + g * NCH), RT)
            if BB > 4:
                acc4 += s * p4 + sz * chunk_vec(tl.load(xs + 4 * stride_xsb + g * NCH), RT)
                acc5 += s * p5 + sz * chunk_vec(tl.load(xs + 5 * stride_xsb + g * NCH), RT)
                acc6 += s * p6 + sz * chunk_vec(tl.load(xs + 6 * stride_xsb + g * NCH), RT)
                acc7 += s * p7 + sz * chunk_vec(tl.load(xs + 7 * stride_xsb + g * NCH), RT)
    while k0 < k_hi:
        o0, o1, o2, o3, o4, o5, o6, o7 = _gemv_outliers(
            o0, o1, o2, o3, o4, o5, o6, o7, k0, k_hi, lo, hi, rows0, xt_ptr, stride_xtb, M,
            codes_ptr, n_words, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
            cols_ptr, vals_ptr, perm_ptr, bases_ptr, WB, GROUP, SB, ZB, BB, KO, NCH, True, HAS_BASE,
        )
        k0 += KO
    if RT:  # (one layout conversion, after the loop)
        acc0 = tl.sum(acc0, axis=0)[:, None]
        acc1 = tl.sum(acc1, axis=0)[:, None]
        acc2 = tl.sum(acc2, axis=0)[:, None]
        acc3 = tl.sum(acc3, axis=0)[:, None]
        acc4 = tl.sum(acc4, axis=0)[:, None]
        acc5 = tl.sum(acc5, axis=0)[:, None]
        acc6 = tl.sum(acc6, axis=0)[:, None]
        acc7 = tl.sum(acc7, axis=0)[:, None]
    if SPLIT:
        split_add(acc0, o0, ws_ptr, rows, rmask, OUT, 0, M)
        if BB > 1:
            split_add(acc1, o1, ws_ptr, rows, rmask, OUT, 1, M)
        if BB > 2:
            split_add(acc2, o2, ws_ptr, rows, rmask, OUT, 2, M)
            split_add(acc3, o3, ws_ptr, rows, rmask, OUT, 3, M)
        if BB > 4:
            split_add(acc4, o4, ws_ptr, rows, rmask, OUT, 4, M)
            split_add(acc5, o5, ws_ptr, rows, rmask, OUT, 5, M)
            split_add(acc6, o6, ws_ptr, rows, rmask, OUT, 6, M)
            split_add(acc7, o7, ws_ptr, rows, rmask, OUT, 7, M)
        split_last_store(ws_ptr, cnt_ptr, rb, rows, rmask, OUT, y_ptr, stride_yb, bias_ptr, M, HAS_BIAS, BB)
    else:
        gemv_store(acc0, acc1, acc2, acc3, o0, o1, o2, o3, y_ptr, stride_yb, bias_ptr, rows, rmask, M, HAS_BIAS,
                    BB)
        if BB > 4:
            gemv_store(acc4, acc5, acc6, acc7, o4, o5, o6, o7, y_ptr + 4 * stride_yb, stride_yb, bias_ptr, rows,
                        rmask, M - 4, HAS_BIAS, 4)


@triton.jit
def _gemv_kernel(
    x_ptr, stride_xb, y_ptr, stride_yb,
    codes_ptr, s_ptr, sst_ptr, z_ptr, zst_ptr, rowptr_ptr, cols_ptr, vals_ptr, perm_ptr, bias_ptr,
    M, OUT, IN, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, HAS_BIAS: tl.constexpr,
    BB: tl.constexpr, BR: tl.constexpr, NCH: tl.constexpr, KO: tl.constexpr, XC: tl.constexpr,
):
    """XC = 0: x [M, IN] is gathered through the permutation for every code. XC = NCH: x is given as fp32 tiles
    (`_gather_x_tiles_kernel`, BB rows of stride stride_xb, unscaled): the x values of code i of the tile's NCH
    chunks are contiguous, at a compile-time offset, with no mask and no conversion."""
    rows0 = tl.program_id(0) * BR
    rows = rows0 + tl.arange(0, BR)
    rmask = rows < OUT
    jj = tl.arange(0, NCH)
    n_words = N_CHUNKS * WB
    # One [BR, NCH] accumulator per row of x (BB <= 4): every per-code tensor keeps the layout of the code tile, so
    # the unrolled loop needs no layout conversions (a [BB, BR, NCH] accumulator cost one through shared memory,
    # with a barrier, per code).
    acc0 = tl.zeros([BR, NCH], dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    # The outliers of these rows are one CSR range; KO of them are handled in every tile iteration (so that their
    # dependent gathers overlap the streaming of the codes), the rest after the loop.
    k0, k_hi, lo, hi = outlier_range(rowptr_ptr, rows0, OUT, BR)
    o0 = tl.zeros([BR, KO], dtype=tl.float32)  # outlier terms, summed over KO at the end
    o1 = o0
    o2 = o0
    o3 = o0
    for t in range(0, N_CHUNKS, NCH):
        ch = t + jj
        cm = ch < N_CHUNKS
        m2 = rmask[:, None] & cm[None, :]
        w0, w1, w2, w3, w4, w5, w6, w7 = chunk_words(
            codes_ptr + rows[:, None] * n_words + ch[None, :] * WB, m2, WB)
        o0, o1, o2, o3, _, _, _, _ = _gemv_outliers(
            o0, o1, o2, o3, o0, o0, o0, o0, k0, k_hi, lo, hi, rows0, x_ptr, stride_xb, M,
            codes_ptr, n_words, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
            cols_ptr, vals_ptr, perm_ptr, vals_ptr, WB, GROUP, SB, ZB, BB, KO, XC, False, False,
        )
        k0 += KO
        xt = x_ptr + t * 32 + jj  # (XC) this tile's x: code i of its chunks at xt + i * NCH
        for i in tl.static_range(32):
            # statistics: once per chunk (groups of >= 32 columns, or one per row), else where a group starts
            if i == 0 or (GROUP > 0 and GROUP < 32 and i % GROUP == 0):
                s, z = group_stats(i, ch, rows, m2, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS,
                                    BETA2, GROUP, SB, ZB)
                sz = s * z
            w = s * code_to_float(chunk_code(i, WB, w0, w1, w2, w3, w4, w5, w6, w7)) - sz  # [BR, NCH]
            if XC > 0:  # fp32, zero-padded, BB rows: no mask, no conversion
                acc0 += w * tl.load(xt + i * NCH)[None, :]
                if BB > 1:
                    acc1 += w * tl.load(xt + stride_xb + i * NCH)[None, :]
                if BB > 2:
                    acc2 += w * tl.load(xt + 2 * stride_xb + i * NCH)[None, :]
                    acc3 += w * tl.load(xt + 3 * stride_xb + i * NCH)[None, :]
            else:
                col = ch * 32 + i
                xm = cm & (col < IN)
                p = (tl.load(perm_ptr + col, mask=xm, other=0).to(tl.int32) & 0xFFFF)[None, :]
                xm2 = xm[None, :]
                acc0 += w * tl.load(x_ptr + p, mask=xm2, other=0.0).to(tl.float32)
                # (row b of x exists: a tensor comparison, since Triton 3.9's interpreter rejects `mask & (M > b)`)
                if BB > 1:
                    acc1 += w * tl.load(x_ptr + stride_xb + p, mask=xm2 & (p * 0 + 1 < M), other=0.0).to(tl.float32)
                if BB > 2:
                    acc2 += w * tl.load(x_ptr + 2 * stride_xb + p, mask=xm2 & (p * 0 + 2 < M),
                                        other=0.0).to(tl.float32)
                    acc3 += w * tl.load(x_ptr + 3 * stride_xb + p, mask=xm2 & (p * 0 + 3 < M),
                                        other=0.0).to(tl.float32)
    while k0 < k_hi:
        o0, o1, o2, o3, _, _, _, _ = _gemv_outliers(
            o0, o1, o2, o3, o0, o0, o0, o0, k0, k_hi, lo, hi, rows0, x_ptr, stride_xb, M,
            codes_ptr, n_words, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
            cols_ptr, vals_ptr, perm_ptr, vals_ptr, WB, GROUP, SB, ZB, BB, KO, XC, False, False,
        )
        k0 += KO
    gemv_store(acc0, acc1, acc2, acc3, o0, o1, o2, o3, y_ptr, stride_yb, bias_ptr, rows, rmask, M, HAS_BIAS, BB)


def gemv(x, p: PackedLayer, bias=None, *, block_rows=None, chunks=None, num_warps=None, num_stages=None,
         x_chunked=False, segments=False, prefetch=False, pdl=None, outliers_per_step=64, split=None,
         rows_in_thread=None):
    """y [M, out] = x [M, in] W^T (+ bias) for small M, on CUDA cores. `x_chunked`: first gather x (permuted, fp32)
    into tiles of the main kernel's chunks with one small kernel (`gather_x_tiles`), so that the main loop reads
    it contiguously, unmasked, at compile-time offsets. `segments` ("gemv_seg"): x also pre-scaled per code
    position, statistics applied per segment (`_gemv_seg_kernel`); with it, `prefetch` (next tile's words loaded
    ahead; off by default: slower) and `pdl` (the main kernel launched as a programmatic dependent of the x kernel;
    None = on where supported, `has_pdl`) are tuning options. `outliers_per_step` (KO, a power of two): outliers
    handled per tile; 32 * num_warps keeps every row of the outlier tile in one thread, so its row lookup needs no
    cross-warp reduction (benchmarks/sass_report.py counts the barriers).
    `split` (gemv_seg): programs per row block, each over its share of the tiles (split K, fp32 partial sums added
    atomically; so the summation order, not the result beyond fp32 rounding, varies from run to run); None: one
    per SPLIT_CHUNKS chunks of a row, 1 = no split. `rows_in_thread` (gemv_seg): the tile is [chunks, rows] (True)
    or [rows, chunks] (False); None: `chunk_major_tile()`, the orientation in which the installed Triton gives each
    thread one chunk of several rows, so that it loads each x value once for them. `p.bases`
    (gemv_seg): the outliers' base weights (`outlier_bases`), so that an outlier costs its column, value and base
    instead of decoding its code and statistics again."""
    codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm = p.flat_tensors()
    out_features, wbits, group, beta2, scale_bits, zero_bits = (p.out_features, p.wbits, p.group, p.beta2,
                                                               p.scale_bits, p.zero_bits)
    bases = p.bases
    M, n_in = x.shape
    max_rows = rows_per_launch("gemv_seg" if segments else "gemv")
    if M > max_rows:
        raise ValueError(f"this gemv kernel takes at most {max_rows} rows of x, got {M}")
    n_chunks, n_groups, n_sw, n_zw = layout_sizes(n_in, out_features, wbits, group, scale_bits, zero_bits)
    y = torch.empty(M, out_features, dtype=x.dtype, device=x.device)
    BB = max(1, triton.next_power_of_2(M))
    # Tiles (docs/kernels.md, gemv_seg's tiles): gemv_seg keeps rows in thread with 2 warps, wider chunk tiles for
    # large layers and 3+ rows of x; gemv / gemv_xc take 8 x 16 tiles with 4 warps at 3-4 rows of x (no spills).
    if segments:
        if BB <= 2:
            br, nch = (4, 64) if n_in * out_features >= 2 ** 27 or out_features >= 8192 else (4, 32)
        elif BB == 4:
            br, nch = (4, 64) if n_chunks >= 256 else (8, 32)
        else:  # 5-8 rows of x
            br, nch = 4, 64
        BR, NCH, num_warps = block_rows or br, chunks or nch, num_warps or 2
    else:
        BR = block_rows or (4 if BB <= 2 else 8)
        NCH = chunks or (32 if BB <= 2 else 16)
        num_warps = num_warps or (2 if BB <= 2 else 4)
    grid = (triton.cdiv(out_features, BR),)
    sp, ssp = stat_pointers(scale, scale_stats)
    zp, zsp = stat_pointers(zero, zero_stats)
    if segments:  # "gemv_seg"
        pdl = has_pdl(x.device) if pdl is None else pdl and has_pdl(x.device)
        split, cps, ws, cnt, zero = split_plan(n_chunks, NCH, split, BB * out_features, grid[0], x.device)
        xt, xs = gather_x_tiles(x, perm, NCH, BB, scale_wbits=wbits, segment=segment_codes(group), pdl=pdl, zero=zero)
        shared2 = beta2 > 0 and beta2 % BR == 0
        _gemv_seg_kernel[(grid[0], split)](
            xt, xs, xt.stride(0), xs.stride(0), y, y.stride(0), ws if ws is not None else xt,
            cnt if cnt is not None else perm,
            codes, sp, ssp, zp, zsp, int32_pairs(ssp, scale_bits), int32_pairs(zsp, zero_bits), row_ptr, cols, vals,
            perm, bases if bases is not None else vals, bias if bias is not None else x,
            M, out_features, n_in, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1), cps, FLOAT_2_23_BITS,
            WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, HAS_BIAS=bias is not None, HAS_BASE=bases is not None,
            BB=BB, BR=BR, NCH=NCH, KO=outliers_per_step, SEG=segment_codes(group), SPLIT=split > 1, SHARED2=shared2,
            RT=chunk_major_tile() if rows_in_thread is None else rows_in_thread, PREFETCH=prefetch, PDL=pdl,
            num_warps=num_warps, num_stages=num_stages or 1, **({"launch_pdl": True} if pdl else {}),
        )
        return y
    if x_chunked:
        x = gather_x_tiles(x, perm, NCH, BB)[0]
    _gemv_kernel[grid](
        x, x.stride(0), y, y.stride(0),
        codes, sp, ssp, zp, zsp, row_ptr, cols, vals, perm, bias if bias is not None else x,
        M, out_features, n_in, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1),
        WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, HAS_BIAS=bias is not None,
        BB=BB, BR=BR, NCH=NCH, KO=outliers_per_step, XC=NCH if x_chunked else 0, num_warps=num_warps,
        num_stages=num_stages or 3,
    )
    return y
