"""Triton kernels that compute y = x W^T + b straight from the packed SpQR format (docs/format.md).

One kernel family per batch regime; `spqrkit.modules.linear.select_matmul` picks among them and the plain-torch
reference (`reference_matmul`: dequantize, cast, F.linear) is their oracle in tests/test_kernels_matmul.py. Measured
on an H200 (benchmarks/kernel_speed.py, README, 2026-11-26): at batch 1 `gemv_seg` is 1.26x-1.75x as fast as fp16
cuBLAS on the LLaMA-2 shapes and 1.20x-1.84x as fast as the authors' spqr-quant kernel (for fp16 x the selector takes
`gemv_pairs.py` there, 1.11x-1.29x faster again: packed fp16 pairs); with 3-64 rows of x `dot`
reaches 0.71x-0.91x of fp16 (4-16 rows; its dense part alone is faster than fp16 at 8 rows) and 1.7x-4.9x the speed
of dequantize + cuBLAS (16-64 rows).

- `gemv` (decode: gemv_seg is chosen for 1-2 rows of x where gemv_pairs (fp16 / bf16 x) does not cover the layout,
  and takes 8 per launch; the others take 4, forced only):
  one program owns BLOCK_R output rows and walks the input in tiles of NCH 32-code chunks: it loads each chunk's
  `wbits` words once and decodes code i of every chunk with constant shifts (the offset of code i in a chunk is
  known at compile time), multiplies by the group's scale and zero, and accumulates x * w on CUDA cores, one
  register tile per row of x. Three variants:
  - "gemv": x gathered through the permutation inside the loop (no pre-kernel; a baseline, forced only);
  - "gemv_xc" (`x_chunked`): one small kernel first gathers x (fp32) into tiles of NCH chunks, code-major
    (`gather_x_tiles`), so the loop reads x contiguously, unmasked, at compile-time offsets;
  - "gemv_seg" (`segments`): the pre-kernel also scales x by 2**-e(i) for code position i (`scale_wbits`), so
    each code is decoded IN PLACE (mask and or into the mantissa of 2**23, one subtraction: no shift), the
    products q x are summed per segment (one group, or a chunk) and s * sum - s z * sum(x) is added once per
    segment with the segment sums of x from the pre-kernel. Its tile is [chunks, rows] ("rows in thread": a thread
    holds one chunk of several rows, so one x load serves them all), the statistic codes of a chunk's groups come
    from one window of words, long rows are split across programs (split K, atomic fp32 partial sums), and on
    Hopper it is launched as a programmatic dependent of the x kernel (PDL), overlapping its launch.
- `dot` (3-64 rows of x): tensor cores, three kernels. x is gathered once in its own dtype, transposed ([columns,
  rows of x]) and in tiles of NCH chunks segment-major (`gather_x_cols`: a segment of SEG codes of the tile's
  chunks is one contiguous slice). `_dot_kernel` owns [64 rows x up to 64 rows of x] and a share of the chunks
  (split K: fp32 atomics into a workspace the x kernel zeroes): per tile it loads the words and statistic windows
  like gemv_seg ([chunks, rows] layout), and per segment builds the [64, NCH SEG] weight operand s q - s z (rounded
  to x's dtype) by joins, which keep each thread's SEG codes of a chunk contiguous so the operand goes to shared
  memory in wide stores, then one tl.dot (wgmma on Hopper) with x's slice. Each code is shifted to the top of an
  fp32 mantissa and or-ed into 1.0 (1 + q 2**-wbits, `_chunk_code_top`), and one FFMA with s 2**wbits and
  -s z - s 2**wbits gives the weight: no magic number to subtract (7.2 instead of 8.1 instructions per weight).
  `_dot_outliers_kernel` then adds the outliers (value - base) x, 4 rows x 32 outliers a step (each one's x values
  one vector load, the terms summed once after the loop), the bias, and casts; both run as programmatic
  dependents (PDL) of the kernel before them where supported. Measured (README, benchmarks/dot_parts.py, H200,
  8 rows of x): the dense part takes 11.4 us at 4096^2 and 127.2 at 28672x8192 against 13.4 and 133.8 for fp16
  cuBLAS, the whole call 16.2 and 151.8: the outlier kernel (4.5-27.6 us) and the x gather (2.0-4.6) make the
  difference. (The first version, one tl.dot per code through shared memory with 64 programs, took 348 us.)
- `dot_pairs` (`dot_pairs.py`, 3-32 rows of fp16 x): `dot_stages` with another dense kernel, its operand decoded
  two weights per instruction in packed fp16 pairs (as gemv_pairs' codes), x in the pair order: 1.03x-1.10x
  faster than `dot` at 3-16 rows.
- `dequantize`: large batches (prefill). Writes the weight once in the activation dtype, decoding whole chunks like
  `gemv`, in a chunk-major column order (code i of chunk j at column i * n_chunks + j, so the stores are contiguous);
  the caller gathers x's columns in the same order and multiplies with cuBLAS.

Outliers (CSR, rows sorted) replace base weights. The fused kernels first sum the dense base weights, then, for the
outliers of their rows, add (value - base) * x. gemv_seg and dot take the base weights from one derived tensor,
`outlier_bases` (fp32, 4 bytes per outlier, computed once per layer from the packed tensors and kept by
`SpQRLinear`): an outlier then costs its column, value and base (H200: gemv_seg at one row 10.2 us at 4096^2
against 12.0 decoding them again in the same run; dot's outlier kernel, also restructured, 6.4 us at 8 rows against
12.1 in an earlier run). Without it (and in gemv / gemv_xc) the base code and statistics at the outlier's position
are decoded again from the packed tensors. In the gemv kernels the outlier terms go elementwise into a [rows, KO]
register tile that is summed once at the end (no reduction, no barrier per tile).
Statistics: second-level-quantized (codes packed along groups + fp16 (scale, zero) per beta2 rows and group) or
fp16, each independently. Group size: any power of two, or one group per row (GROUP = 0).
"""
from __future__ import annotations

import functools
import os

import triton
import triton.language as tl

try:  # grid dependency control (programmatic dependent launch), Triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None


# ---------------------------------------------------------------------------------------------------- decoding
@triton.jit
def _code_at(words_ptr, row_off, idx, BITS: tl.constexpr, mask):
    """Unsigned `BITS`-bit code number `idx` of a row packed in 32-code chunks (row_off = the row's first word)."""
    bit = (idx % 32) * BITS
    wi = (idx // 32) * BITS + bit // 32
    off = bit % 32
    lo = tl.load(words_ptr + row_off + wi, mask=mask, other=0).to(tl.uint32, bitcast=True)
    straddle = (off + BITS) > 32
    hi = tl.load(words_ptr + row_off + wi + 1, mask=mask & straddle, other=0).to(tl.uint32, bitcast=True)
    v = lo >> off.to(tl.uint32)
    v = v | (hi << tl.where(straddle, 32 - off, 0).to(tl.uint32))
    return v & ((1 << BITS) - 1)


@triton.jit
def _stat_at(q_ptr, stats_ptr, rows, g, mask, N_GROUPS, N_WORDS, BETA2, BITS: tl.constexpr):
    """Dequantized first-level statistic (fp32) of (row, group): from its second-level code and the fp16
    (scale, zero) of its beta2-row group when BITS > 0, else the stored fp16 value (q_ptr then points at it)."""
    if BITS > 0:
        q = _code_at(q_ptr, rows * N_WORDS, g, BITS, mask).to(tl.float32)
        sp = stats_ptr + ((rows // BETA2) * N_GROUPS + g) * 2
        s2 = tl.load(sp, mask=mask, other=0.0).to(tl.float32)
        z2 = tl.load(sp + 1, mask=mask, other=0.0).to(tl.float32)
        return s2 * (q - z2)
    else:
        return tl.load(q_ptr + rows * N_GROUPS + g, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _chunk_words(wp, mask, WB: tl.constexpr):
    """The WB int32 words of 32-code chunks (wp points at word 0 of each), as uint32; unused ones repeat word 0."""
    w0 = tl.load(wp, mask=mask, other=0).to(tl.uint32, bitcast=True)
    w1 = w0
    w2 = w0
    w3 = w0
    w4 = w0
    w5 = w0
    w6 = w0
    w7 = w0
    if WB > 1:
        w1 = tl.load(wp + 1, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if WB > 2:
        w2 = tl.load(wp + 2, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if WB > 3:
        w3 = tl.load(wp + 3, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if WB > 4:
        w4 = tl.load(wp + 4, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if WB > 5:
        w5 = tl.load(wp + 5, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if WB > 6:
        w6 = tl.load(wp + 6, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if WB > 7:
        w7 = tl.load(wp + 7, mask=mask, other=0).to(tl.uint32, bitcast=True)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _pick(K: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7):
    r = w0
    if K == 1:
        r = w1
    if K == 2:
        r = w2
    if K == 3:
        r = w3
    if K == 4:
        r = w4
    if K == 5:
        r = w5
    if K == 6:
        r = w6
    if K == 7:
        r = w7
    return r


@triton.jit
def _chunk_bits(I: tl.constexpr, WB: tl.constexpr, T: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7):
    """The bits of code I (0..31) of each chunk (bits [I * WB, (I + 1) * WB) of the chunk's words) moved to bits
    T .. T + WB - 1, higher and lower bits not yet masked: one shift by a compile-time constant (two shifts and an or
    when the code straddles words; then T < its offset)."""
    K: tl.constexpr = (I * WB) // 32
    O: tl.constexpr = (I * WB) % 32
    w = _pick(K, w0, w1, w2, w3, w4, w5, w6, w7)
    if O + WB > 32:
        bits = (w >> (O - T)) | (_pick(K + 1, w0, w1, w2, w3, w4, w5, w6, w7) << (32 - O + T))
    elif O >= T:
        bits = w >> (O - T)
    else:
        bits = w << (T - O)
    return bits


@triton.jit
def _chunk_code(I: tl.constexpr, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7):
    """Code I (0..31) of each chunk (`_chunk_bits` to bit 0, masked)."""
    return _chunk_bits(I, WB, 0, w0, w1, w2, w3, w4, w5, w6, w7) & ((1 << WB) - 1)


@triton.jit
def _code_to_float(q, magic=0x4B000000):
    """uint32 code (< 2**23) -> fp32 without a conversion instruction: the bits of 2**23 + q, minus 2**23 (exact).
    `magic` is 0x4B000000 (the bits of 2**23); the per-weight decodes pass it as a kernel argument (MAGIC), which the
    compiler cannot fold, so that the code's mask and this OR become ONE LOP3 (with two immediates ptxas emits an AND
    and an OR: benchmarks/sass_report.py)."""
    return (q | magic).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _chunk_code_top(I: tl.constexpr, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, one, mask):
    """fp32 1 + q 2**-WB for code q = code I (0..31) of each chunk: its bits moved to the top of the mantissa (bits
    23 - WB .. 22, `_chunk_bits`) and or-ed into the bits of 1.0. `one` (FLOAT_ONE_BITS) and `mask` ((2**WB - 1) <<
    (23 - WB)) are runtime values, so mask and or are ONE LOP3. Nothing is subtracted: `_top_weight` scales it by
    s 2**WB, which keeps every bit (see there)."""
    bits = _chunk_bits(I, WB, 23 - WB, w0, w1, w2, w3, w4, w5, w6, w7)
    return ((bits & mask) | one).to(tl.float32, bitcast=True)


@triton.jit
def _top_weight(m, s8, c):
    """s q - s z from m = 1 + q 2**-WB (`_chunk_code_top`), s8 = s 2**WB and c = -s z - s8: m s8 + c, one FFMA.
    The terms stay within a few times s 2**WB (unlike a 2**23 magic, whose subtraction must come first: one FADD
    per weight), so the two roundings (c, and the FFMA's) cost at most about 2**(WB - 22) |s| on top of the one of
    s q - s z computed directly: far below the weight's rounding to fp16 / bf16 for the tensor cores."""
    return m * s8 + c


@triton.jit
def _base_weight(q, s, sz, WB: tl.constexpr):
    """The base weight of code q (fp32) with scale s and sz = -s z, fp32, computed exactly as the `dot` kernel's
    dense operand is (`_top_weight` of 1 + q 2**-WB, exact here too), so that its outlier kernel's value - base
    cancels that operand bit for bit."""
    s8 = s * (1 << WB)
    return _top_weight(q * (1.0 / (1 << WB)) + 1.0, s8, sz - s8)


@triton.jit
def _group_stats(
    I: tl.constexpr, ch, rows, m2, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
):
    """(scale, zero), fp32 [BR, NCH], of the group holding code I of chunks ch (rows [BR], m2 [BR, NCH] mask)."""
    if GROUP == 0:
        g = ch * 0
    else:
        g = (ch * 32 + I) // GROUP
    gm = m2 & (g < N_GROUPS)[None, :]  # (a padded last chunk may reach past the last group)
    s = _stat_at(s_ptr, sst_ptr, rows[:, None], g[None, :], gm, N_GROUPS, N_SWORDS, BETA2, SB)
    z = _stat_at(z_ptr, zst_ptr, rows[:, None], g[None, :], gm, N_GROUPS, N_ZWORDS, BETA2, ZB)
    return s, z


@triton.jit
def _outlier_base_at(k, km, row, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS,
                     N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, WB: tl.constexpr, GROUP: tl.constexpr,
                     SB: tl.constexpr, ZB: tl.constexpr, HAS_BASE: tl.constexpr):
    """Outliers k (mask km) of rows `row`: (column, value, base weight), fp32 but the column. The base weight
    (`_base_weight`) is read from bases_ptr (HAS_BASE: `outlier_bases`, computed by this same helper) or decoded
    again: the base code and its group's statistics from the packed tensors."""
    col = tl.load(cols_ptr + k, mask=km, other=0).to(tl.int32) & 0xFFFF
    v = tl.load(vals_ptr + k, mask=km, other=0.0).to(tl.float32)
    if HAS_BASE:
        base = tl.load(bases_ptr + k, mask=km, other=0.0)
    else:
        q = _code_at(codes_ptr, row * N_CODE_WORDS, col, WB, km).to(tl.float32)
        if GROUP > 0:
            g = col // GROUP
        else:
            g = col * 0
        s = _stat_at(s_ptr, sst_ptr, row, g, km, N_GROUPS, N_SWORDS, BETA2, SB)
        z = _stat_at(z_ptr, zst_ptr, row, g, km, N_GROUPS, N_ZWORDS, BETA2, ZB)
        base = _base_weight(q, s, -s * z, WB)
    return col, v, base


@triton.jit
def _outlier_terms(
    k0, k_hi, lo, hi, rows0, x_ptr,
    codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    cols_ptr, vals_ptr, perm_ptr, bases_ptr,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
    KO: tl.constexpr, XC: tl.constexpr, XSCALED: tl.constexpr, HAS_BASE: tl.constexpr,
):
    """Outliers k0 .. min(k0 + KO, k_hi) - 1, all in the BR rows rows0 .. (row r's are lo[r] .. hi[r] - 1):
    (hit [BR, KO]: outlier k is valid and in row r; [KO] tensors dv = value - base weight and p = the index of its
    x in a row of x): their contribution to row r is dv * x[b, p] where hit. The base code and statistics at the
    outlier come from `_outlier_base_at` (HAS_BASE: read from `outlier_bases`, else decoded again).
    XC: 0 when x is in the original column order (p = perm[col]), else the tile width of x given by
    `_gather_x_tiles_kernel`, scaled by 2**-e when XSCALED (that 2**e is then folded into dv)."""
    k = k0 + tl.arange(0, KO)
    km = k < k_hi
    hit, loc = _outlier_rows(k, lo, hi)
    col, v, base = _outlier_base_at(k, km, rows0 + loc, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr,
                                    N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, WB, GROUP, SB,
                                    ZB, HAS_BASE)
    dv = v - base
    if XC > 0:  # x given in tiles of XC chunks
        ch = col // 32
        p = ((ch // XC) * 32 + col % 32) * XC + ch % XC
        if XSCALED:
            dv = dv * ((127 + _code_shift(col % 32, WB)) << 23).to(tl.float32, bitcast=True)  # * 2**e: exact
    else:
        p = tl.load(perm_ptr + col, mask=km, other=0).to(tl.int32) & 0xFFFF
    return hit & km[None, :], dv, p, km


@triton.jit
def _outlier_add(o, hit, dv, x_ptr, p, mask):
    """o [BR, KO] + the outliers' terms dv * x[p] where hit (`_outlier_terms`): an elementwise update (no
    reduction, no barrier); the caller sums o over KO once, at the end."""
    xv = tl.load(x_ptr + p, mask=mask, other=0.0).to(tl.float32)
    return o + tl.where(hit & mask[None, :], (dv * xv)[None, :], 0.0)


@triton.jit
def _outlier_rows(k, lo, hi):
    """(hit [BR, KO]: outlier k lies in local row r, i.e. lo[r] <= k < hi[r]; the local row of each outlier [KO]).
    Computed in the [BR, KO] layout itself, so that the caller's row-wise updates need no layout conversion."""
    hit = (lo[:, None] <= k[None, :]) & (k[None, :] < hi[:, None])
    return hit, tl.sum(tl.where(hit, tl.arange(0, lo.shape[0])[:, None], 0), axis=0)


@triton.jit
def _outlier_range(rowptr_ptr, rows0, OUT, BR: tl.constexpr):
    """(first outlier, end, row_ptr[rows0 + i], row_ptr[rows0 + i + 1] for i < BR) of the rows rows0 .. rows0 +
    BR - 1 (CSR rows are consecutive, so their outliers are one range; rows past OUT get empty ranges)."""
    rr = tl.arange(0, BR)
    k_lo = tl.load(rowptr_ptr + rows0)
    k_hi = tl.load(rowptr_ptr + tl.minimum(rows0 + BR, OUT))
    lo = tl.load(rowptr_ptr + rows0 + rr, mask=rows0 + rr < OUT, other=2147483647)
    hi = tl.load(rowptr_ptr + rows0 + 1 + rr, mask=rows0 + rr < OUT, other=2147483647)
    return k_lo, k_hi, lo, hi


# ---------------------------------------------------------------------------------------------------- gemv
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
def _gemv_outliers(
    o0, o1, o2, o3, o4, o5, o6, o7, k0, k_hi, lo, hi, rows0, x_ptr, stride_xb, M,
    codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    cols_ptr, vals_ptr, perm_ptr, bases_ptr,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
    BB: tl.constexpr, KO: tl.constexpr, XC: tl.constexpr, XSCALED: tl.constexpr, HAS_BASE: tl.constexpr,
):
    """The gemv kernels' outlier step: KO outliers from k0, decoded once (`_outlier_terms`), added to the [BR, KO]
    accumulators o_b of the BB (<= 8) rows b of x (gemv / gemv_xc pass four)."""
    hit, dv, p, km = _outlier_terms(
        k0, k_hi, lo, hi, rows0, x_ptr, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS,
        N_ZWORDS, BETA2, cols_ptr, vals_ptr, perm_ptr, bases_ptr, WB, GROUP, SB, ZB, KO, XC, XSCALED, HAS_BASE)
    o0 = _outlier_add(o0, hit, dv, x_ptr, p, km)
    # (row b of x exists: a tensor comparison, since Triton 3.9's interpreter rejects `mask & (M > b)`)
    if BB > 1:
        o1 = _outlier_add(o1, hit, dv, x_ptr + stride_xb, p, km & (p * 0 + 1 < M))
    if BB > 2:
        o2 = _outlier_add(o2, hit, dv, x_ptr + 2 * stride_xb, p, km & (p * 0 + 2 < M))
        o3 = _outlier_add(o3, hit, dv, x_ptr + 3 * stride_xb, p, km & (p * 0 + 3 < M))
    if BB > 4:
        o4 = _outlier_add(o4, hit, dv, x_ptr + 4 * stride_xb, p, km & (p * 0 + 4 < M))
        o5 = _outlier_add(o5, hit, dv, x_ptr + 5 * stride_xb, p, km & (p * 0 + 5 < M))
        o6 = _outlier_add(o6, hit, dv, x_ptr + 6 * stride_xb, p, km & (p * 0 + 6 < M))
        o7 = _outlier_add(o7, hit, dv, x_ptr + 7 * stride_xb, p, km & (p * 0 + 7 < M))
    return o0, o1, o2, o3, o4, o5, o6, o7


@triton.jit
def _gemv_store(acc0, acc1, acc2, acc3, o0, o1, o2, o3, y_ptr, stride_yb, bias_ptr, rows, rmask, M,
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
def _code_shift(i, WB: tl.constexpr):
    """2**e(i) is the factor by which `_chunk_code_scaled` leaves code i of a chunk scaled (i: int or tensor)."""
    o = (i * WB) % 32
    return tl.where(o + WB > 32, 0, tl.where(o + WB <= 23, o, o - 16))


@triton.jit
def _chunk_code_scaled(I: tl.constexpr, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, magic):
    """fp32 q * 2**e(I), exactly, for code I (0..31) of each chunk: the code's bits are masked IN PLACE and or-ed
    into the mantissa of 2**23 (an AND and an OR), then 2**23 is subtracted, so no shift is needed; codes in bits
    23..31 of a word are taken from the word's upper half (one shift per word, shared), codes straddling two words
    are shifted down (e = 0). `_gather_x_tiles_kernel` with SCALE_WB gives x the matching 2**-e(I)."""
    K: tl.constexpr = (I * WB) // 32
    O: tl.constexpr = (I * WB) % 32
    MASK: tl.constexpr = (1 << WB) - 1
    if O + WB > 32:
        q = ((_pick(K, w0, w1, w2, w3, w4, w5, w6, w7) >> O) | (_pick(K + 1, w0, w1, w2, w3, w4, w5, w6, w7)
                                                                << (32 - O))) & MASK
    elif O + WB <= 23:
        q = _pick(K, w0, w1, w2, w3, w4, w5, w6, w7) & (MASK << O)
    else:
        q = (_pick(K, w0, w1, w2, w3, w4, w5, w6, w7) >> 16) & (MASK << (O - 16))
    return _code_to_float(q, magic)


@triton.jit
def _zero_share(zero_ptr, N_ZERO, pid, n_programs):
    """Program pid of n_programs zeroes its share of the N_ZERO int32 words at zero_ptr."""
    ZBLOCK: tl.constexpr = 1024
    for z0 in range(pid * ZBLOCK, N_ZERO, n_programs * ZBLOCK):
        zo = z0 + tl.arange(0, ZBLOCK)
        tl.store(zero_ptr + zo, tl.zeros([ZBLOCK], dtype=tl.int32), mask=zo < N_ZERO)


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
    _zero_share(zero_ptr, N_ZERO, tl.program_id(1) * tl.num_programs(0) + tl.program_id(0),
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
    in-place decode of SCALE_WB-bit codes, `_chunk_code_scaled`); with SEG > 0 also xs[b, t, g, j] = the sum of
    (unscaled) x over codes g SEG .. g SEG + SEG - 1 of chunk t NCH + j.
    Also zeroes the N_ZERO int32 words at zero_ptr (split K's sums and counters, `_gemv_seg_kernel`, `_dot_kernel`).
    PDL: let the dependent gemv kernel launch at once (it waits for this grid before reading xt / xs)."""
    if PDL:
        gdc_launch_dependents()
    b = tl.program_id(0)
    t = tl.program_id(1)
    _zero_share(zero_ptr, N_ZERO, b * N_TILES + t, tl.num_programs(0) * N_TILES)
    i = tl.arange(0, 32)
    j = tl.arange(0, NCH)
    c = (t * NCH + j[None, :]) * 32 + i[:, None]  # [32, NCH] permuted column
    valid = (c < IN) & (c * 0 + b < M)
    p = tl.load(perm_ptr + c, mask=valid, other=0).to(tl.int32) & 0xFFFF
    v = tl.load(x_ptr + b * stride_xb + p, mask=valid, other=0.0).to(tl.float32)
    base = b * N_TILES + t
    xv = v
    if SCALE_WB > 0:
        xv = v * ((127 - _code_shift(i, SCALE_WB)) << 23).to(tl.float32, bitcast=True)[:, None]  # exactly 2**-e(i)
    tl.store(xt_ptr + base * (32 * NCH) + i[:, None] * NCH + j[None, :], xv.to(xt_ptr.dtype.element_ty))
    if SEG > 0:
        NSEG: tl.constexpr = 32 // SEG
        seg = tl.sum(tl.reshape(v, (NSEG, SEG, NCH)), axis=1)
        tl.store(xs_ptr + base * (NSEG * NCH) + tl.arange(0, NSEG)[:, None] * NCH + j[None, :], seg)


@triton.jit
def _cv(c, RT: tl.constexpr):
    """A per-chunk vector [NCH] as a column of the gemv_seg tile: [1, NCH], or [NCH, 1] when RT (the tile is
    [NCH, BR], rows in thread)."""
    if RT:
        return c[:, None]
    else:
        return c[None, :]


@triton.jit
def _rv(r, RT: tl.constexpr):
    """A per-row vector [BR] as a row of the gemv_seg tile: [BR, 1], or [1, BR] when RT."""
    if RT:
        return r[None, :]
    else:
        return r[:, None]


@triton.jit
def _tile_zeros(NCH: tl.constexpr, BR: tl.constexpr, RT: tl.constexpr):
    """fp32 zeros in the shape of a gemv tile: [NCH, BR] when RT, else [BR, NCH]."""
    if RT:
        return tl.zeros([NCH, BR], dtype=tl.float32)
    else:
        return tl.zeros([BR, NCH], dtype=tl.float32)


@triton.jit
def _split_share(CPS, N_CHUNKS, first, end, SPLIT: tl.constexpr):
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
def _stat_window(q_ptr, R, C, m2, N_WORDS, GROUP: tl.constexpr, NSEG: tl.constexpr, BITS: tl.constexpr):
    """uint64, the tile's shape: the packed BITS-bit statistic codes of rows R, from the first group of chunks C on
    (its NSEG groups, or the one group holding it when GROUP >= 32), in the low bits: one or two word loads per
    chunk instead of one or two per group (`_seg_stat` takes group J of the window). Only when BITS > 0."""
    if GROUP == 0:
        g0 = C * 0
    else:
        g0 = (C * 32) // GROUP
    bit = g0 * BITS
    wp = q_ptr + R * N_WORDS + bit // 32
    off = bit % 32
    lo = tl.load(wp, mask=m2, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
    hi = tl.load(wp + 1, mask=m2 & (off + NSEG * BITS > 32), other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
    return ((hi << 32) | lo) >> off.to(tl.uint64)


@triton.jit
def _stat_windows(s_ptr, z_ptr, R, C, m2, N_SWORDS, N_ZWORDS, GROUP: tl.constexpr, NSEG: tl.constexpr,
                  SB: tl.constexpr, ZB: tl.constexpr):
    """(`_stat_window` of the scale codes, of the zero codes) of a tile; 0 for fp16 statistics."""
    swin = 0
    zwin = 0
    if SB > 0:
        swin = _stat_window(s_ptr, R, C, m2, N_SWORDS, GROUP, NSEG, SB)
    if ZB > 0:
        zwin = _stat_window(z_ptr, R, C, m2, N_ZWORDS, GROUP, NSEG, ZB)
    return swin, zwin


@triton.jit
def _tile_words(t, jj, wp, RM, s_ptr, z_ptr, R, N_CHUNKS, N_SWORDS, N_ZWORDS, WB: tl.constexpr, GROUP: tl.constexpr,
                NSEG: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, RC: tl.constexpr = False):
    """One tile of a [chunks, rows] loop (dot, dot_pairs, gemv_pairs; RC: a [rows, chunks] loop, gemv_pairs under
    Triton >= 3.7): its chunks ch = t + jj, as a column C (RC: a row), the mask m2 of (row, chunk) that exist, the WB
    words of each chunk (wp: word 0 of chunk jj of each row) and the statistic windows (`_stat_windows`)."""
    ch = t + jj
    if RC:
        C = ch[None, :]
    else:
        C = ch[:, None]
    m2 = RM & (C < N_CHUNKS)
    w0, w1, w2, w3, w4, w5, w6, w7 = _chunk_words(wp + t * WB, m2, WB)
    swin, zwin = _stat_windows(s_ptr, z_ptr, R, C, m2, N_SWORDS, N_ZWORDS, GROUP, NSEG, SB, ZB)
    return ch, C, m2, w0, w1, w2, w3, w4, w5, w6, w7, swin, zwin


@triton.jit
def _seg_group(ch, g: tl.constexpr, SEG: tl.constexpr, GROUP: tl.constexpr, N_CHUNKS, N_GROUPS):
    """(group of segment g of chunks ch [NCH], mask: the chunk and group exist; a padded last chunk may reach past
    the last group)."""
    if GROUP == 0:
        grp = ch * 0
    else:
        grp = (ch * 32 + g * SEG) // GROUP
    return grp, (ch < N_CHUNKS) & (grp < N_GROUPS)


@triton.jit
def _fp16_half(v, H: tl.constexpr):
    """fp32 value of half H (0: low, 1: high) of int32-held fp16 pairs."""
    return ((v >> (16 * H)) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _second_level(st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, SHARED2: tl.constexpr):
    """(scale, zero), fp32, of the second-level statistics of groups G of rows R: ONE int32 load of the fp16 pair
    (st_ptr: the [out / beta2, n_groups, 2] fp16 stats viewed as int32), once for the whole row block when SHARED2
    (every row of the block lies in the same beta2 block `blk`; mask gm1 per chunk, else gm)."""
    if SHARED2:
        w = tl.load(st_ptr + blk * N_GROUPS + G, mask=gm1, other=0)
    else:
        w = tl.load(st_ptr + (R // BETA2) * N_GROUPS + G, mask=gm, other=0)
    return _fp16_half(w, 0), _fp16_half(w, 1)


@triton.jit
def _seg_stat(win, J: tl.constexpr, q_ptr, st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, BITS: tl.constexpr,
              SHARED2: tl.constexpr):
    """First-level statistic (fp32, the tile's shape) of groups G (per chunk: the J-th group of the window `win`)
    of rows R: BITS > 0: code J of the window dequantized with its second-level (scale, zero), read as ONE int32
    (st_ptr: the [out / beta2, n_groups, 2] fp16 stats viewed as int32), once for the whole row block when SHARED2
    (every row of the block lies in the same beta2 block `blk`; mask gm1 per chunk); BITS == 0: the fp16 value
    (q_ptr [out, n_groups])."""
    if BITS > 0:
        q = _code_to_float((win >> (J * BITS)).to(tl.uint32) & ((1 << BITS) - 1))
        s2, z2 = _second_level(st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, SHARED2)
        return s2 * (q - z2)
    else:
        return tl.load(q_ptr + R * N_GROUPS + G, mask=gm, other=0.0).to(tl.float32)


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
    (`_stat_window`), their second-level pairs as one int32 each (sst32_ptr / zst32_ptr: int32 views of sst_ptr /
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
    rb, rows0, rows, rmask = _row_block(OUT, BR)
    jj = tl.arange(0, NCH)
    n_words = N_CHUNKS * WB
    NSEG: tl.constexpr = 32 // SEG
    blk = rows0 // BETA2
    acc0 = _tile_zeros(NCH, BR, RT)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    acc4 = acc0
    acc5 = acc0
    acc6 = acc0
    acc7 = acc0
    k0, k_hi, lo, hi = _outlier_range(rowptr_ptr, rows0, OUT, BR)
    c_begin, c_end, k0, k_hi = _split_share(CPS, N_CHUNKS, k0, k_hi, SPLIT)  # (and its share of the outliers)
    o0 = tl.zeros([BR, KO], dtype=tl.float32)  # outlier terms, summed over KO at the end
    o1 = o0
    o2 = o0
    o3 = o0
    o4 = o0
    o5 = o0
    o6 = o0
    o7 = o0
    R = _rv(rows, RT)
    RM = _rv(rmask, RT)
    magic = MAGIC.to(tl.uint32, bitcast=True)  # 0x4B000000, a runtime value (`_code_to_float`)
    wp = codes_ptr + R * n_words + _cv(jj, RT) * WB
    if PREFETCH:
        n0, n1, n2, n3, n4, n5, n6, n7 = _chunk_words(wp + c_begin * WB, RM & _cv(c_begin + jj < c_end, RT), WB)
    if PDL:
        gdc_wait()
    for t in range(c_begin, c_end, NCH):
        ch = t + jj
        C = _cv(ch, RT)
        m2 = RM & (C < N_CHUNKS)
        if PREFETCH:  # the next tile's words are in flight while this one is decoded
            w0, w1, w2, w3, w4, w5, w6, w7 = n0, n1, n2, n3, n4, n5, n6, n7
            n0, n1, n2, n3, n4, n5, n6, n7 = _chunk_words(wp + (t + NCH) * WB, RM & (C + NCH < c_end), WB)
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = _chunk_words(wp + t * WB, m2, WB)
        o0, o1, o2, o3, o4, o5, o6, o7 = _gemv_outliers(
            o0, o1, o2, o3, o4, o5, o6, o7, k0, k_hi, lo, hi, rows0, xt_ptr, stride_xtb, M,
            codes_ptr, n_words, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
            cols_ptr, vals_ptr, perm_ptr, bases_ptr, WB, GROUP, SB, ZB, BB, KO, NCH, True, HAS_BASE,
        )
        k0 += KO
        xt = xt_ptr + t * 32 + jj  # this tile's x: code i of its chunks at xt + i * NCH (fp32, zero padded)
        xs = xs_ptr + t * NSEG + jj  # and its segment sums: segment g at xs + g * NCH
        swin, zwin = _stat_windows(s_ptr, z_ptr, R, C, m2, N_SWORDS, N_ZWORDS, GROUP, NSEG, SB, ZB)
        for g in tl.static_range(NSEG):
            grp, gm1 = _seg_group(ch, g, SEG, GROUP, N_CHUNKS, N_GROUPS)
            G = _cv(grp, RT)
            GM1 = _cv(gm1, RT)
            gm = RM & GM1
            s = _seg_stat(swin, g, s_ptr, sst32_ptr, R, blk, G, gm, GM1, N_GROUPS, BETA2, SB, SHARED2)
            z = _seg_stat(zwin, g, z_ptr, zst32_ptr, R, blk, G, gm, GM1, N_GROUPS, BETA2, ZB, SHARED2)
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
                q = _chunk_code_scaled(g * SEG + ii, WB, w0, w1, w2, w3, w4, w5, w6, w7, magic)
                xo = xt + (g * SEG + ii) * NCH
                p0 += q * _cv(tl.load(xo), RT)
                if BB > 1:
                    p1 += q * _cv(tl.load(xo + stride_xtb), RT)
                if BB > 2:
                    p2 += q * _cv(tl.load(xo + 2 * stride_xtb), RT)
                    p3 += q * _cv(tl.load(xo + 3 * stride_xtb), RT)
                if BB > 4:
                    p4 += q * _cv(tl.load(xo + 4 * stride_xtb), RT)
                    p5 += q * _cv(tl.load(xo + 5 * stride_xtb), RT)
                    p6 += q * _cv(tl.load(xo + 6 * stride_xtb), RT)
                    p7 += q * _cv(tl.load(xo + 7 * stride_xtb), RT)
            acc0 += s * p0 + sz * _cv(tl.load(xs + g * NCH), RT)
            if BB > 1:
                acc1 += s * p1 + sz * _cv(tl.load(xs + stride_xsb + g * NCH), RT)
            if BB > 2:
                acc2 += s * p2 + sz * _cv(tl.load(xs + 2 * stride_xsb + g * NCH), RT)
                acc3 += s * p3 + sz * _cv(tl.load(xs + 3 * stride_xsb + g * NCH), RT)
            if BB > 4:
                acc4 += s * p4 + sz * _cv(tl.load(xs + 4 * stride_xsb + g * NCH), RT)
                acc5 += s * p5 + sz * _cv(tl.load(xs + 5 * stride_xsb + g * NCH), RT)
                acc6 += s * p6 + sz * _cv(tl.load(xs + 6 * stride_xsb + g * NCH), RT)
                acc7 += s * p7 + sz * _cv(tl.load(xs + 7 * stride_xsb + g * NCH), RT)
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
        _split_add(acc0, o0, ws_ptr, rows, rmask, OUT, 0, M)
        if BB > 1:
            _split_add(acc1, o1, ws_ptr, rows, rmask, OUT, 1, M)
        if BB > 2:
            _split_add(acc2, o2, ws_ptr, rows, rmask, OUT, 2, M)
            _split_add(acc3, o3, ws_ptr, rows, rmask, OUT, 3, M)
        if BB > 4:
            _split_add(acc4, o4, ws_ptr, rows, rmask, OUT, 4, M)
            _split_add(acc5, o5, ws_ptr, rows, rmask, OUT, 5, M)
            _split_add(acc6, o6, ws_ptr, rows, rmask, OUT, 6, M)
            _split_add(acc7, o7, ws_ptr, rows, rmask, OUT, 7, M)
        _split_last_store(ws_ptr, cnt_ptr, rb, rows, rmask, OUT, y_ptr, stride_yb, bias_ptr, M, HAS_BIAS, BB)
    else:
        _gemv_store(acc0, acc1, acc2, acc3, o0, o1, o2, o3, y_ptr, stride_yb, bias_ptr, rows, rmask, M, HAS_BIAS,
                    BB)
        if BB > 4:
            _gemv_store(acc4, acc5, acc6, acc7, o4, o5, o6, o7, y_ptr + 4 * stride_yb, stride_yb, bias_ptr, rows,
                        rmask, M - 4, HAS_BIAS, 4)


@triton.jit
def _split_add(acc, o, ws_ptr, rows, rmask, OUT, B: tl.constexpr, M):
    """ws[B, rows] += this program's partial sums of row B of x (split K)."""
    tl.atomic_add(ws_ptr + B * OUT + rows, tl.sum(acc, axis=1) + tl.sum(o, axis=1), mask=rmask & (rows * 0 + B < M),
                  sem="relaxed")


@triton.jit
def _row_block(OUT, BR: tl.constexpr):
    """(row block = program_id(0), its first row, its BR rows, which of them exist) of a gemv program."""
    rb = tl.program_id(0)
    rows = rb * BR + tl.arange(0, BR)
    return rb, rb * BR, rows, rows < OUT


@triton.jit
def _split_last_store(ws_ptr, cnt_ptr, rb, rows, rmask, OUT, y_ptr, stride_yb, bias_ptr, M, HAS_BIAS: tl.constexpr,
                      BB: tl.constexpr):
    """Split K's end, after a program has added its partial sums (`_split_add`): it counts itself in cnt[rb], and
    the row block's last program writes y[b, rows] = ws[b, rows] (+ bias) for the BB rows b of x."""
    tl.debug_barrier()  # every thread's partial sums are in before the block is counted
    if tl.atomic_add(cnt_ptr + rb, 1, sem="acq_rel") == tl.num_programs(1) - 1:  # the row block's last program
        zero = tl.zeros([rows.shape[0], 1], dtype=tl.float32)
        B4: tl.constexpr = min(4, BB)
        s1 = zero  # (ws holds BB rows of x: no load past them)
        s2 = zero
        s3 = zero
        if BB > 1:
            s1 = _split_sum(ws_ptr, rows, rmask, OUT, 1)
        if BB > 2:
            s2 = _split_sum(ws_ptr, rows, rmask, OUT, 2)
            s3 = _split_sum(ws_ptr, rows, rmask, OUT, 3)
        _gemv_store(_split_sum(ws_ptr, rows, rmask, OUT, 0), s1, s2, s3,
                    zero, zero, zero, zero, y_ptr, stride_yb, bias_ptr, rows, rmask, M, HAS_BIAS, B4)
        if BB > 4:  # rows 4.. of x (M > 4 whenever BB = 8)
            _gemv_store(_split_sum(ws_ptr, rows, rmask, OUT, 4), _split_sum(ws_ptr, rows, rmask, OUT, 5),
                        _split_sum(ws_ptr, rows, rmask, OUT, 6), _split_sum(ws_ptr, rows, rmask, OUT, 7),
                        zero, zero, zero, zero, y_ptr + 4 * stride_yb, stride_yb, bias_ptr, rows, rmask, M - 4,
                        HAS_BIAS, 4)


@triton.jit
def _split_sum(ws_ptr, rows, rmask, OUT, B: tl.constexpr):
    """[BR, 1]: ws[B, rows] as summed by every program of the row block (read from L2: written by atomics)."""
    return tl.load(ws_ptr + B * OUT + rows, mask=rmask, other=0.0, cache_modifier=".cg")[:, None]


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
    k0, k_hi, lo, hi = _outlier_range(rowptr_ptr, rows0, OUT, BR)
    o0 = tl.zeros([BR, KO], dtype=tl.float32)  # outlier terms, summed over KO at the end
    o1 = o0
    o2 = o0
    o3 = o0
    for t in range(0, N_CHUNKS, NCH):
        ch = t + jj
        cm = ch < N_CHUNKS
        m2 = rmask[:, None] & cm[None, :]
        w0, w1, w2, w3, w4, w5, w6, w7 = _chunk_words(
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
                s, z = _group_stats(i, ch, rows, m2, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS,
                                    BETA2, GROUP, SB, ZB)
                sz = s * z
            w = s * _code_to_float(_chunk_code(i, WB, w0, w1, w2, w3, w4, w5, w6, w7)) - sz  # [BR, NCH]
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
    _gemv_store(acc0, acc1, acc2, acc3, o0, o1, o2, o3, y_ptr, stride_yb, bias_ptr, rows, rmask, M, HAS_BIAS, BB)


# ---------------------------------------------------------------------------------------------------- dot
@triton.jit
def _dot_w(I: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, DT: tl.constexpr, one, mask):
    """The weight of code I of each chunk, rounded to DT: the `dot` kernel's A operand. Its outlier kernel rounds
    the same fp32 value (`_base_weight`) the same way, so value - base cancels it exactly."""
    return _top_weight(_chunk_code_top(I, WB, w0, w1, w2, w3, w4, w5, w6, w7, one, mask), s8, c).to(DT)


@triton.jit
def _dot_pair(I: tl.constexpr, H: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7,
              DT: tl.constexpr, one, mask):
    """Codes I and I + H side by side ([..., 2]: `_dot_seg_tile`'s first join level)."""
    return tl.join(_dot_w(I, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask),
                   _dot_w(I + H, s8, c, WB, w0, w1, w2, w3, w4, w5, w6, w7, DT, one, mask))


@triton.jit
def _dot_seg_tile(B: tl.constexpr, SEG: tl.constexpr, s8, c, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7,
                  DT: tl.constexpr, one, mask):
    """[BN, NCH * SEG] (s8 = s 2**WB, c = -s z - s8 [NCH, BN]: `_top_weight`): the weights of codes B .. B + SEG - 1 of
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
    rows, bb, blk, R, RM, c_begin, c_end = _dot_tile(OUT, N_CHUNKS, BETA2, CPS, BN, BM)
    jj = tl.arange(0, NCH)
    kk = tl.arange(0, NCH * SEG)
    n_words = N_CHUNKS * WB
    NSEG: tl.constexpr = 32 // SEG
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    one = ONE.to(tl.uint32, bitcast=True)  # the bits of 1.0, a runtime value (`_chunk_code_top`)
    mask = CODE_MASK.to(tl.uint32, bitcast=True)  # (2**WB - 1) << (23 - WB), a runtime value too
    xcol = xk_ptr + kk[:, None] * stride_xk + bb[None, :]  # x's [NCH SEG, BM] slice at column 0
    wp = codes_ptr + R * n_words + jj[:, None] * WB
    for t in range(c_begin, c_end, NCH):
        ch, _C, m2, w0, w1, w2, w3, w4, w5, w6, w7, swin, zwin = _tile_words(
            t, jj, wp, RM, s_ptr, z_ptr, R, N_CHUNKS, N_SWORDS, N_ZWORDS, WB, GROUP, NSEG, SB, ZB)
        for g in tl.static_range(NSEG):
            grp, gm1 = _seg_group(ch, g, SEG, GROUP, N_CHUNKS, N_GROUPS)
            gm1 = gm1[:, None]
            G = grp[:, None]
            s = _seg_stat(swin, g, s_ptr, sst32_ptr, R, blk, G, m2 & gm1, gm1, N_GROUPS, BETA2, SB, SHARED2)
            z = _seg_stat(zwin, g, z_ptr, zst32_ptr, R, blk, G, m2 & gm1, gm1, N_GROUPS, BETA2, ZB, SHARED2)
            s8 = s * (1 << WB)
            a = _dot_seg_tile(g * SEG, SEG, s8, -s * z - s8, WB, w0, w1, w2, w3, w4, w5, w6, w7,
                              xk_ptr.dtype.element_ty, one, mask)  # [BN, NCH SEG] (`_base_weight`'s arithmetic)
            xb = tl.load(xcol + (t * 32 + g * NCH * SEG) * stride_xk)  # [K, BM]
            if IEEE:
                acc = tl.dot(a, xb, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, xb, acc)
    _dot_store(acc, ws_ptr, rows, bb, M, OUT, SPLIT)


@triton.jit
def _dot_tile(OUT, N_CHUNKS, BETA2, CPS, BN: tl.constexpr, BM: tl.constexpr):
    """The dense dot kernels' program: (rows [BN], rows of x bb [BM], the rows' beta2 block, rows as a row R and its
    mask RM of a [chunks, rows] tile, first and end chunk of its share (program_id 1; split K))."""
    rows0 = tl.program_id(0) * BN
    rows = rows0 + tl.arange(0, BN)
    bb = tl.program_id(2) * BM + tl.arange(0, BM)
    c_begin = tl.program_id(1) * CPS
    c_end = tl.minimum(c_begin + CPS, N_CHUNKS)
    return rows, bb, rows0 // BETA2, rows[None, :], (rows < OUT)[None, :], c_begin, c_end


@triton.jit
def _dot_store(acc, ws_ptr, rows, bb, M, OUT, SPLIT: tl.constexpr):
    """ws[b, rows] (+)= acc [BN, BM] transposed (SPLIT: fp32 atomics; the x kernel zeroed ws)."""
    out = tl.trans(acc)  # [BM, BN]
    yp = ws_ptr + bb[:, None] * OUT + rows[None, :]
    wm = (bb < M)[:, None] & (rows < OUT)[None, :]
    if SPLIT:
        tl.atomic_add(yp, out, mask=wm, sem="relaxed")
    else:
        tl.store(yp, out, mask=wm)


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
        col, v, base = _outlier_base_at(k, km, rows[:, None], codes_ptr, N_CHUNKS * WB, s_ptr, sst_ptr, z_ptr,
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


@triton.jit
def _outlier_base_kernel(
    base_ptr, codes_ptr, s_ptr, sst_ptr, z_ptr, zst_ptr, rowptr_ptr, cols_ptr, vals_ptr,
    OUT, N_CHUNKS, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr, BR: tl.constexpr, KO: tl.constexpr,
):
    """base[k] (fp32) = the base weight at outlier k (`_outlier_base_at` decoding it from the packed tensors), for
    the outliers of rows BR * pid ...: `outlier_bases`."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < OUT
    lo = tl.load(rowptr_ptr + rows, mask=rmask, other=0)
    hi = tl.load(rowptr_ptr + rows + 1, mask=rmask, other=0)
    kk = tl.arange(0, KO)
    for step in range(0, tl.max(hi - lo, axis=0), KO):
        k = lo[:, None] + step + kk[None, :]  # [BR, KO]
        km = k < hi[:, None]
        _, _, base = _outlier_base_at(k, km, rows[:, None], codes_ptr, N_CHUNKS * WB, s_ptr, sst_ptr, z_ptr, zst_ptr,
                                      N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, base_ptr, WB, GROUP,
                                      SB, ZB, False)
        tl.store(base_ptr + k, base, mask=km)


# ---------------------------------------------------------------------------------------------------- dequantize
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
    w0, w1, w2, w3, w4, w5, w6, w7 = _chunk_words(codes_ptr + rows[:, None] * (N_CHUNKS * WB) + ch[None, :] * WB,
                                                  m2, WB)
    for i in tl.static_range(32):
        if i == 0 or (GROUP > 0 and GROUP < 32 and i % GROUP == 0):
            s, z = _group_stats(i, ch, rows, m2, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS,
                                BETA2, GROUP, SB, ZB)
        w = s * (_code_to_float(_chunk_code(i, WB, w0, w1, w2, w3, w4, w5, w6, w7)) - z)
        w = tl.where((ch * 32 + i < IN)[None, :], w, 0.0)
        tl.store(w_ptr + rows[:, None] * (N_CHUNKS * 32) + (i * N_CHUNKS + ch)[None, :],
                 w.to(w_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _scatter_outliers_kernel(w_ptr, rowptr_ptr, cols_ptr, vals_ptr, OUT, N_CHUNKS, BR: tl.constexpr,
                             KO: tl.constexpr):
    """W_chunked[row, position of col] = value for the outliers of rows BR * pid .. (after `_dequantize_kernel`)."""
    rows0 = tl.program_id(0) * BR
    k0, k_hi, lo, hi = _outlier_range(rowptr_ptr, rows0, OUT, BR)
    while k0 < k_hi:
        k = k0 + tl.arange(0, KO)
        km = k < k_hi
        row = rows0 + _outlier_rows(k, lo, hi)[1]
        col = tl.load(cols_ptr + k, mask=km, other=0).to(tl.int32) & 0xFFFF
        v = tl.load(vals_ptr + k, mask=km, other=0.0)
        tl.store(w_ptr + row * (N_CHUNKS * 32) + (col % 32) * N_CHUNKS + col // 32, v.to(w_ptr.dtype.element_ty),
                 mask=km)
        k0 += KO


# ---------------------------------------------------------------------------------------------------- launchers
# Tensors are passed one by one, in this order (the custom ops in spqrkit.kernels.ops have the same signature):
#   codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm
# where `scale` is `scale_codes` when scale_bits > 0 (then `scale_stats` is set) and the fp16 `scale` otherwise;
# the same for zero. Layout integers: out_features, wbits, group (beta1, 0 = one group per row), beta2 (0 = none),
# scale_bits and zero_bits (0 = fp16 statistics); in_features is x.shape[-1].

def _layout_args(in_features: int, out_features: int, wbits: int, group: int, scale_bits: int, zero_bits: int):
    n_chunks = -(-in_features // 32)
    n_groups = 1 if group == 0 else -(-in_features // group)
    n_stat_chunks = -(-n_groups // 32)
    return n_chunks, n_groups, n_stat_chunks * max(scale_bits, 1), n_stat_chunks * max(zero_bits, 1)


def unsupported_reason(in_features: int, wbits: int, group: int, kernel: str) -> str | None:
    """Why `kernel` cannot run this layout, or None. Groups must be a power of two (or one per row)."""
    if kernel not in ("gemv", "gemv_xc", "gemv_seg", "gemv_pairs", "dot", "dot_pairs", "dequantize"):
        return f"unknown kernel {kernel!r}"
    if group and group & (group - 1):
        return f"group size {group} is not a power of two"
    if not 1 <= wbits <= 8:
        return f"wbits {wbits} outside 1..8"
    if kernel == "dot" and 0 < group < 8:
        return f"group size {group} < 8 (the dot kernel's operand holds one group of 8, 16 or 32 codes per chunk)"
    if kernel in ("gemv_pairs", "dot_pairs"):
        from .pair_schedule import pair_plan

        if pair_plan(wbits, group) is None:
            return (f"no fp16-pair schedule for {wbits}-bit codes in groups of {group} ({kernel}: 2..4 bits, "
                    "groups of 8, 16, >= 32 or one per row)")
    return None


def _stat_ptrs(stat, stats):
    return stat, (stats if stats is not None else stat)


FLOAT_2_23_BITS = 0x4B000000  # the MAGIC argument of the decode kernels (`_code_to_float`)
FLOAT_ONE_BITS = 0x3F800000  # the ONE argument of the dot kernel (`_chunk_code_top`)
GEMV_MAX_BATCH = 4  # rows of x the gemv / gemv_xc kernels accumulate (one register tile each)
GEMV_SEG_MAX_BATCH = 8  # and gemv_seg
DOT_PAIRS_CHUNKS = 8  # chunks per tile of dot_pairs (`dot_stages` with pairs)


@functools.cache
def chunk_major_tile() -> bool:
    """The tile orientation of gemv_seg and gemv_pairs (their RT) in which the installed Triton gives each thread one
    chunk of every row of its block, the packed words and x in ONE layout: [chunks, rows] (True) up to Triton 3.6,
    [rows, chunks] (False) from 3.7 on. Offline sm_90a SASS of the main loops (benchmarks/sass_report.py, spqr-w3):
    Triton 3.6 gemv_pairs 671 instructions and no barrier as [chunks, rows], 824 and 23 barriers as [rows, chunks];
    Triton 3.9 790 and 23 barriers against 651 and none; gemv_seg 445 against 530 under 3.6, 522 against 457 under
    3.9. Timed on the GPU with Triton 3.6 (the GPU machine's) only."""
    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    return (major, minor) <= (3, 6)


def rows_per_launch(kernel: str) -> int | None:
    """The most rows of x one launch of `kernel` takes (None: any number)."""
    from .gemv_pairs import PAIRS_MAX_ROWS  # (gemv_pairs imports this module)

    return {"gemv": GEMV_MAX_BATCH, "gemv_xc": GEMV_MAX_BATCH, "gemv_seg": GEMV_SEG_MAX_BATCH,
            "gemv_pairs": PAIRS_MAX_ROWS}.get(kernel)


@functools.cache
def _has_pdl(device) -> bool:
    """Programmatic dependent launch: compute capability 9 (Hopper) and newer, compiled (not the interpreter)."""
    import torch

    return (device.type == "cuda" and gdc_wait is not None and os.environ.get("TRITON_INTERPRET") != "1"
            and torch.cuda.get_device_capability(device)[0] >= 9)
# gemv_seg's default split K: one program per row block and SPLIT_CHUNKS chunks (16384 columns). H200, spqr-w3, batch
# 1, 2026-11-25: two programs per row block at 8192 x 28672 took 174.5 us against 256.6 for one; at the shapes with
# 4096..11008 columns splitting cost 0.2..7 us (4096^2: 20.4 against 17.2 for one program per row block).
SPLIT_CHUNKS = 512

def split_plan(n_chunks: int, nch: int, split, n_sums: int, n_blocks: int, device):
    """Split K for the gemv kernels: (programs per row block, chunks per program, ws, cnt, zero). `split` None: one
    program per SPLIT_CHUNKS chunks; at most one per tile of `nch` chunks. With more than one, `zero` is an int32
    buffer the x kernel zeroes, holding the fp32 sums ws [n_sums] and one counter per row block cnt [n_blocks];
    else all three are None."""
    import torch

    n_tiles = triton.cdiv(n_chunks, nch)
    if split is None:
        split = triton.cdiv(n_chunks, SPLIT_CHUNKS)
    split = max(1, min(split, n_tiles))
    cps = triton.cdiv(n_tiles, split) * nch  # chunks per program
    split = triton.cdiv(n_chunks, cps)
    if split == 1:
        return 1, cps, None, None, None
    zero = torch.empty(n_sums + n_blocks, dtype=torch.int32, device=device)
    return split, cps, zero[:n_sums].view(torch.float32), zero[n_sums:], zero


def _int32_pairs(stats, bits: int):
    """The [..., n_groups, 2] fp16 second-level statistics viewed as int32 (scale in the low half, zero in the
    high one) for `_seg_stat`; fp16 first-level statistics (bits == 0) unchanged."""
    import torch

    return stats.view(torch.int32) if bits > 0 else stats


def gemv(x, codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias,
         out_features, wbits, group, beta2, scale_bits, zero_bits, *, block_rows=None, chunks=None, num_warps=None,
         num_stages=None, x_chunked=False, segments=False, prefetch=False, pdl=None, outliers_per_step=64,
         split=None, rows_in_thread=None, bases=None):
    """y [M, out] = x [M, in] W^T (+ bias) for small M, on CUDA cores. `x_chunked`: first gather x (permuted, fp32)
    into tiles of the main kernel's chunks with one small kernel (`gather_x_tiles`), so that the main loop reads
    it contiguously, unmasked, at compile-time offsets. `segments` ("gemv_seg"): x also pre-scaled per code
    position, statistics applied per segment (`_gemv_seg_kernel`); with it, `prefetch` (next tile's words loaded
    ahead; off: measured slower) and `pdl` (the main kernel launched as a programmatic dependent of the x kernel;
    None = on where supported (`_has_pdl`): on the H200 it saved 0.6-2 us per call on five LLaMA-2 shapes and cost
    1.8 us on 8192x28672) are tuning options. `outliers_per_step` (KO, a power of two): outliers handled per tile;
    32 * num_warps keeps every row of the outlier tile in one thread, so its row lookup needs no cross-warp
    reduction (benchmarks/sass_report.py counts the barriers).
    `split` (gemv_seg): programs per row block, each over its share of the tiles (split K, fp32 partial sums added
    atomically; so the summation order, not the result beyond fp32 rounding, varies from run to run); None: one
    per SPLIT_CHUNKS chunks of a row, 1 = no split. `rows_in_thread` (gemv_seg): the tile is [chunks, rows] (True)
    or [rows, chunks] (False); None: `chunk_major_tile()`, the orientation in which the installed Triton gives each
    thread one chunk of several rows, so that it loads each x value once for them. `bases`
    (gemv_seg): the outliers' base weights (`outlier_bases`), so that an outlier costs its column, value and base
    instead of decoding its code and statistics again."""
    import torch

    M, n_in = x.shape
    max_rows = rows_per_launch("gemv_seg" if segments else "gemv")
    if M > max_rows:
        raise ValueError(f"this gemv kernel takes at most {max_rows} rows of x, got {M}")
    n_chunks, n_groups, n_sw, n_zw = _layout_args(n_in, out_features, wbits, group, scale_bits, zero_bits)
    y = torch.empty(M, out_features, dtype=x.dtype, device=x.device)
    BB = max(1, triton.next_power_of_2(M))
    # Tiles (benchmarks/kernel_speed.py, spqr-w3, H200, 2026-11-25). gemv_seg, rows in thread, 2 warps. One row of
    # x: 4 rows x 32 chunks (13.5 us at 4096^2; 4 x 64 14.6, 2 x 32 16.5, 8 x 32 17.4), 4 x 64 for layers of 2**27
    # weights and more (97.5 us at 28672x8192 against 103.9 for 4 x 32; 106.3 against 111.5 at 8192x28672, but
    # 30.2 against 27.4 at 4096x11008). 3-4 rows of x: 8 x 32 below 8192 columns (23.1 us at 4096^2; 4 x 64 24.7,
    # 4 x 32 26.2), 4 x 64 from 8192 on (179.7 us at 28672x8192 against 202.0 for 4 x 32, 221.5 for 8 x 32).
    # gemv_xc (H100): 4 x 32 / 2 warps at one row; at 3-4 rows of x, 8 x 16 tiles with 4 warps avoid spills.
    if segments:
        if BB <= 2:  # (H200, 2026-11-26, with the one-LOP3 decode: 4 x 64 24.4 us at 11008x4096 against 25.3)
            br, nch = (4, 64) if n_in * out_features >= 2 ** 27 or out_features >= 8192 else (4, 32)
        elif BB == 4:
            br, nch = (4, 64) if n_chunks >= 256 else (8, 32)
        else:  # 5-8 rows of x: 4 x 64 (254 registers) took 31.6 us at 4096^2 against 41.5 for 4 x 32
            br, nch = 4, 64
        BR, NCH, num_warps = block_rows or br, chunks or nch, num_warps or 2
    else:
        BR = block_rows or (4 if BB <= 2 else 8)
        NCH = chunks or (32 if BB <= 2 else 16)
        num_warps = num_warps or (2 if BB <= 2 else 4)
    grid = (triton.cdiv(out_features, BR),)
    sp, ssp = _stat_ptrs(scale, scale_stats)
    zp, zsp = _stat_ptrs(zero, zero_stats)
    if segments:  # "gemv_seg"
        pdl = _has_pdl(x.device) if pdl is None else pdl and _has_pdl(x.device)
        split, cps, ws, cnt, zero = split_plan(n_chunks, NCH, split, BB * out_features, grid[0], x.device)
        xt, xs = gather_x_tiles(x, perm, NCH, BB, scale_wbits=wbits, segment=_segment(group), pdl=pdl, zero=zero)
        shared2 = beta2 > 0 and beta2 % BR == 0
        _gemv_seg_kernel[(grid[0], split)](
            xt, xs, xt.stride(0), xs.stride(0), y, y.stride(0), ws if ws is not None else xt,
            cnt if cnt is not None else perm,
            codes, sp, ssp, zp, zsp, _int32_pairs(ssp, scale_bits), _int32_pairs(zsp, zero_bits), row_ptr, cols, vals,
            perm, bases if bases is not None else vals, bias if bias is not None else x,
            M, out_features, n_in, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1), cps, FLOAT_2_23_BITS,
            WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, HAS_BIAS=bias is not None, HAS_BASE=bases is not None,
            BB=BB, BR=BR, NCH=NCH, KO=outliers_per_step, SEG=_segment(group), SPLIT=split > 1, SHARED2=shared2,
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


def dot(x, codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias,
        out_features, wbits, group, beta2, scale_bits, zero_bits, **options):
    """y [M, out] = x [M, in] W^T (+ bias) on the tensor cores: the three launches of `dot_stages`, in order."""
    stages, y = dot_stages(x, codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias,
                           out_features, wbits, group, beta2, scale_bits, zero_bits, **options)
    for _, launch in stages:
        launch()
    return y


def dot_stages(x, codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias,
               out_features, wbits, group, beta2, scale_bits, zero_bits, *, block_m=None, block_n=None, chunks=None,
               split=None, num_warps=None, num_stages=None, outlier_rows=4, outliers_per_step=None, pdl=None,
               bases=None, programs_per_sm=None, pairs=False, max_registers=None):
    """The `dot` kernel's launches, ([(name, launch)], y): y is filled when they run in order (benchmarks/dot_parts.py
    times each alone). "gather x": x gathered once, transposed, into segment-major tiles in its own dtype
    (`gather_x_cols`, which also zeroes the fp32 output when split); "dense": `_dot_kernel`, [block_n rows x block_m
    rows of x] tiles of `chunks` chunks, over `split` shares of the chunks; "outliers": the outliers, bias and cast
    (`_dot_outliers_kernel`, `outlier_rows` rows and `outliers_per_step` outliers per row a step; None: 32 for up
    to 16 rows of x, else 16, which keeps its [rows, outliers, rows of x] terms in registers). `split` None:
    enough shares for about `programs_per_sm` programs per SM (None: 4 below 128 tiles of rows, else 8, and 12 for
    layers of 2**27 weights and more: a large grid runs several waves of programs, and finer shares even out its
    last one). `pdl` (None: where supported, `_has_pdl`): the dense and outlier kernels launched as programmatic
    dependents of the kernel before them.
    `bases`: the outliers' base weights (`outlier_bases`; None: decoded again per outlier). `pairs`: the dense
    kernel is `dot_pairs._dot_pairs_kernel` (fp16 x; its operand decoded in fp16 pairs, x in the pair order, two
    segments of 16 per chunk); `chunks` then defaults to DOT_PAIRS_CHUNKS. `max_registers`: a cap on dot_pairs' dense
    kernel's registers per thread (ptxas).

    Defaults from H200 sweeps (2026-11-26, spqr-w3, the whole call, `kernel_speed.py --tune`; JSON in
    benchmarks/results): 8 chunks, 128 registers and four programs per SM (16 chunks: 255 registers, two per SM;
    18.0 / 44.2 / 168.0 us at 4096^2 / 11008x4096 / 28672x8192 and 8 rows of x against 18.8 / 45.2 / 181.1,
    tune_dot_b8_nch8_h200.json); 12 programs per SM on layers of 2**27 weights and more (H100, 2026-11-26,
    28672x8192 / 8192x28672 at 4, 8, 16, 32 rows of x, dot_pairs: 139.0 / 141.8 / 153.3 / 187.4 and 138.7 / 139.4
    / 151.5 / 200.4 us against 142.3 / 146.2 / 159.3 / 192.4 and 141.7 / 149.8 / 156.7 / 199.4 with 8; dot at 64
    rows 270.9 and 277.7 against 283.4 and 282.2; on 11008x4096 and 8192^2, 8 stayed best by 1-5%,
    tune_dot_programs_per_sm_h100.json; the whole split landscape: dot_pairs_splits_h100.json; in the full
    kernel_speed.py run after the change, dot_pairs at 4 / 8 / 16 rows 139.5 / 142.4 / 156.1 and 138.8 / 141.0 /
    154.2 against 139.9 / 144.5 / 156.9 and 138.9 / 146.6 / 154.3 in the run before: 0-4%,
    kernel_speed_pps12_h100.json); outliers 4 rows x 32 a step (16.7 / 39.1 / 156.1 against 18.0 / 43.8 / 168.0
    with 1 x 64 at 8 rows, tune_dot_b8_b16_h200.json; at 64 rows 4 x 16: 29.5 / 285.2 / 293.0 us at 4096^2 /
    28672x8192 / 8192x28672 against 31.5 / 316.0 / 312.6 with 4 x 32, tune_dot_b32_b64_h200.json); the split (with
    4 programs per SM against the best split at 8 rows: 34.5 / 33.7 us at 4096x11008 (64 tiles), 37.3 / 34.7
    at 11008x4096 (172), 151.3 / 140.8 at 28672x8192 (448), 164.9 / 146.3 at 8192x28672 (128),
    dot_splits_h200.json). Slower or no faster: the next tile's words and windows prefetched into registers (199
    registers, two programs per SM: 19.9 against 16.2 us at 4096^2, tune_dot_b8_top_decode_h200.json), two or
    three software-pipelining stages (2.1-3.7x slower: the words then come by cp.async through shared memory,
    tune_dot_b8_stages_h200.json), 8 warps, 128-row tiles, a cap of 128 or 96 registers, and the
    outliers summed in the dense kernel's programs (each program's share after its dense loop, the last share
    storing y: 23.3 against 18.8 us for the separate kernel at 4096^2 in one run,
    tune_dot_b8_fused_outliers_h200.json), and the outlier kernel launched BEFORE the dense one (writing ws =
    outlier sums + bias, the dense kernel's last program per tile storing y, so that the outliers overlap the dense
    loop; H100, 2026-11-26, dot_pairs at 8 rows: 20.0 / 40.9 / 38.7 / 52.5 / 158.6 / 151.6 us on the six LLaMA-2
    shapes against 15.6 / 33.0 / 32.5 / 44.5 / 142.4 / 145.5 in this order, slower without PDL too, and slower
    still with the outlier kernel as a persistent grid of one or two programs per SM,
    tune_dot_pairs_outliers_first_b8_h100.json). dot_pairs' next tile's words and windows and / or x slices
    loaded one iteration ahead (158-189 registers): slower on every shape at 4, 8 and 16 rows (H100, 2026-11-26:
    17.3 / 17.5 / 19.7 us against 15.7 at 4096^2 and 8 rows, tune_dot_pairs_prefetch_h100.json)."""
    import torch

    M, n_in = x.shape
    n_chunks, n_groups, n_sw, n_zw = _layout_args(n_in, out_features, wbits, group, scale_bits, zero_bits)
    y = torch.empty(M, out_features, dtype=x.dtype, device=x.device)
    BM = block_m or min(64, max(16, triton.next_power_of_2(M)))
    BN = block_n or 64
    NCH = chunks or (DOT_PAIRS_CHUNKS if pairs else 8)
    SEG = 16 if pairs else _segment(group)  # (dot_pairs: two segments of 8 pairs per chunk, any group)
    n_tiles = triton.cdiv(n_chunks, NCH)
    row_blocks, m_blocks = triton.cdiv(out_features, BN), triton.cdiv(M, BM)
    if split is None:  # (programs_per_sm None: 4 for fewer than 128 tiles, else 8; 12 from 2**27 weights)
        pps = programs_per_sm or (4 if row_blocks * m_blocks < 128 else 12 if n_in * out_features >= 2 ** 27 else 8)
        split = triton.cdiv(pps * _sm_count(x.device), row_blocks * m_blocks)
    split = max(1, min(split, n_tiles))
    cps = triton.cdiv(n_tiles, split) * NCH  # chunks per program
    split = triton.cdiv(n_chunks, cps)
    zero_ws = torch.empty(M * out_features, dtype=torch.int32, device=x.device) if split > 1 else None
    ws = zero_ws.view(torch.float32) if split > 1 else torch.empty(M * out_features, dtype=torch.float32,
                                                                   device=x.device)
    pdl = _has_pdl(x.device) if pdl is None else pdl and _has_pdl(x.device)
    xk = torch.empty(n_tiles * 32 * NCH, m_blocks * BM, dtype=x.dtype, device=x.device)  # column-major x
    sp, ssp = _stat_ptrs(scale, scale_stats)
    zp, zsp = _stat_ptrs(zero, zero_stats)

    order = inv = None
    if pairs:
        from . import dot_pairs
        from .pair_schedule import pair_plan

        order, inv = dot_pairs.pair_column_orders(wbits, group, x.device)
        plan, types = pair_plan(wbits, group)

    def gather():
        gather_x_cols(x, perm, NCH, SEG, m_blocks * BM, out=xk, zero=zero_ws, pdl=pdl, order=order)

    def dense_pairs():
        dot_pairs._dot_pairs_kernel[(row_blocks, split, m_blocks)](
            xk, xk.stride(0), ws, codes, sp, zp, _int32_pairs(ssp, scale_bits), _int32_pairs(zsp, zero_bits),
            M, out_features, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1), cps, 0, FLOAT_ONE_BITS,
            WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, PLAN=plan, TYPES=types, BM=BM, BN=BN, NCH=NCH,
            SEG=_segment(group), SHARED2=beta2 > 0 and beta2 % BN == 0, SPLIT=split > 1,
            ASM=os.environ.get("TRITON_INTERPRET") != "1", PDL=pdl,
            num_warps=num_warps or 4, num_stages=num_stages or 1, **({"launch_pdl": True} if pdl else {}),
            **({"maxnreg": max_registers} if max_registers else {}),
        )

    def dense():
        _dot_kernel[(row_blocks, split, m_blocks)](
            xk, xk.stride(0), ws, codes, sp, zp, _int32_pairs(ssp, scale_bits), _int32_pairs(zsp, zero_bits),
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


def outlier_bases(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, in_features, out_features, wbits,
                  group, beta2, scale_bits, zero_bits):
    """fp32 [nnz]: the base weight s q - s z (`_base_weight`: the dot operand's arithmetic) at each outlier's position,
    decoded from the packed tensors: a derived tensor (not stored in checkpoints; 4 bytes per outlier) that
    `gemv(segments=True)` and `dot` take as `bases`, so that their outlier steps read (column, value, base) instead of
    decoding the outlier's code and two statistics again (~12 dependent loads). `SpQRLinear` computes it once per layer
    and device."""
    import torch

    n_chunks, n_groups, n_sw, n_zw = _layout_args(in_features, out_features, wbits, group, scale_bits, zero_bits)
    base = torch.empty(vals.shape[0], dtype=torch.float32, device=vals.device)
    if base.numel():
        sp, ssp = _stat_ptrs(scale, scale_stats)
        zp, zsp = _stat_ptrs(zero, zero_stats)
        BR = 4
        _outlier_base_kernel[(triton.cdiv(out_features, BR),)](
            base, codes, sp, ssp, zp, zsp, row_ptr, cols, vals,
            out_features, n_chunks, n_groups, n_sw, n_zw, max(beta2, 1),
            WB=wbits, GROUP=group, SB=scale_bits, ZB=zero_bits, BR=BR, KO=32, num_warps=4,
        )
    return base


@functools.cache
def _sm_count(device) -> int:
    import torch

    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def dequantize_chunked(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals,
                       in_features, out_features, wbits, group, beta2, scale_bits, zero_bits, dtype):
    """W_chunked [out, ceil(in / 32) * 32] in `dtype`: the weight with column i * n_chunks + j holding permuted
    column 32 j + i (zero past `in`); gather_x_chunked(x, perm) @ W_chunked.T = x @ W.T."""
    import torch

    n_chunks, n_groups, n_sw, n_zw = _layout_args(in_features, out_features, wbits, group, scale_bits, zero_bits)
    w = torch.empty(out_features, n_chunks * 32, dtype=dtype, device=codes.device)
    sp, ssp = _stat_ptrs(scale, scale_stats)
    zp, zsp = _stat_ptrs(zero, zero_stats)
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


def gather_x_tiles(x, perm, nch: int, rows: int, *, dtype=None, scale_wbits: int = 0, segment: int = 0,
                   pdl: bool = False, zero=None):
    """x [M, in] -> (xt, xs), one kernel (`_gather_x_tiles_kernel`). xt [rows, n_tiles * 32 * nch] in `dtype`
    (default fp32; rows >= M, rows past M are zero): tile t holds the permuted columns of chunks t * nch .. t * nch +
    nch - 1, code-major: [t, i, j] = x[b, perm[32 (t nch + j) + i]] (zero past `in`), times 2**-e(i) for
    `scale_wbits`-bit codes (`_code_shift`; gemv_seg). xs (with `segment`, else None) fp32 [rows, n_tiles * (32 /
    segment) * nch]: the sums of x over each segment of `segment` codes of every chunk. gemv_xc takes xt in fp32,
    gemv_seg scaled with the sums (the dot kernel's order: `gather_x_cols`).
    Reference: `tiled_x_reference`. `zero`: an int32 tensor the same kernel fills with zeros (the split-K sums and
    counters of gemv_seg)."""
    import torch

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
    import torch

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
    import torch

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


def _segment(group: int) -> int:
    """Codes per statistics segment of a chunk in `_gemv_seg_kernel`: one group, or the whole chunk."""
    return group if 0 < group < 32 else 32


def tiled_x_reference(x, perm, nch: int, rows: int, *, scale_wbits: int = 0, segment: int = 0, kseg: int = 0):
    """Plain-torch reference of `gather_x_tiles` in fp32 (the segment sums equal up to summation order; scaling
    and sums only in the code-major order; with `kseg` xt is [rows, columns] here, the kernel's transposed)."""
    import torch

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
    import torch

    M, n_in = x.shape
    n_chunks = -(-n_in // 32)
    xc = torch.empty(M, n_chunks * 32, dtype=x.dtype, device=x.device)
    _gather_x_kernel[(M, triton.cdiv(n_chunks * 32, 1024))](x, x.stride(0), xc, perm, n_in, n_chunks, BLOCK=1024)
    return xc


def chunked_column_order(perm, in_features: int):
    """int64 [ceil(in / 32) * 32]: the original input column of each column of `dequantize_chunked`'s weight
    (0 for the zero padding columns). perm: the stored int16 permutation. The plain-torch reference of
    `gather_x_chunked`'s order."""
    import torch

    n_chunks = -(-in_features // 32)
    order = torch.zeros(n_chunks * 32, dtype=torch.int64, device=perm.device)
    order[:in_features] = perm.to(torch.int64) & 0xFFFF
    return order.view(n_chunks, 32).t().reshape(-1)
