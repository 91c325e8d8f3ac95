"""Which codes of a 32-code chunk the batch-1 "gemv_pairs" kernel decodes together, two per 32-bit register.

The kernel multiplies in packed fp16 pairs (one `fma.rn.f16x2` per two weights): one LOP3 puts code a in the low
half's mantissa and code b in the high half's, under an exponent that makes the half equal 2**(10 - e) + q (e: the
code's bit in the half's mantissa), one `sub.f16x2` of those two powers of two leaves (q_a, q_b) exactly, and one
`fma.rn.f16x2` adds (q_a x_a, q_b x_b) to a pair accumulator. Both codes must therefore lie inside the two 10-bit
mantissas of ONE 32-bit window of the chunk's bits (a word, or a funnel shift of two: the shift is the only
instruction a window costs). `SCHEDULES` gives, per (wbits, group), 16 pairs (S, a, b): window start bit S, code a
(low half) and code b (high half), found by an integer program (`scripts/pair_schedules.py`) that minimises the
shifted windows plus three times the accumulator types (each type costs two conversions to fp32 and two adds per
chunk and row): 2 windows per chunk at 2 bits, 4-5 at 3 and 4 bits (a decode of about 0.5 + 0.15 instructions
per weight).
Groups: a pair accumulator's low halves all come from one group of the chunk and its high halves from one group
(a "type"); groups of 32 or more codes (and one group per row, group 0) have a single type.

`pair_plan` turns a schedule into the kernel's constexpr plan; `pair_order` is the x order the pre-kernel writes.
"""

from __future__ import annotations

import functools

CODES = 32
MANTISSA_BITS = 10  # fp16

# (wbits, group) -> 16 (window start bit S, low code a, high code b); group 32 stands for every group >= 32 and 0.
SCHEDULES = {
    (2, 8): (
        (0, 0, 10), (0, 1, 9), (0, 2, 8), (0, 3, 12), (0, 4, 11), (9, 5, 14), (9, 6, 15), (9, 7, 13), (32, 16, 27),
        (32, 17, 24), (32, 18, 26), (32, 19, 25), (32, 20, 28), (41, 21, 30), (41, 22, 31), (41, 23, 29)
    ),
    (2, 16): (
        (0, 0, 12), (0, 1, 10), (0, 2, 9), (0, 3, 8), (0, 4, 11), (9, 5, 14), (9, 6, 13), (9, 7, 15), (32, 16, 26),
        (32, 17, 25), (32, 18, 27), (32, 19, 24), (39, 20, 31), (39, 21, 28), (39, 22, 30), (39, 23, 29)
    ),
    (2, 32): (
        (0, 0, 11), (0, 1, 12), (0, 2, 8), (0, 3, 10), (0, 4, 9), (7, 5, 14), (7, 6, 13), (7, 7, 15), (32, 16, 24),
        (32, 17, 27), (32, 18, 25), (32, 19, 28), (32, 20, 26), (42, 21, 29), (42, 22, 30), (42, 23, 31)
    ),
    (3, 8): (
        (0, 0, 7), (0, 1, 6), (4, 2, 8), (4, 3, 9), (11, 4, 11), (11, 5, 10), (32, 12, 16), (32, 13, 17),
        (38, 14, 19), (38, 15, 18), (59, 20, 27), (59, 21, 25), (64, 22, 28), (64, 23, 29), (72, 24, 30),
        (72, 26, 31)
    ),
    (3, 16): (
        (0, 0, 7), (0, 1, 6), (4, 2, 8), (4, 3, 9), (12, 4, 10), (12, 5, 11), (32, 12, 18), (32, 13, 17),
        (41, 14, 21), (41, 15, 20), (41, 16, 19), (64, 22, 28), (64, 23, 27), (71, 24, 30), (71, 25, 29),
        (71, 26, 31)
    ),
    (3, 32): (
        (0, 0, 7), (0, 1, 6), (6, 2, 8), (6, 3, 9), (12, 4, 10), (12, 5, 11), (32, 12, 18), (32, 13, 17),
        (41, 14, 20), (41, 15, 19), (41, 16, 21), (64, 22, 27), (64, 23, 28), (71, 24, 30), (71, 25, 29),
        (71, 26, 31)
    ),
    (4, 8): (
        (0, 0, 5), (0, 1, 4), (6, 2, 6), (6, 3, 7), (32, 8, 13), (32, 9, 12), (38, 10, 14), (38, 11, 15),
        (64, 16, 21), (64, 17, 20), (70, 18, 23), (70, 19, 22), (96, 24, 29), (96, 25, 28), (102, 26, 30),
        (102, 27, 31)
    ),
    (4, 16): (
        (0, 0, 5), (0, 1, 4), (7, 2, 6), (7, 3, 7), (32, 8, 12), (32, 9, 13), (38, 10, 15), (38, 11, 14),
        (64, 16, 21), (64, 17, 20), (70, 18, 23), (70, 19, 22), (96, 24, 28), (96, 25, 29), (104, 26, 31),
        (104, 27, 30)
    ),
    (4, 32): (
        (0, 0, 5), (0, 1, 4), (8, 2, 6), (8, 3, 7), (32, 8, 12), (32, 9, 13), (39, 10, 15), (39, 11, 14),
        (64, 16, 21), (64, 17, 20), (70, 18, 23), (70, 19, 22), (96, 24, 29), (96, 25, 28), (102, 26, 30),
        (102, 27, 31)
    ),
}


def schedule_group(group: int) -> int | None:
    """The SCHEDULES key of a group size: 8, 16, or 32 for one group per row / groups of >= 32 codes; None for
    groups of 1..4 codes (no schedule: more groups per chunk than pair accumulator types are worth)."""
    if group == 0 or group >= CODES:
        return CODES
    return group if group in (8, 16) else None


def half_magic(e: int) -> int:
    """fp16 bits of 2**(10 - e): a code or-ed into its mantissa at bit e makes the half 2**(10 - e) + q."""
    return (25 - e) << MANTISSA_BITS


@functools.cache
def pair_plan(wbits: int, group: int):
    """(plan, types) for the kernel, or None without a schedule. plan: one (word, shift, funnel, mask, magic, type)
    per pair: the window is word `word` shifted right by `shift` (funnel: with the next word's low bits above);
    `mask` selects the two codes, `magic` is both the or-ed exponent pair and the fp16 pair subtracted after it;
    `type` indexes `types`, the (group of a, group of b) of each pair accumulator, groups counted inside the
    chunk."""
    key = schedule_group(group)
    if key is None or (wbits, key) not in SCHEDULES:
        return None
    code_mask = (1 << wbits) - 1
    types = []
    plan = []
    for start, a, b in SCHEDULES[(wbits, key)]:
        lo, hi = wbits * a - start, wbits * b - start
        word, shift = divmod(start, 32)
        t = (a // key, b // key) if key < CODES else (0, 0)
        if t not in types:
            types.append(t)
        plan.append((word, shift, shift > 0 and word + 1 < wbits, (code_mask << lo) | (code_mask << hi),
                     half_magic(lo) | half_magic(hi - 16) << 16, types.index(t)))
    return tuple(plan), tuple(types)


@functools.cache
def pair_exponents(wbits: int, group: int) -> tuple[int, ...]:
    """The bit e of each code of `pair_order` inside its half's mantissa (0..10 - wbits). Masked out of its window
    alone (exponent field 0), a code is the subnormal half q 2**(e - 24), exactly: the subnormal decode of
    `gemv_pairs` multiplies it by x 2**(24 - e - k) and needs no subtraction."""
    key = schedule_group(group)
    return tuple(e for start, a, b in SCHEDULES[(wbits, key)] for e in (wbits * a - start, wbits * b - start - 16))


@functools.cache
def pair_order(wbits: int, group: int) -> tuple[int, ...]:
    """The 32 code positions of a chunk in the order the kernel reads x: a_0, b_0, a_1, b_1, ... (x of pair p is
    the fp16 pair at 2p, 2p + 1, little-endian: a_p in the low half)."""
    key = schedule_group(group)
    return tuple(c for _, a, b in SCHEDULES[(wbits, key)] for c in (a, b))
