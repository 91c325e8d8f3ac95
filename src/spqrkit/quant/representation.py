"""The in-memory SpQR representation of one linear weight, and its plain-torch dequantization.

Layout (all column indices are in the PERMUTED order; `perm[c]` is the original column of permuted column c):
  codes          uint8 [out, in]           base codes in 0 .. 2**wbits - 1
  scale / zero   fp16  [out, n_groups]     first-level statistics, when stored in fp16 (scale_bits / zero_bits None)
  scale_codes    uint8 [out, n_groups]     first-level scales quantized to scale_bits (second level), else None
  scale_stats    fp16  [out // beta2, n_groups, 2]   (scale, zero) of the second-level quantizer of the scales
  zero_codes / zero_stats                  the same for the zeros
  outlier_row_ptr int32 [out + 1], outlier_cols int32 [nnz], outlier_values fp16 [nnz]   CSR outliers
n_groups = ceil(in / beta1) (1 when beta1 is None); the last group may be narrower.
An outlier REPLACES the base weight at its position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import QuantConfig


@dataclass
class QuantizedWeight:
    config: QuantConfig
    shape: tuple[int, int]  # (out, in)
    perm: torch.Tensor  # int64 [in]
    codes: torch.Tensor  # uint8 [out, in]
    scale: torch.Tensor | None  # fp16 [out, n_groups]
    zero: torch.Tensor | None  # fp16 [out, n_groups]
    scale_codes: torch.Tensor | None  # uint8 [out, n_groups]
    scale_stats: torch.Tensor | None  # fp16 [out // beta2, n_groups, 2]
    zero_codes: torch.Tensor | None
    zero_stats: torch.Tensor | None
    outlier_row_ptr: torch.Tensor  # int32 [out + 1]
    outlier_cols: torch.Tensor  # int32 [nnz]
    outlier_values: torch.Tensor  # fp16 [nnz]

    @classmethod
    def from_statistics(cls, config: QuantConfig, shape: tuple[int, int], perm: torch.Tensor, codes: torch.Tensor,
                        scale: tuple, zero: tuple, outlier_row_ptr: torch.Tensor, outlier_cols: torch.Tensor,
                        outlier_values: torch.Tensor) -> QuantizedWeight:
        """Build from each statistic as one (fp16 values or None, second-level codes or None, second-level stats or
        None) triple, the form the solver, the unpacker and the synthetic layers produce."""
        (s_fp, s_codes, s_stats), (z_fp, z_codes, z_stats) = scale, zero
        return cls(config=config, shape=shape, perm=perm, codes=codes, scale=s_fp, zero=z_fp, scale_codes=s_codes,
                   scale_stats=s_stats, zero_codes=z_codes, zero_stats=z_stats, outlier_row_ptr=outlier_row_ptr,
                   outlier_cols=outlier_cols, outlier_values=outlier_values)

    # ------------------------------------------------------------------ sizes
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def group_size(self) -> int:
        return self.config.group_size(self.in_features)

    @property
    def n_groups(self) -> int:
        return math.ceil(self.in_features / self.group_size)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def n_outliers(self) -> int:
        return int(self.outlier_values.numel())

    @property
    def outlier_share(self) -> float:
        return self.n_outliers / self.numel

    @property
    def paper_bits(self) -> float:
        """Total bits by the paper's Eq. 4 (no row pointers, permutation or padding)."""
        return self.numel * self.config.paper_avg_bits(self.in_features, self.outlier_share)

    # ------------------------------------------------------------------ dequantization
    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized first-level (scale, zero), fp32 [out, n_groups]."""
        return (
            _dequantize_stat(self.scale, self.scale_codes, self.scale_stats, self.config.beta2),
            _dequantize_stat(self.zero, self.zero_codes, self.zero_stats, self.config.beta2),
        )

    def dequantize_permuted(self) -> torch.Tensor:
        """fp32 [out, in] in permuted column order, outliers in place."""
        scale, zero = self.statistics()  # [out, n_groups]
        group_of_col = torch.arange(self.in_features, device=self.codes.device) // self.group_size  # [in]
        w = scale[:, group_of_col] * (self.codes.float() - zero[:, group_of_col])  # [out, in]
        rows, cols = self.outlier_coo()
        w[rows, cols] = self.outlier_values.float()
        return w

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in] in the original column order."""
        w_perm = self.dequantize_permuted()
        w = torch.empty_like(w_perm)
        w[:, self.perm] = w_perm
        return w

    def outlier_coo(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, permuted column) int64 [nnz] each, from the CSR row pointers."""
        counts = (self.outlier_row_ptr[1:] - self.outlier_row_ptr[:-1]).long()  # [out]
        rows = torch.repeat_interleave(  # output_size: no device-to-host sync (CUDA graphs, torch.compile)
            torch.arange(self.out_features, device=counts.device), counts, output_size=self.n_outliers
        )
        return rows, self.outlier_cols.long()

    def to(self, device: torch.device | str) -> QuantizedWeight:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return QuantizedWeight(**moved)


def csr_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outlier positions as CSR: bool mask [rows, cols] -> (row_ptr int32 [rows + 1], column int32 [nnz]) in
    row-major order, the order the stored outlier values must follow (`w[mask]`)."""
    row_ptr = torch.zeros(mask.shape[0] + 1, dtype=torch.int32, device=mask.device)
    row_ptr[1:] = torch.cumsum(mask.sum(1), 0)
    return row_ptr, mask.nonzero()[:, 1].to(torch.int32)


def _dequantize_stat(
    fp: torch.Tensor | None, codes: torch.Tensor | None, stats: torch.Tensor | None, beta2: int | None
) -> torch.Tensor:
    if codes is None:
        return fp.float()
    rows, n_groups = codes.shape
    c = codes.float().reshape(rows // beta2, beta2, n_groups)  # [out // beta2, beta2, n_groups]
    s = stats[..., 0].float()[:, None, :]  # [out // beta2, 1, n_groups]
    z = stats[..., 1].float()[:, None, :]
    return (s * (c - z)).reshape(rows, n_groups)
