"""SpQR's solver for linear weights: GPTQ with small groups, quantized statistics and unstructured outliers.

`quantize_matrices(weights, H, config)` is a pure tensor function. It reads side by side with SPQR.md's algorithm:
H -> dead columns -> permutation -> damping -> U = chol(H^-1) upper -> outlier threshold -> column sweep in blocks
(group statistics fitted at each group's first column on the error-updated weights, outlier-aware) -> unpermute.

Several matrices that read the same input (q, k, v, or gate, up) share H and are solved in one sweep: rows are
independent in GPTQ, and every per-matrix quantity (the outlier threshold, second-level row groups) is kept per matrix,
so the result equals solving each matrix alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import QuantConfig
from .minmax import dequantize, minmax_params, quantize, quantize_dequantize, quantize_grouped_stat
from .representation import QuantizedWeight, csr_from_mask

# Leave-one-out works on [rows, g, g] tensors; rows are chunked to keep one chunk under this many elements.
_LOO_CHUNK_ELEMENTS = 1 << 24


class SolverError(ValueError):
    """Inputs the solver cannot quantize (bad shapes, non-finite values, a Hessian that is not positive definite)."""


# ---------------------------------------------------------------------------------------------------------------------
# Outlier-aware statistics
# ---------------------------------------------------------------------------------------------------------------------
def loo_error_reduction(wg: torch.Tensor, dg: torch.Tensor, maxq: int) -> torch.Tensor:
    """How much each weight's removal from its row's min-max fit lowers the row's Hessian-weighted group error.

    wg: [rows, g] one column group of weights; dg: [g] the diagonal of U (chol(H^-1)) for those columns.
    The error of a fit is sum_j ((w_j - Q(w_j)) / d_j)^2 over the weights it quantizes; leaving weight k out, it is
    fitted on and summed over the other g - 1 weights. Returns base_error - loo_error_k, [rows, g], all k at once.
    """
    rows, g = wg.shape
    if g < 2:
        return torch.zeros_like(wg)
    inv_d = 1.0 / dg  # [g]
    scale, zero = minmax_params(wg.amin(1, keepdim=True), wg.amax(1, keepdim=True), maxq)  # [rows, 1]
    base = ((wg - quantize_dequantize(wg, scale, zero, maxq)) * inv_d).square().sum(1, keepdim=True)  # [rows, 1]

    # Min and max without weight k: the runner-up where w_k is the extreme, else the extreme itself (exact with ties).
    low2 = wg.topk(2, dim=1, largest=False).values  # [rows, 2]
    high2 = wg.topk(2, dim=1, largest=True).values  # [rows, 2]
    loo_min = torch.where(wg == low2[:, :1], low2[:, 1:], low2[:, :1])  # [rows, g]
    loo_max = torch.where(wg == high2[:, :1], high2[:, 1:], high2[:, :1])  # [rows, g]
    loo_scale, loo_zero = minmax_params(loo_min, loo_max, maxq)  # [rows, g]

    off_diagonal = ~torch.eye(g, dtype=torch.bool, device=wg.device)  # [g(k), g(j)]
    loo = torch.empty_like(wg)
    step = max(1, _LOO_CHUNK_ELEMENTS // (g * g))
    for r0 in range(0, rows, step):
        w = wg[r0 : r0 + step, None, :]  # [chunk, 1, g(j)]
        s, z = loo_scale[r0 : r0 + step, :, None], loo_zero[r0 : r0 + step, :, None]  # [chunk, g(k), 1]
        err = ((w - quantize_dequantize(w, s, z, maxq)) * inv_d).square()  # [chunk, g(k), g(j)]
        loo[r0 : r0 + step] = (err * off_diagonal).sum(-1)
    return base - loo


@dataclass
class _StatStore:
    """First-level statistics of every column group, as they will be stored."""

    fp: torch.Tensor | None  # fp16 [rows, n_groups]
    codes: torch.Tensor | None  # uint8 [rows, n_groups]
    stats: torch.Tensor | None  # fp16 [rows // beta2, n_groups, 2]

    @classmethod
    def empty(cls, rows: int, n_groups: int, bits: int | None, beta2: int | None, device) -> _StatStore:
        if bits is None:
            return cls(torch.empty(rows, n_groups, dtype=torch.float16, device=device), None, None)
        return cls(
            None,
            torch.empty(rows, n_groups, dtype=torch.uint8, device=device),
            torch.empty(rows // beta2, n_groups, 2, dtype=torch.float16, device=device),
        )

    def put(self, group: int, values: torch.Tensor, bits: int | None, beta2: int | None) -> torch.Tensor:
        """Store one group's statistic [rows] and return its dequantized value [rows] (what the weights see)."""
        if bits is None:
            self.fp[:, group] = values.half()
            return self.fp[:, group].float()
        codes, stats, deq = quantize_grouped_stat(values, bits, beta2)
        self.codes[:, group] = codes
        self.stats[:, group] = stats
        return deq

    def rows(self, r0: int, r1: int, beta2: int | None):
        if self.fp is not None:
            return self.fp[r0:r1], None, None
        return None, self.codes[r0:r1], self.stats[r0 // beta2 : r1 // beta2]


def fit_group_reference(
    wg: torch.Tensor, dg: torch.Tensor, threshold: torch.Tensor | None, config: QuantConfig, maxq: int,
    scales: _StatStore, zeros: _StatStore, group: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit one column group's statistics on its current weights wg [rows, g] and store them (as codes + second-level
    stats, or fp16) in column `group` of `scales` / `zeros`. Returns the dequantized scale and zero [rows, 1], which
    the group's weights are quantized with.

    SpQR's robust fit: weights whose leave-one-out error reduction exceeds the outlier threshold are likely outliers
    and are replaced by the mean of the row's other weights for the min-max fit only. This is the plain-torch
    reference of the fused fit kernel.
    """
    if threshold is not None:
        likely_outlier = loo_error_reduction(wg, dg, maxq) > threshold  # [rows, g]
        keep = (~likely_outlier).to(wg.dtype)
        mean_kept = (wg * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)  # [rows, 1]
        wg = torch.where(likely_outlier, mean_kept, wg)
    s, z = minmax_params(wg.amin(1), wg.amax(1), maxq, round_zero=config.round_zero)  # [rows]
    s_hat = scales.put(group, s, config.scale_bits, config.beta2)
    z_hat = zeros.put(group, z, config.zero_bits, config.beta2)
    return s_hat[:, None], z_hat[:, None]


def sweep_chunk_reference(
    Wc: torch.Tensor, Uc: torch.Tensor | None, scale: torch.Tensor, zero: torch.Tensor,
    threshold: torch.Tensor | None, maxq: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Quantize a chunk of consecutive columns Wc [rows, C] that share one group's (dequantized) scale, zero [rows, 1].

    Uc [C, C] is the chunk's block of U = chol(H^-1) upper; the error of each column updates the chunk's later
    columns (GPTQ). Uc None = no error feedback (RTN; then d = 1). On return Wc holds the dequantized weights
    (outliers keep their fp16-rounded value). Returns codes uint8 [rows, C], the outlier mask (None without
    outliers) and the scaled errors (w - w_hat) / d [rows, C] that the caller propagates to the columns right of the
    chunk. This is the plain-torch reference of every fused chunk kernel.
    """
    rows, C = Wc.shape
    if Uc is None:
        columns = [slice(0, C)]  # columns are independent: all at once
        d = torch.ones(1, C, dtype=Wc.dtype, device=Wc.device)
    else:
        columns = [slice(j, j + 1) for j in range(C)]
        d = torch.diagonal(Uc)[None, :]  # [1, C]
    codes = torch.empty(rows, C, dtype=torch.uint8, device=Wc.device)
    errors = torch.empty(rows, C, dtype=Wc.dtype, device=Wc.device)
    outliers = None if threshold is None else torch.empty(rows, C, dtype=torch.bool, device=Wc.device)
    for cols in columns:
        w = Wc[:, cols]  # [rows, 1] (or [rows, C] without feedback)
        q = quantize(w, scale, zero, maxq)
        w_hat = dequantize(q, scale, zero)
        err = (w - w_hat) / d[:, cols]
        if threshold is not None:
            is_outlier = err.square() > threshold
            w_hat = torch.where(is_outlier, w.half().float(), w_hat)
            err = (w - w_hat) / d[:, cols]
            outliers[:, cols] = is_outlier
        codes[:, cols], errors[:, cols] = q.to(torch.uint8), err
        Wc[:, cols] = w_hat
        if Uc is not None and cols.stop < C:
            Wc[:, cols.stop :].addmm_(err, Uc[cols, cols.stop :], alpha=-1)  # rank-1: W[:, j+1:] -= err U[j, j+1:]
    return codes, outliers, errors


# ---------------------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------------------
def _inverse_cholesky_upper(H: torch.Tensor) -> torch.Tensor:
    """U with U^T U = H^-1 (upper Cholesky factor of the inverse), computed in fp64 for robustness."""
    L, info = torch.linalg.cholesky_ex(H.double())
    if int(info) != 0:
        raise SolverError("the damped Hessian is not positive definite; raise percdamp")
    # cholesky_solve against I rather than cholesky_inverse: the latter is 30x slower on some CPU builds.
    H_inv = torch.cholesky_solve(torch.eye(H.shape[0], dtype=L.dtype, device=L.device), L)
    U, info = torch.linalg.cholesky_ex(H_inv, upper=True)
    if int(info) != 0:
        raise SolverError("the inverse Hessian is not positive definite; raise percdamp")
    return U.float()


def chunk_width(group_size: int, limit: int = 32) -> int:
    """Columns swept per chunk: the largest divisor of the group size up to `limit`, so that no chunk straddles two
    groups (with one group per row, any width works: see `_sweep`)."""
    return max(c for c in range(1, min(group_size, limit) + 1) if group_size % c == 0)


def _sweep(
    W: torch.Tensor, U: torch.Tensor | None, d: torch.Tensor, threshold: torch.Tensor | None, config: QuantConfig,
    kernels=None,
):
    """GPTQ/SpQR column sweep over W [rows, in] (permuted). U None = RTN (no error feedback).

    On return W holds the dequantized weights. Columns go in blocks (the columns right of a block get its errors in
    one matmul) and, inside a block, in chunks that lie within one group (the rest of the block gets a chunk's errors
    in one matmul); `kernels` = (fit_group, sweep_chunk) do a group's fit and the column-by-column work inside a
    chunk (the plain-torch references by default).
    """
    fit_group, sweep_chunk = kernels or (fit_group_reference, sweep_chunk_reference)
    rows, n = W.shape
    maxq = 2**config.wbits - 1
    g1 = config.group_size(n)
    n_groups = math.ceil(n / g1)
    # A block must hold whole groups, so that a group is fitted on weights that all received every earlier update.
    block = config.blocksize if config.beta1 is None else math.ceil(config.blocksize / g1) * g1
    if U is None:
        chunk = g1 if config.beta1 is not None else block  # no feedback: a chunk is quantized at once
    else:
        chunk = 32 if config.beta1 is None else chunk_width(g1)

    codes = torch.empty(rows, n, dtype=torch.uint8, device=W.device)
    outliers = torch.zeros(rows, n, dtype=torch.bool, device=W.device)
    scales = _StatStore.empty(rows, n_groups, config.scale_bits, config.beta2, W.device)
    zeros = _StatStore.empty(rows, n_groups, config.zero_bits, config.beta2, W.device)
    thr = None if threshold is None else threshold[:, None]  # [rows, 1]

    scale = zero = None
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        Errb = torch.empty(rows, b1 - b0, dtype=torch.float32, device=W.device)  # [rows, block]
        for c0 in range(b0, b1, chunk):
            c1 = min(c0 + chunk, b1)
            if c0 % g1 == 0:  # a group starts: fit its statistics on the current, error-updated weights
                g_end = min(c0 + g1, n)
                scale, zero = fit_group(W[:, c0:g_end], d[c0:g_end], thr, config, maxq, scales, zeros, c0 // g1)
            Uc = None if U is None else U[c0:c1, c0:c1]
            q, out, err = sweep_chunk(W[:, c0:c1], Uc, scale, zero, thr, maxq)
            codes[:, c0:c1] = q
            if out is not None:
                outliers[:, c0:c1] = out
            if U is not None:
                Errb[:, c0 - b0 : c1 - b0] = err
                W[:, c1:b1].addmm_(err, U[c0:c1, c1:b1], alpha=-1)  # the chunk's errors, to the rest of the block
        if U is not None:
            W[:, b1:].addmm_(Errb, U[b0:b1, b1:], alpha=-1)  # the lazy update of the columns right of the block
    return codes, outliers, scales, zeros


# ---------------------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------------------
def outlier_threshold_scale(W: torch.Tensor, d: torch.Tensor) -> float:
    """SPQR.md step 5: mean over columns of (variance over rows of W[:, j]) / d_j^2, for one matrix."""
    correction = 1 if W.shape[0] > 1 else 0
    return float((W.var(dim=0, correction=correction) / d.square()).mean())


def select_solver_kernels(device: torch.device, config: QuantConfig, kernel: str = "auto"):
    """(fit_group, sweep_chunk) for a device: fused Triton kernels on CUDA when Triton is installed and the layout
    fits them (groups of at most 64 columns, beta2 at most 64), else the plain-torch references.

    kernel: "auto", "reference" or "triton" (an explicit "triton" fails loudly where Triton is missing).
    """
    if kernel not in ("auto", "reference", "triton"):
        raise ValueError(f"kernel must be 'auto', 'reference' or 'triton', got {kernel!r}")
    reference = (fit_group_reference, sweep_chunk_reference)
    if kernel == "reference" or (kernel == "auto" and device.type != "cuda"):
        return reference
    try:
        from .solver_triton import fit_group_triton, sweep_chunk_triton
    except ImportError:
        if kernel == "triton":
            raise
        return reference

    def fit_group(wg, dg, threshold, config, maxq, scales, zeros, group):
        if wg.shape[1] > 64 or (config.beta2 or 0) > 64:
            return fit_group_reference(wg, dg, threshold, config, maxq, scales, zeros, group)
        return fit_group_triton(wg, dg, threshold, config, maxq, scales, zeros, group)

    def sweep_chunk(Wc, Uc, scale, zero, threshold, maxq):
        if Uc is None or Wc.shape[1] > 64:  # RTN has no column loop to fuse
            return sweep_chunk_reference(Wc, Uc, scale, zero, threshold, maxq)
        return sweep_chunk_triton(Wc, Uc, scale, zero, threshold, maxq)

    return fit_group, sweep_chunk


def quantize_matrices(
    weights: list[torch.Tensor], H: torch.Tensor | None, config: QuantConfig, *, kernel: str = "auto"
) -> list[QuantizedWeight]:
    """Quantize matrices [out_i, in] that share one input (hence one Hessian H [in, in]) with SpQR / GPTQ / RTN.

    H is the running mean of 2 x x^T over calibration inputs (fp32); it is ignored (may be None) for RTN.
    Runs on the device of the weights; the inputs are not modified. `kernel` picks the chunk sweeper
    (see `select_solver_kernels`).
    """
    if not weights:
        raise SolverError("no matrices to quantize")
    n = weights[0].shape[-1]
    for i, w in enumerate(weights):
        if w.dim() != 2 or w.shape[1] != n:
            raise SolverError(f"matrix {i} has shape {tuple(w.shape)}; all matrices must be 2-D with {n} columns")
        if config.beta2 is not None and w.shape[0] % config.beta2 != 0:
            raise SolverError(f"matrix {i} has {w.shape[0]} rows, not divisible by beta2={config.beta2}")
        if not torch.isfinite(w).all():
            raise SolverError(f"matrix {i} contains NaN or Inf")
    device = weights[0].device
    W = torch.cat([w.detach().to(device=device, dtype=torch.float32) for w in weights])  # [rows, in], a copy
    row_splits = [w.shape[0] for w in weights]

    if config.algorithm == "rtn":
        perm = torch.arange(n, device=device)
        U = None
        d = torch.ones(n, device=device)  # no Hessian: every column weighs the same
    else:
        if H is None:
            raise SolverError(f"algorithm {config.algorithm!r} needs a Hessian")
        if H.shape != (n, n):
            raise SolverError(f"Hessian has shape {tuple(H.shape)}, expected ({n}, {n})")
        H = H.detach().to(device=device, dtype=torch.float32).clone()
        if not torch.isfinite(H).all():
            raise SolverError("Hessian contains NaN or Inf")
        dead = torch.diag(H) == 0
        H[dead, dead] = 1  # an input that is always zero: any value works, its weights are zeroed
        W[:, dead] = 0
        if config.act_order:
            perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        else:
            perm = torch.arange(n, device=device)
        W = W[:, perm]
        H = H[perm][:, perm]
        H.diagonal().add_(config.percdamp * torch.diag(H).mean())
        U = _inverse_cholesky_upper(H)
        d = torch.diag(U)

    threshold = None
    if config.has_outliers:
        per_matrix = [
            torch.full((rows,), config.outlier_threshold * outlier_threshold_scale(Wi, d), device=device)
            for rows, Wi in zip(row_splits, W.split(row_splits))
        ]
        threshold = torch.cat(per_matrix)  # [rows]

    # After the sweep W is the dequantized weight; at an outlier it holds the fp16-rounded weight as it was when its
    # column was reached (after earlier updates).
    codes, outliers, scales, zeros = _sweep(W, U, d, threshold, config, select_solver_kernels(W.device, config, kernel))

    results = []
    r0 = 0
    for rows in row_splits:
        r1 = r0 + rows
        mask = outliers[r0:r1]
        row_ptr, outlier_cols = csr_from_mask(mask)
        scale, zero = (tuple(None if t is None else t.clone() for t in stat.rows(r0, r1, config.beta2))
                       for stat in (scales, zeros))
        results.append(QuantizedWeight.from_statistics(
            config, (rows, n), perm.clone(), codes[r0:r1].clone(), scale, zero, row_ptr, outlier_cols,
            W[r0:r1][mask].half(),
        ))
        r0 = r1
    return results


def layer_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """Relative Hessian-weighted error tr(dW H dW^T) / tr(W H W^T) of a quantized layer."""
    W, W_hat, H = W.float(), W_hat.float().to(W.device), H.float().to(W.device)
    dW = W - W_hat
    return float(((dW @ H) * dW).sum() / ((W @ H) * W).sum())
