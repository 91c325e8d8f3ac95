"""Asymmetric min-max quantization primitives shared by weights and statistics.

A value x is coded as q = clamp(round(x / s + z), 0, maxq) and dequantized as s * (q - z). The range [xmin, xmax] is
NOT forced to contain 0 and z is real-valued unless asked to round (SpQR, unlike GPTQ's default).
"""

from __future__ import annotations

import torch


def minmax_params(
    xmin: torch.Tensor, xmax: torch.Tensor, maxq: int, *, round_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero that map [xmin, xmax] onto the code range [0, maxq]. Shapes broadcast elementwise.

    A degenerate range (xmax == xmin == c) gets scale 1 and zero -c: code 0 then reproduces c exactly, which keeps
    dead (all-zero) column groups exactly zero.
    """
    rng = xmax - xmin
    degenerate = rng <= 0
    scale = torch.where(degenerate, torch.ones_like(rng), rng / maxq)
    zero = -xmin / scale
    if round_zero:
        zero = torch.round(zero)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes (same float dtype as x) of x under (scale, zero); a zero scale codes everything as round(z)."""
    safe_scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round(x / safe_scale + zero), 0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return dequantize(quantize(x, scale, zero, maxq), scale, zero)


def quantize_grouped_stat(
    values: torch.Tensor, bits: int, group_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Second-level quantization of one column group's first-level statistics.

    values: [rows] (a first-level scale or zero per output row). Consecutive `group_rows` rows share one min-max
    quantizer whose own scale and zero are stored in fp16 (rounded here, so the simulation matches storage).
    Returns (codes uint8 [rows], stats fp16 [rows // group_rows, 2] as (scale, zero), dequantized fp32 [rows]).
    """
    maxq = 2**bits - 1
    v = values.float().reshape(-1, group_rows)  # [rows // beta2, beta2]
    scale, zero = minmax_params(v.amin(dim=1), v.amax(dim=1), maxq)  # [rows // beta2]
    scale16, zero16 = scale.half(), zero.half()
    s, z = scale16.float()[:, None], zero16.float()[:, None]
    codes = quantize(v, s, z, maxq)
    deq = dequantize(codes, s, z)
    return codes.to(torch.uint8).reshape(-1), torch.stack([scale16, zero16], dim=1), deq.reshape(-1)
