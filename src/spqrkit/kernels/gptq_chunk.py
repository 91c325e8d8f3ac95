"""Fused GPTQ/SpQR column sweep over one chunk of columns (Triton).

The solver's hot loop: within a chunk of C <= 64 columns that share one group's statistics, every column is
quantized, checked for outliers, and its error is pushed into the chunk's later columns before the next column is
quantized. The eager reference (`spqrkit.quant.solver.sweep_chunk_reference`) launches ~20 small kernels per column;
here one program owns BLOCK_R rows (rows are independent in GPTQ) and keeps its [BLOCK_R, C] tile in registers for
the whole chunk, so a chunk is one launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _round_half_even(x):
    # torch.round rounds half to even; so must we, or codes differ from the reference at exact ties.
    f = tl.floor(x)
    frac = x - f  # exact for |x| < 2**23
    odd = f - 2.0 * tl.floor(f * 0.5)  # 1.0 when f is odd
    return tl.where(frac > 0.5, f + 1.0, tl.where(frac < 0.5, f, f + odd))


@triton.jit
def _sweep_chunk_kernel(
    w_ptr, stride_w,  # [rows, C] fp32: weights in, dequantized weights out
    u_ptr, stride_u,  # [C, C] fp32: the chunk's block of U = chol(H^-1), upper
    s_ptr, z_ptr, thr_ptr,  # [rows] fp32: dequantized scale and zero of the group; outlier threshold
    q_ptr, stride_q,  # [rows, C] uint8 out: codes
    o_ptr, stride_o,  # [rows, C] bool out: outlier mask
    e_ptr, stride_e,  # [rows, C] fp32 out: scaled errors (w - w_hat) / d
    rows, C, maxq,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, HAS_OUTLIERS: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    c = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    rmask = r < rows
    mask = rmask[:, None] & (c < C)[None, :]  # [BLOCK_R, BLOCK_C]
    w = tl.load(w_ptr + r[:, None] * stride_w + c[None, :], mask=mask, other=0.0)  # [BLOCK_R, BLOCK_C]
    s = tl.load(s_ptr + r, mask=rmask, other=1.0)
    z = tl.load(z_ptr + r, mask=rmask, other=0.0)
    safe_s = tl.where(s == 0.0, 1.0, s)
    if HAS_OUTLIERS:
        thr = tl.load(thr_ptr + r, mask=rmask, other=float("inf"))
    codes = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    errs = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    outl = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int1)
    for j in tl.static_range(BLOCK_C):
        if j < C:
            sel = (c == j)[None, :]  # [1, BLOCK_C]
            wj = tl.sum(tl.where(sel, w, 0.0), axis=1)  # [BLOCK_R]: column j, exactly
            q = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(wj, safe_s) + z), 0.0), maxq)
            wq = s * (q - z)
            dj = tl.load(u_ptr + j * stride_u + j)
            err = tl.math.div_rn(wj - wq, dj)
            if HAS_OUTLIERS:
                is_out = err * err > thr
                wq = tl.where(is_out, wj.to(tl.float16).to(tl.float32), wq)
                err = tl.math.div_rn(wj - wq, dj)
                outl = tl.where(sel, is_out[:, None], outl)
            u = tl.load(u_ptr + j * stride_u + c, mask=(c > j) & (c < C), other=0.0)  # [BLOCK_C]: U[j, j+1:]
            w = w - err[:, None] * u[None, :]
            w = tl.where(sel, wq[:, None], w)
            codes = tl.where(sel, q[:, None], codes)
            errs = tl.where(sel, err[:, None], errs)
    tl.store(w_ptr + r[:, None] * stride_w + c[None, :], w, mask=mask)
    tl.store(q_ptr + r[:, None] * stride_q + c[None, :], codes.to(tl.uint8), mask=mask)
    tl.store(e_ptr + r[:, None] * stride_e + c[None, :], errs, mask=mask)
    if HAS_OUTLIERS:
        tl.store(o_ptr + r[:, None] * stride_o + c[None, :], outl, mask=mask)


def sweep_chunk_triton(
    Wc: torch.Tensor, Uc: torch.Tensor | None, scale: torch.Tensor, zero: torch.Tensor,
    threshold: torch.Tensor | None, maxq: int, block_rows: int = 32,
):
    """Same contract as `sweep_chunk_reference` (Wc updated in place); Uc must not be None (RTN needs no sweep)."""
    rows, C = Wc.shape
    if Uc is None or C > 64 or Wc.stride(1) != 1 or Wc.dtype != torch.float32:
        raise ValueError("sweep_chunk_triton needs fp32 row-major chunks of at most 64 columns with error feedback")
    Uc = Uc.contiguous()  # [C, C]: tiny
    device = Wc.device
    codes = torch.empty(rows, C, dtype=torch.uint8, device=device)
    errors = torch.empty(rows, C, dtype=torch.float32, device=device)
    outliers = torch.empty(rows, C, dtype=torch.bool, device=device) if threshold is not None else None
    s = scale.reshape(rows).contiguous()
    z = zero.reshape(rows).contiguous()
    thr = threshold.reshape(rows).contiguous() if threshold is not None else s
    out_buf = outliers if outliers is not None else codes
    grid = (triton.cdiv(rows, block_rows),)
    _sweep_chunk_kernel[grid](
        Wc, Wc.stride(0), Uc, Uc.stride(0), s, z, thr,
        codes, codes.stride(0), out_buf, out_buf.stride(0), errors, errors.stride(0),
        rows, C, maxq,
        BLOCK_R=block_rows, BLOCK_C=max(16, triton.next_power_of_2(C)), HAS_OUTLIERS=threshold is not None,
        num_warps=4,
    )
    return codes, outliers, errors
