"""Host-side launch plumbing shared by the kernel families: the sizes a layout implies, the statistic pointers,
split K (programs per row block), programmatic dependent launch (PDL) and the Triton-version-dependent tile
orientation. Tile shapes and other defaults live with each launcher; docs/kernels.md says how they were chosen."""

from __future__ import annotations

import functools
import os

import torch
import triton

from .tile import gdc_wait

FLOAT_2_23_BITS = 0x4B000000  # the MAGIC argument of the decode kernels (`code_to_float`)
FLOAT_ONE_BITS = 0x3F800000  # the ONE argument of the dot kernels (`chunk_code_top`)
DOT_PAIRS_CHUNKS = 8  # chunks per tile of dot_pairs (`dot_stages` with pairs)
# gemv_seg's and gemv_pairs' default split K: one program per row block and SPLIT_CHUNKS chunks (16384 columns), so
# that only long rows are split (splitting short ones costs more in atomics than it gains in parallelism).
SPLIT_CHUNKS = 512


def layout_sizes(in_features: int, out_features: int, wbits: int, group: int, scale_bits: int, zero_bits: int):
    """(chunks of 32 codes per row, groups per row, int32 words per row of scale codes, of zero codes)."""
    n_chunks = -(-in_features // 32)
    n_groups = 1 if group == 0 else -(-in_features // group)
    n_stat_chunks = -(-n_groups // 32)
    return n_chunks, n_groups, n_stat_chunks * max(scale_bits, 1), n_stat_chunks * max(zero_bits, 1)


def stat_pointers(stat, stats):
    """(first-level statistic tensor, its second-level stats or, for fp16 statistics, the same tensor again: the
    kernels take a pointer either way and read only what their SB / ZB say)."""
    return stat, (stats if stats is not None else stat)


def int32_pairs(stats, bits: int):
    """The [..., n_groups, 2] fp16 second-level statistics viewed as int32 (scale in the low half, zero in the
    high one) for `seg_stat`; fp16 first-level statistics (bits == 0) unchanged."""
    return stats.view(torch.int32) if bits > 0 else stats


def segment_codes(group: int) -> int:
    """Codes per statistics segment of a chunk (gemv_seg, dot): one group, or the whole chunk."""
    return group if 0 < group < 32 else 32


@functools.cache
def chunk_major_tile() -> bool:
    """The tile orientation of gemv_seg and gemv_pairs (their RT) in which the installed Triton gives each thread one
    chunk of every row of its block, the packed words and x in ONE layout: [chunks, rows] (True) up to Triton 3.6,
    [rows, chunks] (False) from 3.7 on. In the other orientation the compiler converts between two layouts through
    shared memory, with barriers, in the main loop (benchmarks/sass_report.py counts them)."""
    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    return (major, minor) <= (3, 6)


@functools.cache
def has_pdl(device) -> bool:
    """Programmatic dependent launch: compute capability 9 (Hopper) and newer, compiled (not the interpreter)."""
    return (device.type == "cuda" and gdc_wait is not None and os.environ.get("TRITON_INTERPRET") != "1"
            and torch.cuda.get_device_capability(device)[0] >= 9)


@functools.cache
def sm_count(device) -> int:
    """Streaming multiprocessors of `device` (4 off CUDA: the interpreter's split K then still has several shares)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_plan(n_chunks: int, nch: int, split, n_sums: int, n_blocks: int, device):
    """Split K for the gemv kernels: (programs per row block, chunks per program, ws, cnt, zero). `split` None: one
    program per SPLIT_CHUNKS chunks; at most one per tile of `nch` chunks. With more than one, `zero` is an int32
    buffer the x kernel zeroes, holding the fp32 sums ws [n_sums] and one counter per row block cnt [n_blocks];
    else all three are None."""
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
