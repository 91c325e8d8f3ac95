"""Which implementation computes y = x W^T for a packed layer: one table from (rows of x, x's dtype, layout) to a
kernel, with the plain-torch reference (dequantize to fp32, cast, F.linear) as the fallback and the oracle every
kernel is tested against.

A call picks the first row of `SELECTION` whose row limit and dtype match x, then the first kernel of that row that
covers the layer's layout (`reach.unsupported_reason`: power-of-two groups; `dot` needs groups of >= 8;
`gemv_pairs` / `dot_pairs` need a pair schedule: 2..4-bit codes in groups of 8, 16, >= 32 or one per row). The
reference runs off CUDA, without Triton, for empty inputs, for other dtypes and for layouts no kernel of the row
covers. `SPQRKIT_MATMUL=<name>` forces one implementation (tests, benchmarks); a forced kernel outside its reach is
an error. `gemv` and `gemv_xc` are baselines, chosen only when forced.

Why the table looks as it does (docs/kernels.md has the measurements): the CUDA-core decode kernels are fastest at
one or two rows (`gemv_pairs` for fp16 / bf16 x, `gemv_seg` otherwise); the tensor-core `dot` grows slowly with the
rows and wins from three rows on (`dot_pairs`, its fp16-pair variant, for fp16 x up to DOT_PAIRS_MAX_ROWS); past
DOT_MAX_ROWS (prefill) the weight is dequantized once and multiplied by cuBLAS (`dequantize`), whose cost does not
grow with the batch. `dot` never takes fp32 x: tl.dot would multiply it without the tensor cores.
"""

from __future__ import annotations

import os

import torch

from .reach import GEMV_SEG_MAX_BATCH, KERNELS, unsupported_reason

IMPLEMENTATIONS = ("reference", *KERNELS)  # what SPQRKIT_MATMUL may name
MATMUL_ENV = "SPQRKIT_MATMUL"  # "auto" (default) or one of IMPLEMENTATIONS

GEMV_PAIRS_MAX_ROWS = 2
GEMV_SEG_MAX_ROWS = 2
DOT_PAIRS_MAX_ROWS = 32
DOT_MAX_ROWS = 64

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

# (rows of x up to (None: any), x dtype, kernels in order of preference). gemv_seg stays a fallback up to the rows
# one of its launches takes (GEMV_SEG_MAX_BATCH).
SELECTION: tuple[tuple[int | None, torch.dtype, tuple[str, ...]], ...] = (
    (GEMV_PAIRS_MAX_ROWS, F16, ("gemv_pairs", "gemv_seg", "dot", "dequantize")),
    (GEMV_PAIRS_MAX_ROWS, BF16, ("gemv_pairs", "gemv_seg", "dot", "dequantize")),
    (GEMV_SEG_MAX_ROWS, F16, ("gemv_seg", "dot", "dequantize")),
    (GEMV_SEG_MAX_ROWS, BF16, ("gemv_seg", "dot", "dequantize")),
    (GEMV_SEG_MAX_ROWS, F32, ("gemv_seg", "dequantize")),
    (GEMV_SEG_MAX_BATCH, F16, ("dot_pairs", "dot", "gemv_seg", "dequantize")),
    (GEMV_SEG_MAX_BATCH, BF16, ("dot", "gemv_seg", "dequantize")),
    (GEMV_SEG_MAX_BATCH, F32, ("gemv_seg", "dequantize")),
    (DOT_PAIRS_MAX_ROWS, F16, ("dot_pairs", "dot", "dequantize")),
    (DOT_MAX_ROWS, F16, ("dot", "dequantize")),
    (DOT_MAX_ROWS, BF16, ("dot", "dequantize")),
    (None, F16, ("dequantize",)),
    (None, BF16, ("dequantize",)),
    (None, F32, ("dequantize",)),
)


def triton_ready() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def forced() -> str:
    """SPQRKIT_MATMUL's value ("auto" when unset)."""
    return os.environ.get(MATMUL_ENV, "auto")


def pick(rows: int, dtype: torch.dtype, device_type: str, in_features: int, wbits: int, group: int) -> str:
    """The implementation for `rows` rows of x in `dtype` on `device_type` and this layout (group: beta1, 0 = one
    group per row), ignoring SPQRKIT_MATMUL: a table lookup (`SELECTION`)."""
    if device_type != "cuda" or rows <= 0 or not triton_ready():
        return "reference"
    for max_rows, row_dtype, kernels in SELECTION:
        if row_dtype == dtype and (max_rows is None or rows <= max_rows):
            for kernel in kernels:
                if unsupported_reason(in_features, wbits, group, kernel) is None:
                    return kernel
            return "reference"
    return "reference"


def choose_kernel(x: torch.Tensor, in_features: int, wbits: int, group: int) -> str:
    """The implementation (a name of IMPLEMENTATIONS) for input x and this layout: SPQRKIT_MATMUL's when set (an
    error if the layout is outside that kernel's reach), else `pick`'s."""
    name = forced()
    if name != "auto":
        if name not in IMPLEMENTATIONS:
            raise ValueError(f"{MATMUL_ENV}={name!r}: expected auto or one of {sorted(IMPLEMENTATIONS)}")
        if name == "reference":
            return name
        if not triton_ready():
            raise ValueError(f"{MATMUL_ENV}={name}: Triton is not installed")
        reason = unsupported_reason(in_features, wbits, group, name)
        if reason:
            raise ValueError(f"{MATMUL_ENV}={name}: {reason}")
        return name
    return pick(x.numel() // max(x.shape[-1], 1), x.dtype, x.device.type, in_features, wbits, group)
