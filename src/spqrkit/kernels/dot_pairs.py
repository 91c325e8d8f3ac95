"""The dense kernel of "dot_pairs": `dot`'s tensor-core product with its weight operand decoded in packed fp16 pairs.

Where `dot` builds its operand one weight at a time in fp32, here one LOP3 puts two codes of a chunk
(`pair_schedule`) into the mantissas of an fp16 pair, and one `sub.f16x2` + one `fma.rn.f16x2` give the pair of
weights w = q s16 + c16 (s16 = s, c16 = -s z, each rounded to fp16 once per group), rounded once to fp16. The pairs
are split into halves and joined into two [rows, NCH 16] operands per tile (pairs 0-7 and 8-15 of each chunk), each
followed by one tl.dot with x's slice; x comes in the schedule's pair order (`gather_x_cols` with the order). The
split-K workspace, the outlier kernel and PDL are `dot`'s (`dot.dot_stages` with `pairs`); the outlier kernel
rounds each outlier's base weight to fp16 from its fp32 value, which matches this operand's rounding up to an fp16
ulp or two of that weight. Accuracy: each weight rounded to fp16 after an fp16 scale, products and sums in fp32:
about twice the error of `dot`'s operand (tests/test_dot_pairs.py bounds it). Under Triton's interpreter the two
fp16-pair instructions are emulated with one rounding (`ASM` off). fp16 x only: `dot` takes bf16.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .decode import pick_word, seg_group
from .pair_decode import pair_stat, pair_window, put
from .pair_schedule import pair_order, pair_plan
from .tile import dot_store, dot_tile, gdc_launch_dependents, gdc_wait, tile_words


@triton.jit
def _half64(v, H: tl.constexpr):
    """fp64 value of half H of int32-held fp16 pairs (the interpreter's emulation)."""
    return ((v >> (16 * H)) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float64)


@triton.jit
def _pack_halves(lo, hi, ASM: tl.constexpr):
    """int32 fp16 pairs (lo rounded to fp16 in the low half, hi in the high half) from two fp32 tensors: ONE
    `cvt.rn.f16x2.f32`."""
    if ASM:
        return tl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [lo, hi], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:
        lb = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        hb = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        return (hb << 16) | lb


@triton.jit
def _pair_weight(v, magic, s, c, ASM: tl.constexpr):
    """(v - magic) s + c on fp16 pairs held in int32: `sub.f16x2` (exact: v = magic + q) then `fma.rn.f16x2` (one
    rounding per half). Without ASM the same in fp64 (exact) with one rounding to fp16."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; sub.f16x2 t, $1, $2; fma.rn.f16x2 $0, t, $3, $4; }", "=r,r,r,r,r",
            [v, magic, s, c], dtype=tl.int32, is_pure=True, pack=1)
    else:
        lo = (_half64(v, 0) - _half64(magic, 0)) * _half64(s, 0) + _half64(c, 0)
        hi = (_half64(v, 1) - _half64(magic, 1)) * _half64(s, 1) + _half64(c, 1)
        lb = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        hb = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        return (hb << 16) | lb


@triton.jit
def _pw(N: tl.constexpr, PLAN: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5,
        c0, c1, c2, c3, c4, c5, zero, ASM: tl.constexpr):
    """Pair N of the schedule as fp16 weights [NCH, BN, 2] (low half: code a, high half: code b)."""
    E = PLAN[N]
    v = (pair_window(E, w0, w1, w2, w3, w4, w5, w6, w7) & E[3]) | (zero + E[4])
    u = _pair_weight(v, zero + E[4], pick_word(E[5], s0, s1, s2, s3, s4, s5, s5, s5),
                     pick_word(E[5], c0, c1, c2, c3, c4, c5, c5, c5), ASM)
    lo = u.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (u >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return tl.join(lo, hi)


@triton.jit
def _pw2(N: tl.constexpr, PLAN: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5,
         c0, c1, c2, c3, c4, c5, zero, ASM: tl.constexpr):
    """Pairs N and N + 4: [NCH, BN, 2 (half), 2 (bit 2 of the pair)]."""
    return tl.join(_pw(N, PLAN, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, c0, c1, c2, c3, c4, c5,
                       zero, ASM),
                   _pw(N + 4, PLAN, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, c0, c1, c2, c3, c4, c5,
                       zero, ASM))


@triton.jit
def _pw4(N: tl.constexpr, PLAN: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5,
         c0, c1, c2, c3, c4, c5, zero, ASM: tl.constexpr):
    """Pairs N + {0, 4} x {0, 2}: [NCH, BN, 2, 2, 2 (bit 1)]."""
    return tl.join(_pw2(N, PLAN, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, c0, c1, c2, c3, c4, c5,
                        zero, ASM),
                   _pw2(N + 2, PLAN, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, c0, c1, c2, c3, c4, c5,
                        zero, ASM))


@triton.jit
def _pair_operand(H: tl.constexpr, PLAN: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5,
                  c0, c1, c2, c3, c4, c5, zero, ASM: tl.constexpr):
    """Weights [BN, NCH 16] fp16 of pairs 8 H .. 8 H + 7 of the tile's chunks (the words and pair statistics
    [NCH, BN]): column 16 j + 2 p + h holds half h of pair 8 H + p of chunk j (`pair_order`). The joins leave
    [NCH, BN, h, p2, p1, p0] (bit k of p: pk), all but the first two dimensions in each thread, so the permute and
    reshape move no data. (Half a chunk per operand: the whole chunk's kept 167 registers live, 3 programs per SM.)"""
    t = tl.join(_pw4(8 * H, PLAN, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, c0, c1, c2, c3, c4, c5,
                     zero, ASM),
                _pw4(8 * H + 1, PLAN, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, c0, c1, c2, c3, c4,
                     c5, zero, ASM))
    t = tl.permute(t, (1, 0, 3, 4, 5, 2))
    return tl.reshape(t, (t.shape[0], t.shape[1] * 16))


@triton.jit
def _group_pair_stats(g: tl.constexpr, swin, zwin, ch, s_ptr, z_ptr, sst32_ptr, zst32_ptr, R, RM, blk, N_CHUNKS,
                      N_GROUPS, BETA2, SEG: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
                      SHARED2: tl.constexpr, one):
    """(s, -s z), fp32 [NCH, BN], of segment g of the tile's chunks (`gemv_pairs.pair_stat`)."""
    grp, gm1 = seg_group(ch, g, SEG, GROUP, N_CHUNKS, N_GROUPS)
    G = grp[:, None]
    GM1 = gm1[:, None]
    s = pair_stat(swin, g, s_ptr, sst32_ptr, R, blk, G, RM & GM1, GM1, N_GROUPS, BETA2, SB, SHARED2, one)
    z = pair_stat(zwin, g, z_ptr, zst32_ptr, R, blk, G, RM & GM1, GM1, N_GROUPS, BETA2, ZB, SHARED2, one)
    return s, -s * z


@triton.jit
def dot_pairs_kernel(
    xk_ptr, stride_xk, ws_ptr,
    codes_ptr, s_ptr, z_ptr, sst32_ptr, zst32_ptr,
    M, OUT, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, CPS, ZERO, ONE,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, PLAN: tl.constexpr,
    TYPES: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, NCH: tl.constexpr, SEG: tl.constexpr,
    SHARED2: tl.constexpr, SPLIT: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr,
):
    """Dense part: ws[b, rows] (+)= x W_base^T for a [BN rows, BM rows of x] tile over chunks [pid1 CPS, pid1 CPS +
    CPS), as `dot._dot_kernel` (split K, PDL, tile words and statistic windows) but for its operand
    (`_pair_operand`): per tile the groups' (s, -s z) are packed into fp16 pairs per accumulator type of the schedule
    (TYPES: the groups of the low and high halves), the 16 pairs of each chunk decoded with them, one tl.dot per
    half-chunk operand. x (xk) in the pair order, pairs 0-7 of the tile's chunks then pairs 8-15 (`gather_x_cols`
    with the order and segments of 16). ZERO (0) and ONE (FLOAT_ONE_BITS): runtime values, so each mask-and-or is one
    LOP3."""
    if PDL:
        gdc_launch_dependents()
    rows, bb, blk, R, RM, c_begin, c_end = dot_tile(OUT, N_CHUNKS, BETA2, CPS, BN, BM)
    jj = tl.arange(0, NCH)
    kk = tl.arange(0, NCH * 16)
    n_words = N_CHUNKS * WB
    NSEG: tl.constexpr = 32 // SEG
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    one = ONE.to(tl.uint32, bitcast=True)
    zero = tl.zeros([NCH, BN], dtype=tl.int32) + ZERO
    xcol = xk_ptr + kk[:, None] * stride_xk + bb[None, :]  # x's [NCH 16, BM] slice at chunk 0
    wp = codes_ptr + R * n_words + jj[:, None] * WB
    for t in range(c_begin, c_end, NCH):
        ch, _C, _m2, w0, w1, w2, w3, w4, w5, w6, w7, swin, zwin = tile_words(
            t, jj, wp, RM, s_ptr, z_ptr, R, N_CHUNKS, N_SWORDS, N_ZWORDS, WB, GROUP, NSEG, SB, ZB)
        sg0, cg0 = _group_pair_stats(0, swin, zwin, ch, s_ptr, z_ptr, sst32_ptr, zst32_ptr, R, RM, blk, N_CHUNKS,
                                     N_GROUPS, BETA2, SEG, GROUP, SB, ZB, SHARED2, one)
        sg1 = sg0
        cg1 = cg0
        sg2 = sg0
        cg2 = cg0
        sg3 = sg0
        cg3 = cg0
        for g in tl.static_range(1, NSEG):
            s, c = _group_pair_stats(g, swin, zwin, ch, s_ptr, z_ptr, sst32_ptr, zst32_ptr, R, RM, blk, N_CHUNKS,
                                     N_GROUPS, BETA2, SEG, GROUP, SB, ZB, SHARED2, one)
            sg0, sg1, sg2, sg3, _, _ = put(g, s, sg0, sg1, sg2, sg3, sg3, sg3)
            cg0, cg1, cg2, cg3, _, _ = put(g, c, cg0, cg1, cg2, cg3, cg3, cg3)
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        s4 = zero
        s5 = zero
        c0 = zero
        c1 = zero
        c2 = zero
        c3 = zero
        c4 = zero
        c5 = zero
        for n in tl.static_range(len(TYPES)):  # the pair statistics of each type: (low half's group, high half's)
            sp = _pack_halves(pick_word(TYPES[n][0], sg0, sg1, sg2, sg3, sg3, sg3, sg3, sg3),
                              pick_word(TYPES[n][1], sg0, sg1, sg2, sg3, sg3, sg3, sg3, sg3), ASM)
            cp = _pack_halves(pick_word(TYPES[n][0], cg0, cg1, cg2, cg3, cg3, cg3, cg3, cg3),
                              pick_word(TYPES[n][1], cg0, cg1, cg2, cg3, cg3, cg3, cg3, cg3), ASM)
            s0, s1, s2, s3, s4, s5 = put(n, sp, s0, s1, s2, s3, s4, s5)
            c0, c1, c2, c3, c4, c5 = put(n, cp, c0, c1, c2, c3, c4, c5)
        if PDL:  # (the weight's loads above need nothing from the x kernel: in flight while it finishes)
            gdc_wait()
        for h in tl.static_range(2):
            a = _pair_operand(h, PLAN, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, c0, c1, c2, c3, c4,
                              c5, zero, ASM)  # [BN, NCH 16]
            xb = tl.load(xcol + (t * 32 + h * NCH * 16) * stride_xk)  # [NCH 16, BM]
            acc = tl.dot(a, xb, acc)
    dot_store(acc, ws_ptr, rows, bb, M, OUT, SPLIT)


def supports(x_dtype, wbits: int, group: int) -> bool:
    """Whether dot_pairs takes this input dtype and layout: fp16 x and a pair schedule for (wbits, group)
    (`pair_schedule`: 2..4 bits, groups of 8, 16, >= 32 codes or one per row)."""
    return x_dtype == torch.float16 and pair_plan(wbits, group) is not None


@functools.cache
def pair_column_orders(wbits: int, group: int, device):
    """(order, inverse) int32 [32]: the code position of each column of a chunk in the operand (`pair_order`), and
    each code position's column. Kept per device (made once, outside any CUDA-graph capture that may follow)."""
    order = pair_order(wbits, group)
    inv = [0] * 32
    for k, c in enumerate(order):
        inv[c] = k
    return (torch.tensor(order, dtype=torch.int32, device=device),
            torch.tensor(inv, dtype=torch.int32, device=device))
