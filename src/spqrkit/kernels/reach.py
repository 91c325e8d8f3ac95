"""What each matmul kernel covers: the layouts it decodes and the rows of x one launch takes. Plain Python (no
Triton), so that the selector (`select`) can ask without importing the kernels."""

from __future__ import annotations

from .pair_schedule import pair_plan

GEMV_MAX_BATCH = 4  # rows of x the gemv / gemv_xc kernels accumulate (one register tile each)
GEMV_SEG_MAX_BATCH = 8  # rows of x gemv_seg accumulates
PAIRS_MAX_ROWS = 2  # rows of x one gemv_pairs launch takes (one set of pair accumulators each)
KERNELS = ("gemv", "gemv_xc", "gemv_seg", "gemv_pairs", "dot", "dot_pairs", "dequantize")


def unsupported_reason(in_features: int, wbits: int, group: int, kernel: str) -> str | None:
    """Why `kernel` cannot run this layout, or None. Every kernel needs 1..8-bit codes and power-of-two groups (or
    one group per row, group 0); `dot` groups of >= 8 (its operand holds one group of 8, 16 or 32 codes per chunk);
    `gemv_pairs` and `dot_pairs` a pair schedule (`pair_schedule`: 2..4 bits, groups of 8, 16, >= 32 or one per
    row). `in_features` may be any size (the last chunk is padded)."""
    if kernel not in KERNELS:
        return f"unknown kernel {kernel!r}"
    if group and group & (group - 1):
        return f"group size {group} is not a power of two"
    if not 1 <= wbits <= 8:
        return f"wbits {wbits} outside 1..8"
    if kernel == "dot" and 0 < group < 8:
        return f"group size {group} < 8 (the dot kernel's operand holds one group of 8, 16 or 32 codes per chunk)"
    if kernel in ("gemv_pairs", "dot_pairs") and pair_plan(wbits, group) is None:
        return (f"no fp16-pair schedule for {wbits}-bit codes in groups of {group} ({kernel}: 2..4 bits, "
                "groups of 8, 16, >= 32 or one per row)")
    return None


def rows_per_launch(kernel: str) -> int | None:
    """The most rows of x one launch of `kernel` takes (None: any number)."""
    return {"gemv": GEMV_MAX_BATCH, "gemv_xc": GEMV_MAX_BATCH, "gemv_seg": GEMV_SEG_MAX_BATCH,
            "gemv_pairs": PAIRS_MAX_ROWS}.get(kernel)
