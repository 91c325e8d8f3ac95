"""Regenerate `spqrkit.kernels.pair_schedule.SCHEDULES`: for each code width and group size, the 16 code pairs of a
32-code chunk that the batch-1 pairs kernel decodes two at a time, with as few shifted words as possible.

A pair (a, b) is taken from the 32-bit window of the chunk's bits that starts at bit S (the word itself when S is a
multiple of 32, else one funnel shift): code a must lie in the low half's fp16 mantissa (window bits 0 .. 9) and
code b in the high half's (bits 16 .. 25). Minimised: shifted windows, then accumulator types (the (group of a,
group of b) combinations, each one more fp16 pair to convert per chunk). An integer program (scipy's HiGHS):

    python scripts/pair_schedules.py      # prints the table to paste into src/spqrkit/kernels/pair_schedule.py
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

TYPE_COST = 3.0  # a type costs two fp16 -> fp32 conversions and two adds per chunk and row; a window one shift


def solve(wbits: int, group: int):
    nbits = 32 * wbits
    cands = []  # (S, a, b)
    for start in range(nbits):
        lo = [c for c in range(32) if 0 <= wbits * c - start <= 10 - wbits]
        hi = [c for c in range(32) if 16 <= wbits * c - start <= 26 - wbits]
        cands += [(start, a, b) for a in lo for b in hi]
    wins = sorted({c[0] for c in cands})
    grp = (lambda c: c // group) if group < 32 else (lambda c: 0)
    types = sorted({(grp(a), grp(b)) for _, a, b in cands})
    n_p, n_w, n_t = len(cands), len(wins), len(types)
    cost = np.concatenate([np.zeros(n_p), [0.0 if s % 32 == 0 else 1.0 for s in wins], np.full(n_t, TYPE_COST)])
    rows, lb, ub = [], [], []
    for code in range(32):  # every code in exactly one pair
        r = np.zeros(n_p + n_w + n_t)
        r[[i for i, (_, a, b) in enumerate(cands) if code in (a, b)]] = 1
        rows.append(r), lb.append(1), ub.append(1)
    for i, (s, a, b) in enumerate(cands):  # a pair needs its window and its accumulator type
        for j in (n_p + wins.index(s), n_p + n_w + types.index((grp(a), grp(b)))):
            r = np.zeros(n_p + n_w + n_t)
            r[i], r[j] = 1, -1
            rows.append(r), lb.append(-np.inf), ub.append(0)
    res = milp(cost, constraints=LinearConstraint(np.array(rows), lb, ub), integrality=np.ones(len(cost)),
               bounds=Bounds(0, 1))
    return tuple(sorted(cands[i] for i in range(n_p) if round(res.x[i])))


if __name__ == "__main__":
    print("SCHEDULES = {")
    for wbits in (2, 3, 4):
        for group in (8, 16, 32):
            print(f"    ({wbits}, {group}): {solve(wbits, group)},")
    print("}")
