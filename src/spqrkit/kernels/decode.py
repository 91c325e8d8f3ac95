"""Shared `@triton.jit` decoding of the packed format (docs/format.md): codes of 32-code chunks (b-bit codes in
b int32 words per chunk), first-level statistics from their second-level codes or fp16 values, base weights, and the
outliers' terms. Every kernel family builds on these; docs/kernels.md explains the decode tricks (magic-number
conversion, codes decoded in place or at the top of a mantissa) and why each costs what it does."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def code_at(words_ptr, row_off, idx, BITS: tl.constexpr, mask):
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
def stat_at(q_ptr, stats_ptr, rows, g, mask, N_GROUPS, N_WORDS, BETA2, BITS: tl.constexpr):
    """Dequantized first-level statistic (fp32) of (row, group): from its second-level code and the fp16
    (scale, zero) of its beta2-row group when BITS > 0, else the stored fp16 value (q_ptr then points at it)."""
    if BITS > 0:
        q = code_at(q_ptr, rows * N_WORDS, g, BITS, mask).to(tl.float32)
        sp = stats_ptr + ((rows // BETA2) * N_GROUPS + g) * 2
        s2 = tl.load(sp, mask=mask, other=0.0).to(tl.float32)
        z2 = tl.load(sp + 1, mask=mask, other=0.0).to(tl.float32)
        return s2 * (q - z2)
    else:
        return tl.load(q_ptr + rows * N_GROUPS + g, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def chunk_words(wp, mask, WB: tl.constexpr):
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
def pick_word(K: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7):
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
def chunk_bits(I: tl.constexpr, WB: tl.constexpr, T: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7):
    """The bits of code I (0..31) of each chunk (bits [I * WB, (I + 1) * WB) of the chunk's words) moved to bits
    T .. T + WB - 1, higher and lower bits not yet masked: one shift by a compile-time constant (two shifts and an or
    when the code straddles words; then T < its offset)."""
    K: tl.constexpr = (I * WB) // 32
    O: tl.constexpr = (I * WB) % 32
    w = pick_word(K, w0, w1, w2, w3, w4, w5, w6, w7)
    if O + WB > 32:
        bits = (w >> (O - T)) | (pick_word(K + 1, w0, w1, w2, w3, w4, w5, w6, w7) << (32 - O + T))
    elif O >= T:
        bits = w >> (O - T)
    else:
        bits = w << (T - O)
    return bits


@triton.jit
def chunk_code(I: tl.constexpr, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7):
    """Code I (0..31) of each chunk (`chunk_bits` to bit 0, masked)."""
    return chunk_bits(I, WB, 0, w0, w1, w2, w3, w4, w5, w6, w7) & ((1 << WB) - 1)


@triton.jit
def code_to_float(q, magic=0x4B000000):
    """uint32 code (< 2**23) -> fp32 without a conversion instruction: the bits of 2**23 + q, minus 2**23 (exact).
    `magic` is 0x4B000000 (the bits of 2**23); the per-weight decodes pass it as a kernel argument (MAGIC), which the
    compiler cannot fold, so that the code's mask and this OR become ONE LOP3 (with two immediates ptxas emits an AND
    and an OR: benchmarks/sass_report.py)."""
    return (q | magic).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def chunk_code_top(I: tl.constexpr, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, one, mask):
    """fp32 1 + q 2**-WB for code q = code I (0..31) of each chunk: its bits moved to the top of the mantissa (bits
    23 - WB .. 22, `chunk_bits`) and or-ed into the bits of 1.0. `one` (FLOAT_ONE_BITS) and `mask` ((2**WB - 1) <<
    (23 - WB)) are runtime values, so mask and or are ONE LOP3. Nothing is subtracted: `top_weight` scales it by
    s 2**WB, which keeps every bit (see there)."""
    bits = chunk_bits(I, WB, 23 - WB, w0, w1, w2, w3, w4, w5, w6, w7)
    return ((bits & mask) | one).to(tl.float32, bitcast=True)


@triton.jit
def top_weight(m, s8, c):
    """s q - s z from m = 1 + q 2**-WB (`chunk_code_top`), s8 = s 2**WB and c = -s z - s8: m s8 + c, one FFMA.
    The terms stay within a few times s 2**WB (unlike a 2**23 magic, whose subtraction must come first: one FADD
    per weight), so the two roundings (c, and the FFMA's) cost at most about 2**(WB - 22) |s| on top of the one of
    s q - s z computed directly: far below the weight's rounding to fp16 / bf16 for the tensor cores."""
    return m * s8 + c


@triton.jit
def base_weight(q, s, sz, WB: tl.constexpr):
    """The base weight of code q (fp32) with scale s and sz = -s z, fp32, computed exactly as the `dot` kernel's
    dense operand is (`top_weight` of 1 + q 2**-WB, exact here too), so that its outlier kernel's value - base
    cancels that operand bit for bit."""
    s8 = s * (1 << WB)
    return top_weight(q * (1.0 / (1 << WB)) + 1.0, s8, sz - s8)


@triton.jit
def group_stats(
    I: tl.constexpr, ch, rows, m2, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
):
    """(scale, zero), fp32 [BR, NCH], of the group holding code I of chunks ch (rows [BR], m2 [BR, NCH] mask)."""
    if GROUP == 0:
        g = ch * 0
    else:
        g = (ch * 32 + I) // GROUP
    gm = m2 & (g < N_GROUPS)[None, :]  # (a padded last chunk may reach past the last group)
    s = stat_at(s_ptr, sst_ptr, rows[:, None], g[None, :], gm, N_GROUPS, N_SWORDS, BETA2, SB)
    z = stat_at(z_ptr, zst_ptr, rows[:, None], g[None, :], gm, N_GROUPS, N_ZWORDS, BETA2, ZB)
    return s, z


@triton.jit
def outlier_base_at(k, km, row, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS,
                     N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, WB: tl.constexpr, GROUP: tl.constexpr,
                     SB: tl.constexpr, ZB: tl.constexpr, HAS_BASE: tl.constexpr):
    """Outliers k (mask km) of rows `row`: (column, value, base weight), fp32 but the column. The base weight
    (`base_weight`) is read from bases_ptr (HAS_BASE: `outlier_bases`, computed by this same helper) or decoded
    again: the base code and its group's statistics from the packed tensors."""
    col = tl.load(cols_ptr + k, mask=km, other=0).to(tl.int32) & 0xFFFF
    v = tl.load(vals_ptr + k, mask=km, other=0.0).to(tl.float32)
    if HAS_BASE:
        base = tl.load(bases_ptr + k, mask=km, other=0.0)
    else:
        q = code_at(codes_ptr, row * N_CODE_WORDS, col, WB, km).to(tl.float32)
        if GROUP > 0:
            g = col // GROUP
        else:
            g = col * 0
        s = stat_at(s_ptr, sst_ptr, row, g, km, N_GROUPS, N_SWORDS, BETA2, SB)
        z = stat_at(z_ptr, zst_ptr, row, g, km, N_GROUPS, N_ZWORDS, BETA2, ZB)
        base = base_weight(q, s, -s * z, WB)
    return col, v, base


@triton.jit
def outlier_terms(
    k0, k_hi, lo, hi, rows0, x_ptr,
    codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr, N_GROUPS, N_SWORDS, N_ZWORDS, BETA2,
    cols_ptr, vals_ptr, perm_ptr, bases_ptr,
    WB: tl.constexpr, GROUP: tl.constexpr, SB: tl.constexpr, ZB: tl.constexpr,
    KO: tl.constexpr, XC: tl.constexpr, XSCALED: tl.constexpr, HAS_BASE: tl.constexpr,
):
    """Outliers k0 .. min(k0 + KO, k_hi) - 1, all in the BR rows rows0 .. (row r's are lo[r] .. hi[r] - 1):
    (hit [BR, KO]: outlier k is valid and in row r; [KO] tensors dv = value - base weight and p = the index of its
    x in a row of x): their contribution to row r is dv * x[b, p] where hit. The base code and statistics at the
    outlier come from `outlier_base_at` (HAS_BASE: read from `outlier_bases`, else decoded again).
    XC: 0 when x is in the original column order (p = perm[col]), else the tile width of x given by
    `_gather_x_tiles_kernel`, scaled by 2**-e when XSCALED (that 2**e is then folded into dv)."""
    k = k0 + tl.arange(0, KO)
    km = k < k_hi
    hit, loc = outlier_row_hits(k, lo, hi)
    col, v, base = outlier_base_at(k, km, rows0 + loc, codes_ptr, N_CODE_WORDS, s_ptr, sst_ptr, z_ptr, zst_ptr,
                                    N_GROUPS, N_SWORDS, N_ZWORDS, BETA2, cols_ptr, vals_ptr, bases_ptr, WB, GROUP, SB,
                                    ZB, HAS_BASE)
    dv = v - base
    if XC > 0:  # x given in tiles of XC chunks
        ch = col // 32
        p = ((ch // XC) * 32 + col % 32) * XC + ch % XC
        if XSCALED:
            dv = dv * ((127 + code_shift(col % 32, WB)) << 23).to(tl.float32, bitcast=True)  # * 2**e: exact
    else:
        p = tl.load(perm_ptr + col, mask=km, other=0).to(tl.int32) & 0xFFFF
    return hit & km[None, :], dv, p, km


@triton.jit
def outlier_add(o, hit, dv, x_ptr, p, mask):
    """o [BR, KO] + the outliers' terms dv * x[p] where hit (`outlier_terms`): an elementwise update (no
    reduction, no barrier); the caller sums o over KO once, at the end."""
    xv = tl.load(x_ptr + p, mask=mask, other=0.0).to(tl.float32)
    return o + tl.where(hit & mask[None, :], (dv * xv)[None, :], 0.0)


@triton.jit
def outlier_row_hits(k, lo, hi):
    """(hit [BR, KO]: outlier k lies in local row r, i.e. lo[r] <= k < hi[r]; the local row of each outlier [KO]).
    Computed in the [BR, KO] layout itself, so that the caller's row-wise updates need no layout conversion."""
    hit = (lo[:, None] <= k[None, :]) & (k[None, :] < hi[:, None])
    return hit, tl.sum(tl.where(hit, tl.arange(0, lo.shape[0])[:, None], 0), axis=0)


@triton.jit
def outlier_range(rowptr_ptr, rows0, OUT, BR: tl.constexpr):
    """(first outlier, end, row_ptr[rows0 + i], row_ptr[rows0 + i + 1] for i < BR) of the rows rows0 .. rows0 +
    BR - 1 (CSR rows are consecutive, so their outliers are one range; rows past OUT get empty ranges)."""
    rr = tl.arange(0, BR)
    k_lo = tl.load(rowptr_ptr + rows0)
    k_hi = tl.load(rowptr_ptr + tl.minimum(rows0 + BR, OUT))
    lo = tl.load(rowptr_ptr + rows0 + rr, mask=rows0 + rr < OUT, other=2147483647)
    hi = tl.load(rowptr_ptr + rows0 + 1 + rr, mask=rows0 + rr < OUT, other=2147483647)
    return k_lo, k_hi, lo, hi


@triton.jit
def code_shift(i, WB: tl.constexpr):
    """2**e(i) is the factor by which `chunk_code_scaled` leaves code i of a chunk scaled (i: int or tensor)."""
    o = (i * WB) % 32
    return tl.where(o + WB > 32, 0, tl.where(o + WB <= 23, o, o - 16))


@triton.jit
def chunk_code_scaled(I: tl.constexpr, WB: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, magic):
    """fp32 q * 2**e(I), exactly, for code I (0..31) of each chunk: the code's bits are masked IN PLACE and or-ed
    into the mantissa of 2**23 (an AND and an OR), then 2**23 is subtracted, so no shift is needed; codes in bits
    23..31 of a word are taken from the word's upper half (one shift per word, shared), codes straddling two words
    are shifted down (e = 0). `_gather_x_tiles_kernel` with SCALE_WB gives x the matching 2**-e(I)."""
    K: tl.constexpr = (I * WB) // 32
    O: tl.constexpr = (I * WB) % 32
    MASK: tl.constexpr = (1 << WB) - 1
    if O + WB > 32:
        q = ((pick_word(K, w0, w1, w2, w3, w4, w5, w6, w7) >> O) | (pick_word(K + 1, w0, w1, w2, w3, w4, w5, w6, w7)
                                                                << (32 - O))) & MASK
    elif O + WB <= 23:
        q = pick_word(K, w0, w1, w2, w3, w4, w5, w6, w7) & (MASK << O)
    else:
        q = (pick_word(K, w0, w1, w2, w3, w4, w5, w6, w7) >> 16) & (MASK << (O - 16))
    return code_to_float(q, magic)


@triton.jit
def stat_window(q_ptr, R, C, m2, N_WORDS, GROUP: tl.constexpr, NSEG: tl.constexpr, BITS: tl.constexpr):
    """uint64, the tile's shape: the packed BITS-bit statistic codes of rows R, from the first group of chunks C on
    (its NSEG groups, or the one group holding it when GROUP >= 32), in the low bits: one or two word loads per
    chunk instead of one or two per group (`seg_stat` takes group J of the window). Only when BITS > 0."""
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
def stat_windows(s_ptr, z_ptr, R, C, m2, N_SWORDS, N_ZWORDS, GROUP: tl.constexpr, NSEG: tl.constexpr,
                  SB: tl.constexpr, ZB: tl.constexpr):
    """(`stat_window` of the scale codes, of the zero codes) of a tile; 0 for fp16 statistics."""
    swin = 0
    zwin = 0
    if SB > 0:
        swin = stat_window(s_ptr, R, C, m2, N_SWORDS, GROUP, NSEG, SB)
    if ZB > 0:
        zwin = stat_window(z_ptr, R, C, m2, N_ZWORDS, GROUP, NSEG, ZB)
    return swin, zwin


@triton.jit
def seg_group(ch, g: tl.constexpr, SEG: tl.constexpr, GROUP: tl.constexpr, N_CHUNKS, N_GROUPS):
    """(group of segment g of chunks ch [NCH], mask: the chunk and group exist; a padded last chunk may reach past
    the last group)."""
    if GROUP == 0:
        grp = ch * 0
    else:
        grp = (ch * 32 + g * SEG) // GROUP
    return grp, (ch < N_CHUNKS) & (grp < N_GROUPS)


@triton.jit
def fp16_half(v, H: tl.constexpr):
    """fp32 value of half H (0: low, 1: high) of int32-held fp16 pairs."""
    return ((v >> (16 * H)) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def second_level(st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, SHARED2: tl.constexpr):
    """(scale, zero), fp32, of the second-level statistics of groups G of rows R: ONE int32 load of the fp16 pair
    (st_ptr: the [out / beta2, n_groups, 2] fp16 stats viewed as int32), once for the whole row block when SHARED2
    (every row of the block lies in the same beta2 block `blk`; mask gm1 per chunk, else gm)."""
    if SHARED2:
        w = tl.load(st_ptr + blk * N_GROUPS + G, mask=gm1, other=0)
    else:
        w = tl.load(st_ptr + (R // BETA2) * N_GROUPS + G, mask=gm, other=0)
    return fp16_half(w, 0), fp16_half(w, 1)


@triton.jit
def seg_stat(win, J: tl.constexpr, q_ptr, st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, BITS: tl.constexpr,
              SHARED2: tl.constexpr):
    """First-level statistic (fp32, the tile's shape) of groups G (per chunk: the J-th group of the window `win`)
    of rows R: BITS > 0: code J of the window dequantized with its second-level (scale, zero), read as ONE int32
    (st_ptr: the [out / beta2, n_groups, 2] fp16 stats viewed as int32), once for the whole row block when SHARED2
    (every row of the block lies in the same beta2 block `blk`; mask gm1 per chunk); BITS == 0: the fp16 value
    (q_ptr [out, n_groups])."""
    if BITS > 0:
        q = code_to_float((win >> (J * BITS)).to(tl.uint32) & ((1 << BITS) - 1))
        s2, z2 = second_level(st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, SHARED2)
        return s2 * (q - z2)
    else:
        return tl.load(q_ptr + R * N_GROUPS + G, mask=gm, other=0.0).to(tl.float32)
