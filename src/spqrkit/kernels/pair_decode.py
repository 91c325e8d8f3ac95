"""`@triton.jit` helpers of the fp16-pair decode shared by gemv_pairs and dot_pairs: a 32-bit window of a chunk's
words holding two codes (`pair_schedule`), a compile-time-indexed put, and a group statistic decoded at the top of
an fp32 mantissa."""
from __future__ import annotations

import triton
import triton.language as tl

from .decode import pick_word, second_level, top_weight


@triton.jit
def pair_window(E, w0, w1, w2, w3, w4, w5, w6, w7):
    """The 32-bit window of a plan entry E (`pair_plan`: word, shift, funnel) of each chunk's words."""
    w = pick_word(E[0], w0, w1, w2, w3, w4, w5, w6, w7)
    if E[2]:
        w = (w >> E[1]) | (pick_word(E[0] + 1, w0, w1, w2, w3, w4, w5, w6, w7) << (32 - E[1]))
    elif E[1] > 0:
        w = w >> E[1]
    return w.to(tl.int32, bitcast=True)


@triton.jit
def put(T: tl.constexpr, v, a0, a1, a2, a3, a4, a5):
    """(a0, .., a5) with a_T replaced by v (T a compile-time index; `pick_word` reads one)."""
    if T == 0:
        a0 = v
    if T == 1:
        a1 = v
    if T == 2:
        a2 = v
    if T == 3:
        a3 = v
    if T == 4:
        a4 = v
    if T == 5:
        a5 = v
    return a0, a1, a2, a3, a4, a5


@triton.jit
def pair_stat(win, J: tl.constexpr, q_ptr, st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, BITS: tl.constexpr,
               SHARED2: tl.constexpr, one):
    """First-level statistic (fp32, the tile's shape) of groups G of rows R, as `decode.seg_stat` computes
    it but decoded at the top of an fp32 mantissa (as the dot kernel's weights): code J of the window `win` is
    shifted to bits 23 - BITS .. 22 and or-ed into 1.0 (`one`, a runtime FLOAT_ONE_BITS: one LOP3), and one FFMA
    with (s2 2**BITS, -s2 z2 - s2 2**BITS) gives s2 (q - z2); those two come once per chunk and group for the
    whole row block when SHARED2."""
    if BITS > 0:
        T: tl.constexpr = 23 - BITS
        if J * BITS >= T:
            bits = (win >> (J * BITS - T)).to(tl.uint32)
        else:
            bits = (win << (T - J * BITS)).to(tl.uint32)
        m = ((bits & (((1 << BITS) - 1) << T)) | one).to(tl.float32, bitcast=True)
        s2, z2 = second_level(st_ptr, R, blk, G, gm, gm1, N_GROUPS, BETA2, SHARED2)
        s8 = s2 * (1 << BITS)
        return top_weight(m, s8, -s2 * z2 - s8)
    else:
        return tl.load(q_ptr + R * N_GROUPS + G, mask=gm, other=0.0).to(tl.float32)
