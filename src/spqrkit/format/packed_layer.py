"""`PackedLayer`: one quantized linear's stored tensors and layout integers as the kernels take them.

The stored tensors are those of `spec.layer_tensor_specs` (docs/format.md), by reference: no copy, no decoding.
Where the format stores a statistic either as codes + second-level stats or as fp16 values, `scale` / `zero` hold
whichever is stored and `scale_stats` / `zero_stats` are None for fp16 statistics; the layout integers use 0 for
"none" (group 0: one group per row; beta2 0: no second level; scale_bits / zero_bits 0: fp16 statistics), which is
what the kernels compile on. torch.library custom ops take flat tensors and integers: `flat_tensors` /
`flat_layout` and `from_flat` are the two directions of that flattening.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..config import QuantConfig


@dataclass(slots=True)
class PackedLayer:
    """The packed form of W [out_features, in_features] (n_groups = ceil(in / group), or 1 for group 0;
    words(n, b) = ceil(n / 32) * b int32 words of n b-bit codes; nnz = number of outliers)."""

    codes: Tensor  # int32 [out, words(in, wbits)]: wbits-bit codes, rows in permuted column order
    scale: Tensor  # int32 [out, words(n_groups, scale_bits)] codes, or fp16 [out, n_groups] when scale_bits == 0
    scale_stats: Tensor | None  # fp16 [out / beta2, n_groups, 2]: second-level (scale, zero); None when fp16
    zero: Tensor  # int32 [out, words(n_groups, zero_bits)] codes, or fp16 [out, n_groups] when zero_bits == 0
    zero_stats: Tensor | None  # fp16 [out / beta2, n_groups, 2]; None when fp16
    row_ptr: Tensor  # int32 [out + 1]: CSR row pointers of the outliers
    cols: Tensor  # int16 [nnz]: each outlier's permuted column (read as unsigned)
    vals: Tensor  # fp16 [nnz]: each outlier's weight, replacing the base weight there
    perm: Tensor  # int16 [in]: perm[j] = original input column of permuted column j (read as unsigned)
    in_features: int
    out_features: int
    wbits: int  # bits per code, 1..8
    group: int  # beta1: columns per first-level group; 0 = one group per row
    beta2: int  # rows per second-level group; 0 = none (fp16 statistics)
    scale_bits: int  # bits of the scale codes; 0 = fp16 scales
    zero_bits: int  # bits of the zero codes; 0 = fp16 zeros
    bases: Tensor | None = None  # derived, not stored: fp32 [nnz] base weight at each outlier, or None

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], out_features: int, in_features: int,
                     config: QuantConfig, bases: Tensor | None = None) -> PackedLayer:
        """From stored tensors by name (`spec.layer_tensor_specs`; e.g. a layer's buffers), with `bases`."""
        quantized_scale = config.scale_bits is not None
        quantized_zero = config.zero_bits is not None
        return cls(
            tensors["codes"],
            tensors["scale_codes"] if quantized_scale else tensors["scale"],
            tensors["scale_stats"] if quantized_scale else None,
            tensors["zero_codes"] if quantized_zero else tensors["zero"],
            tensors["zero_stats"] if quantized_zero else None,
            tensors["outlier_row_ptr"], tensors["outlier_cols"], tensors["outlier_values"], tensors["perm"],
            in_features, out_features, config.wbits, config.beta1 or 0, config.beta2 or 0, config.scale_bits or 0,
            config.zero_bits or 0, bases,
        )

    def with_bases(self, bases: Tensor | None) -> PackedLayer:
        """The same layer carrying the derived outlier base weights (None: without); a new object."""
        return PackedLayer(*self.flat_tensors(), *self.flat_layout(), bases)

    def stored_tensors(self) -> tuple[Tensor | None, ...]:
        """(codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals): what the outlier bases and the
        dequantized weight are computed from (perm aside)."""
        return (self.codes, self.scale, self.scale_stats, self.zero, self.zero_stats, self.row_ptr, self.cols,
                self.vals)

    def flat_tensors(self) -> tuple[Tensor | None, ...]:
        """`stored_tensors` and perm: the tensor arguments of the custom ops, in `from_flat`'s order."""
        return (*self.stored_tensors(), self.perm)

    def flat_layout(self) -> tuple[int, int, int, int, int, int, int]:
        """(in_features, out_features, wbits, group, beta2, scale_bits, zero_bits): the integer arguments."""
        return (self.in_features, self.out_features, self.wbits, self.group, self.beta2, self.scale_bits,
                self.zero_bits)

    @classmethod
    def from_flat(cls, tensors, layout, bases: Tensor | None = None) -> PackedLayer:
        """The inverse of (`flat_tensors`, `flat_layout`), with `bases`."""
        return cls(*tensors, *layout, bases=bases)
