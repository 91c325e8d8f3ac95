"""The solver's fused Triton kernels, each with the contract of its plain-torch reference in `solver.py`.

sweep_chunk_triton  GPTQ/SpQR column sweep over one chunk of columns. Within a chunk of C <= 64 columns that share
    one group's statistics, every column is quantized, checked for outliers, and its error is pushed into the chunk's
    later columns before the next column is quantized. The eager reference (`sweep_chunk_reference`) launches ~20
    small kernels per column; here one program owns BLOCK_R rows (rows are independent in GPTQ) and keeps its
    [BLOCK_R, C] tile in registers for the whole chunk, so a chunk is one launch.
fit_group_triton  SpQR group-statistics fit: leave-one-out outlier detection, robust min-max fit, second level. At
    the first column of every group the solver fits the group's scale and zero on the current weights. The reference
    (`fit_group_reference`) takes ~100 small kernels per group; here one program owns whole second-level row groups
    (BLOCK_R = beta2 rows) and does the whole fit in registers, including the [rows, g, g] leave-one-out errors, so
    a group's fit is one launch.
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



@triton.jit
def _minmax(xmin, xmax, maxq, ROUND_ZERO: tl.constexpr):
    rng = xmax - xmin
    scale = tl.where(rng <= 0.0, 1.0, tl.math.div_rn(rng, maxq))
    zero = tl.math.div_rn(-xmin, scale)
    if ROUND_ZERO:
        zero = _round_half_even(zero)
    return scale, zero


@triton.jit
def _qdq(x, scale, zero, maxq):
    safe = tl.where(scale == 0.0, 1.0, scale)
    q = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(x, safe) + zero), 0.0), maxq)
    return q, scale * (q - zero)


@triton.jit
def _second_level(v, smaxq, BLOCK_R: tl.constexpr, BETA2: tl.constexpr):
    """Min-max quantize v [BLOCK_R] in groups of BETA2 rows with fp16 (scale, zero): codes, deq [BLOCK_R], stats."""
    vg = tl.reshape(v, (BLOCK_R // BETA2, BETA2))
    s, z = _minmax(tl.min(vg, axis=1), tl.max(vg, axis=1), smaxq, False)  # [BLOCK_R // BETA2]
    s = s.to(tl.float16).to(tl.float32)
    z = z.to(tl.float16).to(tl.float32)
    q, deq = _qdq(vg, s[:, None], z[:, None], smaxq)
    return tl.reshape(q, (BLOCK_R,)), tl.reshape(deq, (BLOCK_R,)), s, z


@triton.jit
def _store_stat(v, maxq2, out_ptrs, rmask, st_ptrs, stmask, BLOCK_R: tl.constexpr, BETA2: tl.constexpr,
                QUANTIZED: tl.constexpr):
    """Store one first-level statistic [BLOCK_R] as the solver keeps it, and return its dequantized value (fp32):
    QUANTIZED: second-level codes (uint8) at out_ptrs and the (scale, zero) of each BETA2 rows at st_ptrs (fp16);
    else the fp16 value itself."""
    if QUANTIZED:
        q, v, s2, z2 = _second_level(v, maxq2, BLOCK_R, BETA2)
        tl.store(out_ptrs, q.to(tl.uint8), mask=rmask)
        tl.store(st_ptrs, s2.to(tl.float16), mask=stmask)
        tl.store(st_ptrs + 1, z2.to(tl.float16), mask=stmask)
    else:
        v16 = v.to(tl.float16)
        tl.store(out_ptrs, v16, mask=rmask)
        v = v16.to(tl.float32)
    return v


@triton.jit
def _fit_group_kernel(
    w_ptr, stride_w,  # [rows, G] fp32: the group's current weights
    d_ptr, thr_ptr,  # [G] diag(U) of the group's columns; [rows] outlier threshold
    s_hat_ptr, z_hat_ptr,  # [rows] fp32 out: dequantized scale and zero
    s_out_ptr, stride_s,  # [rows] uint8 codes (quantized scales) or fp16 (fp16 scales), strided column view
    s_st_ptr, stride_sst,  # [rows // BETA2, 2] fp16 second-level (scale, zero) of the scales
    z_out_ptr, stride_z,
    z_st_ptr, stride_zst,
    rows, G, maxq, smaxq, zmaxq,
    BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr, BETA2: tl.constexpr,
    HAS_OUTLIERS: tl.constexpr, ROUND_ZERO: tl.constexpr, SCALE_Q: tl.constexpr, ZERO_Q: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    c = tl.arange(0, BLOCK_G)  # [BLOCK_G]
    rmask = r < rows
    cmask = c < G
    m2 = rmask[:, None] & cmask[None, :]
    w = tl.load(w_ptr + r[:, None] * stride_w + c[None, :], mask=m2, other=0.0)  # [BLOCK_R, BLOCK_G]
    inf = float("inf")
    xmin = tl.min(tl.where(cmask[None, :], w, inf), axis=1)  # [BLOCK_R]
    xmax = tl.max(tl.where(cmask[None, :], w, -inf), axis=1)
    if HAS_OUTLIERS:
        d = tl.load(d_ptr + c, mask=cmask, other=1.0)
        inv_d = tl.where(cmask, 1.0 / d, 0.0)  # [BLOCK_G]; padded columns weigh nothing
        thr = tl.load(thr_ptr + r, mask=rmask, other=inf)
        # Error of the fit on all weights of the row.
        s0, z0 = _minmax(xmin, xmax, maxq, False)
        _, wq0 = _qdq(w, s0[:, None], z0[:, None], maxq)
        e0 = (w - wq0) * inv_d[None, :]
        base = tl.sum(e0 * e0, axis=1)  # [BLOCK_R]
        # Min and max without weight k: the runner-up where w_k is the extreme (a tie leaves the extreme itself).
        is_min = (w == xmin[:, None]) & cmask[None, :]
        is_max = (w == xmax[:, None]) & cmask[None, :]
        min2 = tl.min(tl.where(is_min | ~cmask[None, :], inf, w), axis=1)
        max2 = tl.max(tl.where(is_max | ~cmask[None, :], -inf, w), axis=1)
        min2 = tl.where(tl.sum(is_min.to(tl.int32), axis=1) > 1, xmin, min2)
        max2 = tl.where(tl.sum(is_max.to(tl.int32), axis=1) > 1, xmax, max2)
        loo_min = tl.where(is_min, min2[:, None], xmin[:, None])  # [BLOCK_R, BLOCK_G(k)]
        loo_max = tl.where(is_max, max2[:, None], xmax[:, None])
        ls, lz = _minmax(loo_min, loo_max, maxq, False)
        w3 = w[:, None, :]  # [BLOCK_R, 1, BLOCK_G(j)]
        _, wq3 = _qdq(w3, ls[:, :, None], lz[:, :, None], maxq)  # [BLOCK_R, BLOCK_G(k), BLOCK_G(j)]
        off = (c[:, None] != c[None, :])  # [k, j]
        e3 = (w3 - wq3) * inv_d[None, None, :]
        e3 = tl.where(off[None, :, :], e3 * e3, 0.0)
        loo = tl.sum(e3, axis=2)  # [BLOCK_R, BLOCK_G(k)]
        reduction = tl.where(G > 1, base[:, None] - loo, 0.0)
        likely = (reduction > thr[:, None]) & cmask[None, :]
        keep = (~likely & cmask[None, :]).to(tl.float32)
        mean_kept = tl.sum(w * keep, axis=1) / tl.maximum(tl.sum(keep, axis=1), 1.0)
        wfit = tl.where(likely, mean_kept[:, None], w)
        xmin = tl.min(tl.where(cmask[None, :], wfit, inf), axis=1)
        xmax = tl.max(tl.where(cmask[None, :], wfit, -inf), axis=1)
    scale, zero = _minmax(xmin, xmax, maxq, ROUND_ZERO)  # [BLOCK_R]

    st = tl.arange(0, BLOCK_R // BETA2)
    strow = tl.program_id(0) * (BLOCK_R // BETA2) + st
    stmask = strow * BETA2 < rows
    scale = _store_stat(scale, smaxq, s_out_ptr + r * stride_s, rmask, s_st_ptr + strow * stride_sst, stmask,
                        BLOCK_R, BETA2, SCALE_Q)
    zero = _store_stat(zero, zmaxq, z_out_ptr + r * stride_z, rmask, z_st_ptr + strow * stride_zst, stmask,
                       BLOCK_R, BETA2, ZERO_Q)
    tl.store(s_hat_ptr + r, scale, mask=rmask)
    tl.store(z_hat_ptr + r, zero, mask=rmask)


def fit_group_triton(wg, dg, threshold, config, maxq, scales, zeros, group):
    """Same contract as `fit_group_reference` (groups of at most 64 columns)."""
    rows, G = wg.shape
    if G > 64 or wg.stride(1) != 1 or wg.dtype != torch.float32:
        raise ValueError("fit_group_triton needs fp32 row-major groups of at most 64 columns")
    device = wg.device
    s_hat = torch.empty(rows, dtype=torch.float32, device=device)
    z_hat = torch.empty(rows, dtype=torch.float32, device=device)
    beta2 = config.beta2 or 16
    block_r = beta2 if config.beta2 is not None else 16
    if block_r > 64:
        raise ValueError("fit_group_triton handles beta2 up to 64")

    def outputs(store):
        if store.fp is not None:
            col = store.fp[:, group]
            return col, col.stride(0), col, 0  # no second-level stats: the stats pointer is unused
        col, st = store.codes[:, group], store.stats[:, group]  # [rows], [rows // beta2, 2]
        return col, col.stride(0), st, st.stride(0)

    s_out, s_stride, s_st, s_st_stride = outputs(scales)
    z_out, z_stride, z_st, z_st_stride = outputs(zeros)
    thr = threshold.reshape(rows).contiguous() if threshold is not None else s_hat
    grid = (triton.cdiv(rows, block_r),)
    _fit_group_kernel[grid](
        wg, wg.stride(0), dg.contiguous(), thr, s_hat, z_hat,
        s_out, s_stride, s_st, s_st_stride, z_out, z_stride, z_st, z_st_stride,
        rows, G, float(maxq), float(2 ** (config.scale_bits or 1) - 1), float(2 ** (config.zero_bits or 1) - 1),
        BLOCK_R=block_r, BLOCK_G=max(16, triton.next_power_of_2(G)), BETA2=beta2 if config.beta2 else block_r,
        HAS_OUTLIERS=threshold is not None, ROUND_ZERO=config.round_zero,
        SCALE_Q=config.scale_bits is not None, ZERO_Q=config.zero_bits is not None,
        num_warps=4,
    )
    return s_hat[:, None], z_hat[:, None]
