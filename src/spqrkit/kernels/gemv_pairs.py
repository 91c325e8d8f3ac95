"""The decode kernel "gemv_pairs": y = x W^T (+ b) for one or two rows of x (fp16 or bf16), in packed fp16 pairs.

Two weights share each instruction (`pair_schedule`): one LOP3 masks two codes out of a 32-bit window of the chunk's
words, one in each half's mantissa (bit e of the half) under a zero exponent field, which makes the pair the two
SUBNORMAL fp16 values q 2**(e - 24), exactly; one `fma.rn.f16x2` adds (q_a x''_a, q_b x''_b) to a pair accumulator,
x'' = x 2**(24 - e - k) written by the x kernel per code position. Per chunk and group the fp16 pair sums are
converted to fp32 once and combined with the group's statistics:
    y_r += s (2**k P - z X),
P = sum of q x 2**-k over the group (fp16 pairs), X = sum of x over the group (fp32, from the x kernel), k per chunk
chosen by the x kernel from the chunk's largest |x| so that every x'' fits fp16 and the pair sums stay far below
overflow (`X_SCALE_HEADROOM`); the same scaling brings bf16 x of any range into fp16's (y is then written in bf16).
Accuracy: x'' is x exactly but for values below 2**-14 of the chunk's largest (fp16 subnormals), and each pair sum
of at most 16 products is rounded to fp16 once per product inside a group; the group sums are added in fp32, so the
error stays of the order of the output's own fp16 rounding (tests/test_gemv_pairs.py bounds it).

Two kernels: `_gather_x_pairs_kernel` writes x'' in the pair order (`pair_order`) as fp16, the chunk scales 2**k,
the group sums X and x in the permuted order, and zeroes the split-K sums; `_gemv_pairs_kernel` then runs
gemv_seg's tiling (one program per BR output rows, a thread holding one chunk of BR rows so that each x pair it
loads serves all of them, split K on long rows, PDL after the x kernel where supported) with this arithmetic.
Outliers go one per element of the tile: element (j, r) adds (value - base) x of outlier j of row r's current step
(`_row_outliers`), so no [rows, outliers] mask is needed. Under Triton's interpreter (no inline PTX) the fp16-pair
instructions are emulated with the same roundings (`ASM` off); compiled, they are inline PTX. docs/kernels.md has
the measurements behind the defaults and what was tried.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..format.packed_layer import PackedLayer
from .decode import fp16_half, outlier_base_at, pick_word, seg_group
from .pair_decode import pair_stat, pair_window, put
from .pair_schedule import pair_exponents, pair_order, pair_plan
from .plan import (
    FLOAT_ONE_BITS,
    chunk_major_tile,
    has_pdl,
    int32_pairs,
    layout_sizes,
    segment_codes,
    split_plan,
    stat_pointers,
)
from .reach import PAIRS_MAX_ROWS
from .tile import (
    chunk_vec,
    gdc_launch_dependents,
    gdc_wait,
    gemv_store,
    row_block,
    row_vec,
    split_add,
    split_last_store,
    split_share,
    tile_words,
    tile_zeros,
    zero_share,
)

# Registers per thread (ptxas' cap): more programs per multiprocessor hide the loads' latency (docs/kernels.md).
MAX_REGISTERS = 64


# The x kernel's chunk scale 2**k: k = floor(log2 max |x|) + X_SCALE_HEADROOM - (the layout's smallest code bit e),
# so that every x'' = x 2**(24 - e - k) < 2**15 fits fp16 and each product q x 2**-k < 15 x 2**-9 (pair sums of
# 16 far below fp16's limit); clamped so that 2**k and 2**(24 - e - k) stay normal fp32 (only bf16 chunks with
# max |x| < 2**-110 or > 2**117 reach the clamps: the first lose their smallest values, the second overflow).
X_SCALE_HEADROOM = 10


X_SCALE_K_MIN = -100


X_SCALE_K_MAX = 127


@triton.jit
def _halves_bits(lo, hi):
    """int32 fp16 pairs (lo, hi) from two fp32 tensors (each rounded to fp16)."""
    lb = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hb = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return (hb << 16) | lb


@triton.jit
def _pair_mac(acc, q, x, ASM: tl.constexpr):
    """acc + q x on fp16 pairs held in int32: `fma.rn.f16x2` (one rounding per half). Without ASM (the interpreter)
    the same in fp32 per half, rounded to fp16 at the end (the product q x is exact in fp32, so only a tie can round
    differently)."""
    if ASM:
        return tl.inline_asm_elementwise("fma.rn.f16x2 $0, $2, $3, $1;", "=r,r,r,r", [acc, q, x], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:
        return _halves_bits(fp16_half(acc, 0) + fp16_half(q, 0) * fp16_half(x, 0),
                            fp16_half(acc, 1) + fp16_half(q, 1) * fp16_half(x, 1))


@triton.jit
def _pair_halves(v, ASM: tl.constexpr):
    """(fp32 low half, fp32 high half) of int32-held fp16 pairs."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }", "=r,=r,r",
            [v], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    else:
        return fp16_half(v, 0), fp16_half(v, 1)


@triton.jit
def _group_add(G: tl.constexpr, v, p0, p1, p2, p3):
    """Adds v to the fp32 sum of group G of the chunk (p0..p3)."""
    p0, p1, p2, p3, _, _ = put(G, pick_word(G, p0, p1, p2, p3, p3, p3, p3, p3) + v, p0, p1, p2, p3, p3, p3)
    return p0, p1, p2, p3


@triton.jit
def _type_sums(TYPES: tl.constexpr, a0, a1, a2, a3, a4, a5, like, ASM: tl.constexpr):
    """The fp32 sums (p0..p3, `like`'s shape) of the chunk's groups 0..3 from its pair accumulators a0..a5 of TYPES
    (each half converted once, `_pair_halves`)."""
    p0 = tl.full(like.shape, -0.0, dtype=tl.float32)  # (-0 + v = v: the first add folds away)
    p1 = p0
    p2 = p0
    p3 = p0
    for n in tl.static_range(len(TYPES)):
        hl, hh = _pair_halves(pick_word(n, a0, a1, a2, a3, a4, a5, a5, a5), ASM)
        p0, p1, p2, p3 = _group_add(TYPES[n][0], hl, p0, p1, p2, p3)
        p0, p1, p2, p3 = _group_add(TYPES[n][1], hh, p0, p1, p2, p3)
    return p0, p1, p2, p3


@triton.jit
def _row_outliers(acc, acc1, step, lo, hi, R, RM, jj, xo_ptr, XO_ROW, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr,
                  zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, NCH: tl.constexpr,
                  WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
                  HAS_BASE: tl.constexpr, RT: tl.constexpr, BB: tl.constexpr):
    """(acc, acc1) (the tile: [NCH, BR] when RT, else [BR, NCH]; one per row of x, acc1 only when BB == 2) + the
    terms (value - base) x of outliers lo[r] + step NCH + j (< hi[r]) of the tile's rows r, one per element (j, r):
    every outlier costs one slot of its own row, so a step covers NCH outliers of each row, with no row lookup and
    no cross-row mask ([rows, outliers] tiles cost BR times that); x is read at the outlier's permuted column (xo;
    row 1 of x XO_ROW further)."""
    col, dv, km = _outlier_terms(step, lo, hi, R, RM, jj, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr,
                                 N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, NCH, WB, GROUP,
                                 SB, ZB, HAS_BASE, RT)
    return _add_outlier_terms(acc, acc1, col, dv, km, xo_ptr, XO_ROW, BB)


@triton.jit
def _outlier_terms(step, lo, hi, R, RM, jj, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS,
                   N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, NCH: tl.constexpr, WB: tl.constexpr,
                   GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, HAS_BASE: tl.constexpr,
                   RT: tl.constexpr):
    """(permuted column, value - base, mask) of outliers lo[r] + step NCH + j (< hi[r]), one per tile element."""
    k = lo + step * NCH + chunk_vec(jj, RT)
    km = RM & (k < hi)
    col, v, base = outlier_base_at(k, km, R, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS,
                                       N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, WB, GROUP, SB, ZB,
                                       HAS_BASE)
    return col, v - base, km


@triton.jit
def _add_outlier_terms(acc, acc1, col, dv, km, xo_ptr, XO_ROW, BB: tl.constexpr):
    """(acc, acc1) + dv x at the outliers' columns (`_outlier_terms`; x of row 1 XO_ROW further, when BB == 2)."""
    acc += dv * tl.load(xo_ptr + col, mask=km, other=0.0)
    if BB == 2:
        acc1 += dv * tl.load(xo_ptr + XO_ROW + col, mask=km, other=0.0)
    return acc, acc1


@triton.jit
def _gather_x_pairs_kernel(x_ptr, stride_xb, xp_ptr, sc_ptr, xs_ptr, xo_ptr, perm_ptr, zero_ptr, IN, N_ZERO, N_PAD,
                           ORDER: tl.constexpr, SEG: tl.constexpr, NCH: tl.constexpr, CB: tl.constexpr,
                           PDL: tl.constexpr, EXPS: tl.constexpr, KOFF: tl.constexpr, KMIN: tl.constexpr,
                           KMAX: tl.constexpr):
    """One program per CB chunks, x in the main kernel's tiles of NCH chunks, pair-major inside a tile (pair p of
    the tile's chunks contiguous, so that the main kernel's loads of one pair are coalesced): for chunk
    c = t NCH + j, xp[((t 16 + p) NCH + j) 2 + h] = x''[perm[32 c + ORDER[2 p + h]]] in fp16 (x'' = x 2**(24 - e
    - k), e = EXPS[2 p + h] the code's bit in its half, zero past IN), sc[c] = 2**k (fp32) with k = floor(log2 max
    |x|) + KOFF over the chunk, clamped to [KMIN, KMAX] (`X_SCALE_HEADROOM`), xs[(t NSEG + g)
    NCH + j] = the sum of x (fp32, unscaled) over codes g SEG .. g SEG + SEG - 1 of the chunk, and xo[32 c + i] =
    x[perm[32 c + i]] (fp32: the outliers' x at their column, without a lookup of perm). Also zeroes the N_ZERO
    int32 words at zero_ptr (split K's sums and counters). Row b = program_id(1) of x goes to each output's b-th row
    of N_PAD chunks. PDL: let the main kernel launch at once (its loads of the weights before its `gdc_wait` are
    safe because this kernel starts after the one before it completes)."""
    if PDL:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    b = tl.program_id(1)
    zero_share(zero_ptr, N_ZERO, b * tl.num_programs(0) + pid, tl.num_programs(0) * tl.num_programs(1))
    x_ptr += b * stride_xb
    xp_ptr += b * N_PAD * 32
    sc_ptr += b * N_PAD
    xs_ptr += b * N_PAD * (32 // SEG)
    xo_ptr += b * N_PAD * 32
    ch = pid * CB + tl.arange(0, CB)
    i = tl.arange(0, 32)
    c = ch[:, None] * 32 + i[None, :]  # natural code order: amax and group sums
    p = tl.load(perm_ptr + c, mask=c < IN, other=0).to(tl.int32) & 0xFFFF
    v = tl.load(x_ptr + p, mask=c < IN, other=0.0).to(tl.float32)
    tl.store(xo_ptr + c, v)
    amax = tl.max(tl.abs(v), axis=1)
    f = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # floor(log2 max |x|)
    k = tl.minimum(tl.maximum(f + KOFF, KMIN), KMAX)  # (X_SCALE_*)
    tl.store(sc_ptr + ch, ((127 + k) << 23).to(tl.float32, bitcast=True))
    NSEG: tl.constexpr = 32 // SEG
    t = ch // NCH
    j = ch % NCH
    g = tl.arange(0, NSEG)
    tl.store(xs_ptr + (t[:, None] * NSEG + g[None, :]) * NCH + j[:, None],
             tl.sum(tl.reshape(v, (CB, NSEG, SEG)), axis=2))
    o = i * 0
    for n in tl.static_range(32):
        o = tl.where(i == n, ORDER[n], o)
    vp = tl.gather(v, o[None, :] + ch[:, None] * 0, axis=1)  # the pair order (from registers: no second gather)
    e = i * 0  # each position's code bit in its half (`pair_exponents`)
    for n in tl.static_range(32):
        e = tl.where(i == n, EXPS[n], e)
    inv = ((127 + 24 - e[None, :] - k[:, None]) << 23).to(tl.float32, bitcast=True)  # exactly 2**(24 - e - k)
    dst = ((t[:, None] * 16 + i[None, :] // 2) * NCH + j[:, None]) * 2 + i[None, :] % 2
    tl.store(xp_ptr + dst, (vp * inv).to(tl.float16))


@triton.jit
def _gemv_pairs_kernel(
    xp_ptr, sc_ptr, xs_ptr, xo_ptr, y_ptr, ws_ptr, cnt_ptr,
    codes_ptr, s_ptr, sst_ptr, z_ptr, zst_ptr, sst32_ptr, zst32_ptr, rowptr_ptr, cols_ptr, vals_ptr, perm_ptr,
    bases_ptr, bias_ptr,
    OUT, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, CPS, ONE, N_PAD, stride_yb, M,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, BETA2: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_BASE: tl.constexpr, PLAN: tl.constexpr, TYPES: tl.constexpr,
    BR: tl.constexpr, NCH: tl.constexpr, SEG: tl.constexpr, SPLIT: tl.constexpr,
    SHARED2: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr, RT: tl.constexpr, BB: tl.constexpr,
    LATE: tl.constexpr,
):
    """gemv_pairs: see the module docstring. xp_ptr: the int32 view of the x kernel's fp16 pairs (16 per chunk);
    xo_ptr: x in the permuted order (the outliers' x at their column, `_row_outliers`); PLAN / TYPES:
    `pair_plan(WB, GROUP)` (its magic exponents are dot_pairs': the codes here stay subnormal); ONE
    (FLOAT_ONE_BITS) is a runtime value, so that the compiler keeps the or-ed constant of the statistic decode in a
    register (`pair_stat`: ONE LOP3 per mask-and-or); the rest as `gemv._gemv_seg_kernel` with
    rows in thread (the tile [NCH, BR] or [BR, NCH]: RT, `plan.chunk_major_tile`). Outliers: one step of NCH
    per row (`_row_outliers`) per tile while any are left, the rest after the loop; with SPLIT each program takes a
    share of the steps. LATE: the first step's columns and value - base are loaded before the loop and its terms
    added after it (its chain of dependent loads, row pointers -> outliers -> x at their columns, then overlaps the
    tiles instead of delaying the first).
    BB = 2: two rows of x (M of them exist; each x kernel output holds row 1 N_PAD chunks after row 0): each pair of
    codes is masked out once and multiplied into a pair accumulator per row (`_pair_mac`)."""
    rb, rows0, rows, rmask = row_block(OUT, BR)
    jj = tl.arange(0, NCH)
    n_words = N_CHUNKS * WB
    NSEG: tl.constexpr = 32 // SEG
    blk = rows0 // BETA2
    acc = tile_zeros(NCH, BR, RT)
    acc1 = acc  # (row 1 of x, BB == 2)
    R = row_vec(rows, RT)
    RM = row_vec(rmask, RT)
    lo = tl.load(rowptr_ptr + R, mask=RM, other=0)  # each row's outliers: lo .. hi - 1
    hi = tl.load(rowptr_ptr + R + 1, mask=RM, other=0)
    # this program's chunks and share of the outlier steps (NCH of each row per step)
    c_begin, c_end, s0, s_end = split_share(CPS, N_CHUNKS, 0, tl.cdiv(tl.max(hi - lo), NCH), SPLIT)
    zero2 = tl.zeros(acc.shape, dtype=tl.int32)
    one = ONE.to(tl.uint32, bitcast=True)
    wp = codes_ptr + R * n_words + chunk_vec(jj, RT) * WB
    if LATE:  # the first outlier step's columns and value - base: loaded now, applied after the loop
        col0, dv0, km0 = _outlier_terms(s0, lo, hi, R, RM, jj, codes_ptr, n_words, s_ptr, sst_ptr, z_ptr, zst_ptr,
                                        N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, NCH, WB,
                                        GROUP, SB, ZB, HAS_BASE, RT)
        km0 = km0 & (col0 * 0 + s0 < s_end)  # (a split program's share may hold no step)
    for t in range(c_begin, c_end, NCH):
        ch, C, _m2, w0, w1, w2, w3, w4, w5, w6, w7, swin, zwin = tile_words(
            t, jj, wp, RM, s_ptr, z_ptr, R, N_CHUNKS, N_SWORDS, N_ZWORDS, WB, GROUP, NSEG, SB, ZB, not RT)
        if PDL:  # (the weight's loads above need nothing from the x kernel: in flight while it finishes)
            gdc_wait()
        if not LATE and s0 < s_end:  # one step of outliers per tile, while any are left
            acc, acc1 = _row_outliers(acc, acc1, s0, lo, hi, R, RM, jj, xo_ptr, N_PAD * 32, codes_ptr, n_words, s_ptr,
                                      sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr,
                                      bases_ptr, NCH, WB, GROUP, SB, ZB, HAS_BASE, RT, BB)
            s0 += 1
        a0 = zero2
        a1 = zero2
        a2 = zero2
        a3 = zero2
        a4 = zero2
        a5 = zero2
        e0 = zero2  # (row 1 of x)
        e1 = zero2
        e2 = zero2
        e3 = zero2
        e4 = zero2
        e5 = zero2
        # this tile's x pairs (pair n of its chunks at xq + n NCH) and group sums (group g at xsq + g NCH), as
        # columns of the tile: loaded in its layout (a [NCH] load made a layout conversion per pair in Triton 3.9)
        xq = xp_ptr + t * 16 + chunk_vec(jj, RT)
        xsq = xs_ptr + t * NSEG + chunk_vec(jj, RT)
        for n in tl.static_range(16):
            E = PLAN[n]
            q = pair_window(E, w0, w1, w2, w3, w4, w5, w6, w7) & E[3]  # the subnormal pair (q_a, q_b) 2**(e - 24)
            a = _pair_mac(pick_word(E[5], a0, a1, a2, a3, a4, a5, a5, a5), q, tl.load(xq + n * NCH) + zero2, ASM)
            if BB == 2:
                e = _pair_mac(pick_word(E[5], e0, e1, e2, e3, e4, e5, e5, e5), q,
                              tl.load(xq + N_PAD * 16 + n * NCH) + zero2, ASM)
                e0, e1, e2, e3, e4, e5 = put(E[5], e, e0, e1, e2, e3, e4, e5)
            a0, a1, a2, a3, a4, a5 = put(E[5], a, a0, a1, a2, a3, a4, a5)
        p0, p1, p2, p3 = _type_sums(TYPES, a0, a1, a2, a3, a4, a5, acc, ASM)
        sc = tl.load(sc_ptr + C)
        if BB == 2:
            f0, f1, f2, f3 = _type_sums(TYPES, e0, e1, e2, e3, e4, e5, acc, ASM)
            sc1 = tl.load(sc_ptr + N_PAD + C)
        for g in tl.static_range(NSEG):
            grp, gm1 = seg_group(ch, g, SEG, GROUP, N_CHUNKS, N_GROUPS)
            G = chunk_vec(grp, RT)
            GM1 = chunk_vec(gm1, RT)
            s = pair_stat(swin, g, s_ptr, sst32_ptr, R, blk, G, RM & GM1, GM1, N_GROUPS, BETA2, SB, SHARED2, one)
            z = pair_stat(zwin, g, z_ptr, zst32_ptr, R, blk, G, RM & GM1, GM1, N_GROUPS, BETA2, ZB, SHARED2, one)
            pg = pick_word(g, p0, p1, p2, p3, p3, p3, p3, p3)
            acc += s * (sc * pg - z * tl.load(xsq + g * NCH))
            if BB == 2:
                fg = pick_word(g, f0, f1, f2, f3, f3, f3, f3, f3)
                acc1 += s * (sc1 * fg - z * tl.load(xsq + N_PAD * NSEG + g * NCH))
    if LATE:
        if PDL:
            gdc_wait()
        acc, acc1 = _add_outlier_terms(acc, acc1, col0, dv0, km0, xo_ptr, N_PAD * 32, BB)
        s0 += 1
    while s0 < s_end:
        acc, acc1 = _row_outliers(acc, acc1, s0, lo, hi, R, RM, jj, xo_ptr, N_PAD * 32, codes_ptr, n_words, s_ptr,
                                  sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr,
                                  bases_ptr, NCH, WB, GROUP, SB, ZB, HAS_BASE, RT, BB)
        s0 += 1
    acc = tl.sum(acc, axis=0 if RT else 1)[:, None]
    acc1 = tl.sum(acc1, axis=0 if RT else 1)[:, None]
    zero = tl.zeros_like(acc)
    if SPLIT:
        split_add(acc, zero, ws_ptr, rows, rmask, OUT, 0, M)
        if BB == 2:
            split_add(acc1, zero, ws_ptr, rows, rmask, OUT, 1, M)
        split_last_store(ws_ptr, cnt_ptr, rb, rows, rmask, OUT, y_ptr, stride_yb, bias_ptr, M, HAS_BIAS, BB)
    else:
        gemv_store(acc, acc1, acc, acc, zero, zero, zero, zero, y_ptr, stride_yb, bias_ptr, rows, rmask, M,
                    HAS_BIAS, BB)


def supports(x_dtype, wbits: int, group: int) -> bool:
    """Whether gemv_pairs takes this input dtype and layout: fp16 or bf16 x (multiplied as fp16 after the x
    kernel's per-chunk scaling), a pair schedule for (wbits, group) (`pair_schedule`: 2..4 bits, groups of 8, 16,
    >= 32 codes or one per row)."""
    return x_dtype in (torch.float16, torch.bfloat16) and pair_plan(wbits, group) is not None


def gather_x_pairs(x, perm, wbits: int, group: int, nch: int, n_chunks_pad: int, *, zero=None, pdl: bool = False):
    """x [M, in] fp16 / bf16 -> (xp, sc, xs, xo), one kernel (`_gather_x_pairs_kernel`), one row per row of x: xp
    fp16 [M, n_chunks_pad * 32], x in the pair order in tiles of `nch` chunks, pair-major; sc fp32 [M,
    n_chunks_pad], each chunk's 2**k; xs fp32 [M, n_chunks_pad * 32 / segment], the group sums, group-major in each
    tile; xo fp32 [M, n_chunks_pad * 32], x in the permuted order. n_chunks_pad: a multiple of nch, and of 32 or a
    power of two. Reference: `pairs_x_reference` (per row)."""
    seg = segment_codes(group)
    M = x.shape[0]
    xp = torch.empty(M, n_chunks_pad * 32, dtype=torch.float16, device=x.device)
    sc = torch.empty(M, n_chunks_pad, dtype=torch.float32, device=x.device)
    xs = torch.empty(M, n_chunks_pad * (32 // seg), dtype=torch.float32, device=x.device)
    xo = torch.empty(M, n_chunks_pad * 32, dtype=torch.float32, device=x.device)
    cb = min(8, n_chunks_pad)  # (8 chunks a program: the x kernel is latency-bound)
    _gather_x_pairs_kernel[(n_chunks_pad // cb, M)](
        x, x.stride(0), xp, sc, xs, xo, perm, zero if zero is not None else perm, x.shape[-1],
        0 if zero is None else zero.numel(), n_chunks_pad,
        ORDER=pair_order(wbits, group), SEG=seg, NCH=nch, CB=cb, PDL=pdl, EXPS=pair_exponents(wbits, group),
        KOFF=_k_offset(wbits, group), KMIN=X_SCALE_K_MIN, KMAX=X_SCALE_K_MAX, num_warps=2)
    return xp, sc, xs, xo


def _k_offset(wbits: int, group: int) -> int:
    """A chunk's k - floor(log2 max |x|): X_SCALE_HEADROOM minus the layout's smallest code bit."""
    return X_SCALE_HEADROOM - min(pair_exponents(wbits, group))


def pairs_x_reference(x, perm, wbits: int, group: int, nch: int, n_chunks_pad: int):
    """Plain-torch reference of `gather_x_pairs` (xs up to summation order), row by row of x."""
    if x.shape[0] > 1:
        return tuple(torch.cat(parts) for parts in zip(*(pairs_x_reference(x[b:b + 1], perm, wbits, group, nch,
                                                                            n_chunks_pad)
                                                          for b in range(x.shape[0]))))
    n_in = x.shape[-1]
    xv = torch.zeros(n_chunks_pad * 32, dtype=torch.float32, device=x.device)
    xv[:n_in] = x.reshape(-1).float()[perm.to(torch.int64) & 0xFFFF]
    xv = xv.view(n_chunks_pad, 32)
    amax = xv.abs().amax(1)
    f = torch.floor(torch.log2(amax.clamp_min(2.0 ** -126)))
    k = torch.clamp(f + _k_offset(wbits, group), X_SCALE_K_MIN, X_SCALE_K_MAX)
    shift = 24 - torch.tensor(pair_exponents(wbits, group), device=x.device)[None, :] - k[:, None]
    seg = segment_codes(group)
    order = torch.tensor(pair_order(wbits, group), device=x.device)
    xp = torch.ldexp(xv[:, order], shift.float()).to(torch.float16)  # [chunks, 32]
    xp = xp.view(-1, nch, 16, 2).transpose(1, 2).reshape(-1)
    xs = xv.view(-1, nch, 32 // seg, seg).sum(3).transpose(1, 2).reshape(1, -1)
    return xp.view(1, -1), torch.exp2(k).view(1, -1), xs, xv.reshape(1, -1)


def gemv_pairs(x, p: PackedLayer, bias=None, *, block_rows=None, chunks=None, num_warps=None, split=None, pdl=None,
               max_registers=MAX_REGISTERS, rows_in_thread=None, outliers_late=None):
    """y [M, out] = x [M, in] W^T (+ bias) for one or two rows of fp16 or bf16 x (`supports`), two kernels (module
    docstring); y in x's dtype.
    Options as `gemv.gemv` with segments (split: programs per row block, None = one per SPLIT_CHUNKS
    chunks; pdl: None = where supported); `max_registers`: a cap on registers per thread (ptxas; None: none);
    `rows_in_thread`: the tile orientation, [NCH, BR] (True) or [BR, NCH] (None: `plan.chunk_major_tile`,
    the one in which the installed Triton gives each thread one chunk of every row of its block)."""
    codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm = p.flat_tensors()
    out_features, wbits, group, beta2, scale_bits, zero_bits = (p.out_features, p.wbits, p.group, p.beta2,
                                                               p.scale_bits, p.zero_bits)
    bases = p.bases
    M, n_in = x.shape
    if not 1 <= M <= PAIRS_MAX_ROWS or not supports(x.dtype, wbits, group):
        raise ValueError(f"gemv_pairs takes 1..{PAIRS_MAX_ROWS} rows of fp16 / bf16 x and a layout with a pair "
                         f"schedule; got {M} rows of {x.dtype}, wbits {wbits}, group {group}")
    n_chunks, n_groups, n_sw, n_zw = layout_sizes(n_in, out_features, wbits, group, scale_bits, zero_bits)
    # Tiles: 4 rows x 64 chunks from 8192 rows on (enough row blocks to fill the GPU), 2 x 64 below; 2 warps
    # (docs/kernels.md, gemv_pairs' defaults).
    wide = out_features >= 8192
    BR = block_rows or (4 if wide else 2)
    NCH = chunks or 64
    num_warps = num_warps or 2
    # The first outlier step's loads before the loop, its terms after it (`LATE`): at one row of x in 2-row blocks
    # only, where its chain of dependent loads would otherwise delay the first tile.
    if outliers_late is None:
        outliers_late = M == 1 and BR == 2
    y = torch.empty(M, out_features, dtype=x.dtype, device=x.device)
    n_rb = triton.cdiv(out_features, BR)
    pdl = has_pdl(x.device) if pdl is None else pdl and has_pdl(x.device)
    split, cps, ws, cnt, zero_buf = split_plan(n_chunks, NCH, split, M * out_features, n_rb, x.device)
    n_pad = triton.cdiv(n_chunks, NCH) * NCH  # x's chunks, padded to whole programs of the x kernel
    n_pad = triton.cdiv(n_pad, 32) * 32 if n_pad > 32 else triton.next_power_of_2(n_pad)
    xp, sc, xs, xo = gather_x_pairs(x, perm, wbits, group, NCH, n_pad, zero=zero_buf, pdl=pdl)
    plan, types = pair_plan(wbits, group)
    sp, ssp = stat_pointers(scale, scale_stats)
    zp, zsp = stat_pointers(zero, zero_stats)
    # BETA2 is a compile-time constant: the row block's second-level block, rows0 // BETA2, is then a shift.
    _gemv_pairs_kernel[(n_rb, split)](
        xp.view(torch.int32), sc, xs, xo, y, ws if ws is not None else sc, cnt if cnt is not None else perm,
        codes, sp, ssp, zp, zsp, int32_pairs(ssp, scale_bits), int32_pairs(zsp, zero_bits), row_ptr, cols,
        vals, perm, bases if bases is not None else vals, bias if bias is not None else x,
        out_features, n_chunks, n_groups, n_sw, n_zw, cps, FLOAT_ONE_BITS, n_pad, y.stride(0), M,
        WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, BETA2=max(beta2, 1), HAS_BIAS=bias is not None,
        HAS_BASE=bases is not None,
        PLAN=plan, TYPES=types, BR=BR, NCH=NCH, SEG=segment_codes(group), SPLIT=split > 1,
        SHARED2=beta2 > 0 and beta2 % BR == 0, ASM=os.environ.get("TRITON_INTERPRET") != "1", PDL=pdl,
        RT=chunk_major_tile() if rows_in_thread is None else rows_in_thread, BB=M, LATE=outliers_late,
        num_warps=num_warps, num_stages=1, **({"launch_pdl": True} if pdl else {}),
        **({"maxnreg": max_registers} if max_registers else {}),
    )
    return y
