"""The tensor-core kernels "dot" and "dot_pairs" (a few to 64 rows of x) and their launchers.

Three launches (`dot_stages`): x is gathered once in its own dtype, transposed and in tiles of NCH chunks
segment-major (`gather.gather_x_cols`: a segment of SEG codes of the tile's chunks is one contiguous slice); the
dense kernel (`_dot_kernel`, or `dot_pairs.dot_pairs_kernel` with its operand decoded in fp16 pairs) owns [64 rows x
up to 64 rows of x] and a share of the chunks (split K: fp32 atomics into a workspace the x kernel zeroes), builds
per segment the [64, NCH SEG] weight operand s q - s z rounded to x's dtype by joins (so that it goes to shared
memory in wide stores) and multiplies it with x's slice by one tl.dot (wgmma on Hopper); `_dot_outliers_kernel`
then adds the outliers' (value - base) x, the bias, and casts. The dense and outlier kernels run as programmatic
dependents (PDL) of the kernel before them where supported. docs/kernels.md has the measurements behind the
defaults.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..format.packed_layer import PackedLayer
from .decode import chunk_code_top, outlier_base_at, seg_group, seg_stat, top_weight
from .dot_pairs import dot_pairs_kernel, pair_column_orders
from .dot_pairs import supports as pairs_supported
from .gather import gather_x_cols
from .pair_schedule import pair_plan
from .plan import (
    DOT_PAIRS_CHUNKS,
    FLOAT_ONE_BITS,
    has_pdl,
    int32_pairs,
    layout_sizes,
    segment_codes,
    sm_count,
    stat_pointers,
)
from .tile import dot_store, dot_tile, gdc_launch_dependents, gdc_wait, tile_words


@triton.jit
def _dot_w(I: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, DT: tl.constexpr, one, mask):
    """The weight of code I of each chunk, rounded to DT: the `dot` kernel's A operand. Its outlier kernel rounds
    the same fp32 value (`base_weight`) the same way, so value - base cancels it exactly."""
    return top_weight(chunk_code_top(I, WB, w0, w1, w2, w3, w4, w5, w6, w7, one, mask), s8, c).to(DT)


@triton.jit
def _dot_pair(I: tl.constexpr, H: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7,
              DT: tl.constexpr, one, mask):
    """Codes I and I + H side by side ([..., 2]: `_dot_seg_tile`'s first join level)."""
    return tl.join(_dot_w(I, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                   _dot_w(I + H, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask))


@triton.jit
def _dot_seg_tile(B: tl.constexpr, SEG: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7,
                  DT: tl.constexpr, one, mask):
    """[BN, NCH * SEG] (s8 = s 2**WB, c = -s z - s8 [NCH, BN]: `top_weight`): the weights of codes B .. B + SEG - 1 of
    the tile's chunks, column j SEG + i for code B + i of chunk j. Built by joins (a join adds a minor dimension held in
    each thread, so no data moves): code k is first paired with k + SEG / 2, which makes the flattened order the natural
    one; each thread then holds SEG consecutive columns, so the tile goes to shared memory in wide stores."""
    if SEG == 8:
        t = tl.join(tl.join(_dot_pair(B + 0, 4, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                            _dot_pair(B + 2, 4, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)),
                    tl.join(_dot_pair(B + 1, 4, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                            _dot_pair(B + 3, 4, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)))
        t = tl.permute(t, (1, 0, 2, 3, 4))
    elif SEG == 16:
        t = tl.join(tl.join(_dot_quad(B + 0, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                            _dot_quad(B + 2, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)),
                    tl.join(_dot_quad(B + 1, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                            _dot_quad(B + 3, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)))
        t = tl.permute(t, (1, 0, 2, 3, 4, 5))
    else:  # 32
        t = tl.join(tl.join(_dot_oct(B + 0, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                            _dot_oct(B + 2, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)),
                    tl.join(_dot_oct(B + 1, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                            _dot_oct(B + 3, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)))
        t = tl.permute(t, (1, 0, 2, 3, 4, 5, 6))
    return tl.reshape(t, (t.shape[0], t.shape[1] * SEG))


@triton.jit
def _dot_quad(I: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, DT: tl.constexpr, one, mask):
    """Codes I + {0, 8} x {0, 4} of a 16-code segment (`_dot_seg_tile`'s first two join levels)."""
    return tl.join(_dot_pair(I, 8, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                   _dot_pair(I + 4, 8, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask))


@triton.jit
def _dot_oct(I: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, DT: tl.constexpr, one, mask):
    """Codes I + {0, 16} x {0, 8} x {0, 4} of a 32-code segment (`_dot_seg_tile`'s first three join levels)."""
    return tl.join(tl.join(_dot_pair(I, 16, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                           _dot_pair(I + 8, 16, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)),
                   tl.join(_dot_pair(I + 4, 16, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                           _dot_pair(I + 12, 16, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask)))


@triton.jit
def _dot_kernel(
    xk_ptr, stride_xk, ws_ptr,
    codes_ptr, s_ptr, z_ptr, sst32_ptr, zst32_ptr,
    M, OUT, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, CPS, ONE, CODE_MASK,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, NCH: tl.constexpr, SEG: tl.constexpr, SHARED2: tl.constexpr,
    SPLIT: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    """Dense part on the tensor cores: ws[b, rows] (+)= x W_base^T for a [BN rows, BM rows of x] tile over chunks
    [pid1 CPS, pid1 CPS + CPS) (split K: fp32 atomics into ws, zeroed by the x kernel; else a store). Per tile of
    NCH chunks and per segment of SEG codes (one group, or a chunk when groups span chunks) the weights are
    decoded into a [BN, NCH SEG] operand (`_dot_seg_tile`: base weights s q - s z rounded to x's dtype, the
    tile's words, statistic windows and second-level pairs loaded in a [chunks, rows] layout like gemv_seg's) and
    multiplied with x's [NCH SEG, BM] slice, given in this order by `_gather_x_cols_kernel`. Outliers follow in
    `_dot_outliers_kernel`. PDL: launched as a programmatic dependent of the x kernel, and lets the outlier kernel
    launch once every program has seen the x kernel finish."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    rows, bb, blk, R, RM, c_begin, c_end = dot_tile(OUT, N_CHUNKS, BETA2, CPS, BN, BM)
    jj = tl.arange(0, NCH)
    kk = tl.arange(0, NCH * SEG)
    n_words = N_CHUNKS * WB
    NSEG: tl.constexpr = 32 // SEG
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    one = ONE.to(tl.uint32, bitcast=True)  # the bits of 1.0, a runtime value (`chunk_code_top`)
    mask = CODE_MASK.to(tl.uint32, bitcast=True)  # (2**WB - 1) << (23 - WB), a runtime value too
    xcol = xk_ptr + kk[:, None] * stride_xk + bb[None, :]  # x's [NCH SEG, BM] slice at column 0
    wp = codes_ptr + R * n_words + jj[:, None] * WB
    for t in range(c_begin, c_end, NCH):
        ch, _C, m2, w0, w1, w2, w3, w4, w5, w6, w7, swin, zwin = tile_words(
            t, jj, wp, RM, s_ptr, z_ptr, R, N_CHUNKS, N_SWORDS, N_ZWORDS, WB, GROUP, NSEG, SB, ZB)
        for g in tl.static_range(NSEG):
            grp, gm1 = seg_group(ch, g, SEG, GROUP, N_CHUNKS, N_GROUPS)
            gm1 = gm1[:, None]
            G = grp[:, None]
            s = seg_stat(swin, g, s_ptr, sst32_ptr, R, blk, G, m2 & gm1, gm1, N_GROUPS, BETA2, SB, SHARED2)
            z = seg_stat(zwin, g, z_ptr, zst32_ptr, R, blk, G, m2 & gm1, gm1, N_GROUPS, BETA2, ZB, SHARED2)
            s8 = s * (1 << WB)
            a = _dot_seg_tile(g * SEG, SEG, s8, -s * z - s8, WB, w0, w1, w2, w3, w4, w5, w6, w7,
                              xk_ptr.dtype.element_ty, one, mask)  # [BN, NCH SEG] (`base_weight`'s arithmetic)
            xb = tl.load(xcol + (t * 32 + g * NCH * SEG) * stride_xk)  # [K, BM]
            if IEEE:
                acc = tl.dot(a, xb, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, xb, acc)
    dot_store(acc, ws_ptr, rows, bb, M, OUT, SPLIT)


@triton.jit
def _dot_outliers_kernel(
    ws_ptr, y_ptr, stride_yb, bias_ptr, xk_ptr, stride_xk,
    codes_ptr, s_ptr, sst_ptr, z_ptr, zst_ptr, rowptr_ptr, cols_ptr, vals_ptr, bases_ptr, inv_ptr,
    M, OUT, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, HAS_BIAS: tl.constexpr,
    BR: tl.constexpr, KOR: tl.constexpr, BM: tl.constexpr, NCH: tl.constexpr, SEG: tl.constexpr,
    HAS_BASE: tl.constexpr, ORDERED: tl.constexpr, PDL: tl.constexpr,
):
    """The `dot` kernel's epilogue, one program per BR rows: y[b, rows] = ws[b, rows] + sum over the row's outliers
    of (value - base) x[b, col] (+ bias), in y's dtype. The rows' outliers are walked KOR at a time per row, all BR
    rows at once ([BR, KOR] tiles); the base weight (HAS_BASE: `outlier_bases`, else decoded again from the packed
    tensors) is rounded like the dense operand's (`_dot_w`), x is read from the `dot` kernel's x (`gather_x_cols`'
    order; ORDERED: in the pair order, inv_ptr the index of each code position in it). PDL: launched as a
    programmatic dependent of `_dot_kernel`, it sums the outliers while that kernel
    finishes and waits for it only to read ws."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < OUT
    bb = tl.arange(0, BM)
    bmask = bb < M
    lo = tl.load(rowptr_ptr + rows, mask=rmask, other=0)
    hi = tl.load(rowptr_ptr + rows + 1, mask=rmask, other=0)
    kk = tl.arange(0, KOR)
    ym = rmask[:, None] & bmask[None, :]
    terms = tl.zeros([BR, KOR, BM], dtype=tl.float32)  # summed over the outliers once, after the loop
    for step in range(0, tl.max(hi - lo, axis=0), KOR):
        k = lo[:, None] + step + kk[None, :]  # [BR, KOR]
        km = k < hi[:, None]
        col, v, base = outlier_base_at(k, km, rows[:, None], codes_ptr, N_CHUNKS * WB, s_ptr, sst_ptr, z_ptr,
                                        zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr,
                                        WB, GROUP, SB, ZB, HAS_BASE)
        dv = v - base.to(xk_ptr.dtype.element_ty).to(tl.float32)  # rounded like the dense operand (`_dot_w`)
        ch = col // 32
        i = col % 32
        if ORDERED:  # the code's index in the pair order (`_gather_x_cols_kernel`)
            i = tl.load(inv_ptr + i, mask=km, other=0)
        p = (ch // NCH) * (32 * NCH) + (i // SEG) * (NCH * SEG) + (ch % NCH) * SEG + i % SEG  # col's place in xk
        # [BR, KOR, BM]; no mask along the rows of x (xk holds >= BM columns from here, zero past M), so that an
        # outlier's BM values are one vector load
        xv = tl.load(xk_ptr + p[:, :, None] * stride_xk + bb[None, None, :], mask=km[:, :, None],
                     other=0.0).to(tl.float32)
        terms += dv[:, :, None] * xv  # (elementwise: a sum over KOR per step cost 7 barriers)
    acc = tl.sum(terms, axis=1)
    if PDL:
        gdc_wait()
    acc += tl.load(ws_ptr + bb[None, :] * OUT + rows[:, None], mask=ym, other=0.0)  # [BR, BM]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + bb[None, :] * stride_yb + rows[:, None], acc.to(y_ptr.dtype.element_ty), mask=ym)


def dot(x, p: PackedLayer, bias=None, **options):
    """y [M, out] = x [M, in] W^T (+ bias) on the tensor cores: the three launches of `dot_stages`, in order."""
    stages, y = dot_stages(x, p, bias, **options)
    for _, launch in stages:
        launch()
    return y


def dot_stages(x, p: PackedLayer, bias=None, *, block_m=None, block_n=None, chunks=None, split=None, num_warps=None,
               num_stages=None, outlier_rows=4, outliers_per_step=None, pdl=None, programs_per_sm=None, pairs=False,
               max_registers=None):
    """The `dot` kernel's launches, ([(name, launch)], y): y is filled when they run in order (benchmarks/dot_parts.py
    times each alone). "gather x": x gathered once, transposed, into segment-major tiles in its own dtype
    (`gather_x_cols`, which also zeroes the fp32 output when split); "dense": `_dot_kernel`, [block_n rows x block_m
    rows of x] tiles of `chunks` chunks, over `split` shares of the chunks; "outliers": the outliers, bias and cast
    (`_dot_outliers_kernel`, `outlier_rows` rows and `outliers_per_step` outliers per row a step; None: 32 for up
    to 16 rows of x, else 16, which keeps its [rows, outliers, rows of x] terms in registers). `split` None:
    enough shares for about `programs_per_sm` programs per SM (None: 4 below 128 tiles of rows, else 8, and 12 for
    layers of 2**27 weights and more: a large grid runs several waves of programs, and finer shares even out its
    last one). `pdl` (None: where supported, `has_pdl`): the dense and outlier kernels launched as programmatic
    dependents of the kernel before them.
    `p.bases`: the outliers' base weights (`outlier_bases`; None: decoded again per outlier). `pairs`: the dense
    kernel is `dot_pairs_kernel` (fp16 x; its operand decoded in fp16 pairs, x in the pair order, two
    segments of 16 per chunk); `chunks` then defaults to DOT_PAIRS_CHUNKS. `max_registers`: a cap on dot_pairs' dense
    kernel's registers per thread (ptxas).
    Defaults (tile, split, outlier steps): docs/kernels.md, "dot's defaults and what was tried"."""
    codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm = p.flat_tensors()
    out_features, wbits, group, beta2, scale_bits, zero_bits = (p.out_features, p.wbits, p.group, p.beta2,
                                                               p.scale_bits, p.zero_bits)
    bases = p.bases
    M, n_in = x.shape
    n_chunks, n_groups, n_sw, n_zw = layout_sizes(n_in, out_features, wbits, group, scale_bits, zero_bits)
    y = torch.empty(M, out_features, dtype=x.dtype, device=x.device)
    BM = block_m or min(64, max(16, triton.next_power_of_2(M)))
    BN = block_n or 64
    NCH = chunks or (DOT_PAIRS_CHUNKS if pairs else 8)
    SEG = 16 if pairs else segment_codes(group)  # (dot_pairs: two segments of 8 pairs per chunk, any group)
    n_tiles = triton.cdiv(n_chunks, NCH)
    row_blocks, m_blocks = triton.cdiv(out_features, BN), triton.cdiv(M, BM)
    if split is None:  # (programs_per_sm None: 4 for fewer than 128 tiles, else 8; 12 from 2**27 weights)
        pps = programs_per_sm or (4 if row_blocks * m_blocks < 128 else 12 if n_in * out_features >= 2 ** 27 else 8)
        split = triton.cdiv(pps * sm_count(x.device), row_blocks * m_blocks)
    split = max(1, min(split, n_tiles))
    cps = triton.cdiv(n_tiles, split) * NCH  # chunks per program
    split = triton.cdiv(n_chunks, cps)
    zero_ws = torch.empty(M * out_features, dtype=torch.int32, device=x.device) if split > 1 else None
    ws = zero_ws.view(torch.float32) if split > 1 else torch.empty(M * out_features, dtype=torch.float32,
                                                                   device=x.device)
    pdl = has_pdl(x.device) if pdl is None else pdl and has_pdl(x.device)
    xk = torch.empty(n_tiles * 32 * NCH, m_blocks * BM, dtype=x.dtype, device=x.device)  # column-major x
    sp, ssp = stat_pointers(scale, scale_stats)
    zp, zsp = stat_pointers(zero, zero_stats)

    order = inv = None
    if pairs:
        order, inv = pair_column_orders(wbits, group, x.device)
        plan, types = pair_plan(wbits, group)

    def gather():
        gather_x_cols(x, perm, NCH, SEG, m_blocks * BM, out=xk, zero=zero_ws, pdl=pdl, order=order)

    def dense_pairs():
        dot_pairs_kernel[(row_blocks, split, m_blocks)](
            xk, xk.stride(0), ws, codes, sp, zp, int32_pairs(ssp, scale_bits), int32_pairs(zsp, zero_bits),
            M, out_features, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1), cps, 0, FLOAT_ONE_BITS,
            WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, PLAN=plan, TYPES=types, BM=BM, BN=BN, NCH=NCH,
            SEG=segment_codes(group), SHARED2=beta2 > 0 and beta2 % BN == 0, SPLIT=split > 1,
            ASM=os.environ.get("TRITON_INTERPRET") != "1", PDL=pdl,
            num_warps=num_warps or 4, num_stages=num_stages or 1, **({"launch_pdl": True} if pdl else {}),
            **({"maxnreg": max_registers} if max_registers else {}),
        )

    def dense():
        _dot_kernel[(row_blocks, split, m_blocks)](
            xk, xk.stride(0), ws, codes, sp, zp, int32_pairs(ssp, scale_bits), int32_pairs(zsp, zero_bits),
            M, out_features, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1), cps, FLOAT_ONE_BITS,
            ((1 << wbits) - 1) << (23 - wbits),
            WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, BM=BM, BN=BN, NCH=NCH, SEG=SEG,
            SHARED2=beta2 > 0 and beta2 % BN == 0, SPLIT=split > 1, IEEE=x.dtype == torch.float32, PDL=pdl,
            num_warps=num_warps or 4, num_stages=num_stages or 1, **({"launch_pdl": True} if pdl else {}),
        )

    def outliers():
        for b0 in range(0, M, 64):  # (the kernel holds [rows, rows of x] in registers: 64 rows of x at a time)
            mb = min(64, M - b0)
            br, kor = outlier_rows, outliers_per_step or (32 if mb <= 16 else 16)
            first = pdl and b0 == 0
            _dot_outliers_kernel[(triton.cdiv(out_features, br),)](
                ws[b0 * out_features:], y[b0:], y.stride(0), bias if bias is not None else x, xk[:, b0:],
                xk.stride(0),
                codes, sp, ssp, zp, zsp, row_ptr, cols, vals, bases if bases is not None else vals,
                inv if pairs else perm, mb, out_features, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1),
                WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, HAS_BIAS=bias is not None,
                BR=br, KOR=kor, BM=triton.next_power_of_2(mb), NCH=NCH, SEG=SEG, HAS_BASE=bases is not None,
                ORDERED=pairs, PDL=first,
                num_warps=2 if br * kor <= 128 else 4, **({"launch_pdl": True} if first else {}),
            )

    return [("gather x", gather), ("dense", dense_pairs if pairs else dense), ("outliers", outliers)], y


def dot_pairs(x, p: PackedLayer, bias=None, **options):
    """y [M, out] = x [M, in] W^T (+ bias) for fp16 x (`dot_pairs.supports`): `dot_stages` with the pair operand,
    its three launches in order."""
    if not pairs_supported(x.dtype, p.wbits, p.group):
        raise ValueError(f"dot_pairs takes fp16 x and a layout with a pair schedule; got {x.dtype}, wbits {p.wbits}, "
                         f"group {p.group}")
    stages, y = dot_stages(x, p, bias, pairs=True, **options)
    for _, launch in stages:
        launch()
    return y
