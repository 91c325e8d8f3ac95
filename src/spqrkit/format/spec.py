"""The compressed SpQR checkpoint format: its name, version and, for every stored tensor, dtype and shape.

`docs/format.md` is the specification in prose; this module is its single executable source: the writer, the
reader's checks, the quantized module's buffers and `pack.real_bits` all take shapes from
`layer_tensor_specs`. Nothing here touches tensor data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import QuantConfig

QUANT_METHOD = "spqrkit"  # transformers' `quant_method` key; "spqr" belongs to transformers' own SpQR loader
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

CODES_PER_CHUNK = 32  # codes of one chunk; a chunk of b-bit codes is b consecutive int32 words
MAX_IN_FEATURES = 1 << 16  # column indices (perm, outlier columns) are unsigned 16-bit

MANIFEST_FILE = "spqrkit_manifest.json"
SINGLE_SHARD_FILE = "model.safetensors"
SHARD_INDEX_FILE = "model.safetensors.index.json"


class FormatError(ValueError):
    """A checkpoint, or a tensor of one, that does not follow the format specification."""


@dataclass(frozen=True)
class TensorSpec:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def packed_words(n_values: int, bits: int) -> int:
    """int32 words holding `n_values` codes of `bits` bits: whole 32-code chunks of `bits` words each."""
    return math.ceil(n_values / CODES_PER_CHUNK) * bits


def padded_columns(in_features: int) -> int:
    """in_pad: input columns rounded up to whole 32-code chunks."""
    return math.ceil(in_features / CODES_PER_CHUNK) * CODES_PER_CHUNK


def n_groups(in_features: int, config: QuantConfig) -> int:
    return math.ceil(in_features / config.group_size(in_features))


# Quantized-layer tensor names (suffixes of the module name), in the order they are written.
CODE_TENSORS = ("codes",)
FP16_STAT_TENSORS = ("scale", "zero")
OUTLIER_TENSORS = ("outlier_row_ptr", "outlier_cols", "outlier_values")
PERM_TENSORS = ("perm",)
ALL_LAYER_TENSORS = (
    "codes", "scale", "zero", "scale_codes", "scale_stats", "zero_codes", "zero_stats",
    "outlier_row_ptr", "outlier_cols", "outlier_values", "perm",
)
NNZ_TENSORS = ("outlier_cols", "outlier_values")  # the only shapes not fixed by (out, in, config)


def check_layer_shape(out_features: int, in_features: int, config: QuantConfig, where: str = "layer") -> None:
    """Shapes this format cannot store, refused with the reason."""
    if out_features < 1 or in_features < 1:
        raise FormatError(f"{where}: shape ({out_features}, {in_features}) is empty")
    if in_features > MAX_IN_FEATURES:
        raise FormatError(
            f"{where}: in_features={in_features} exceeds {MAX_IN_FEATURES}, the most that 16-bit column indices "
            f"(perm, outlier columns) can address in format version {FORMAT_VERSION}"
        )
    if config.beta2 is not None and out_features % config.beta2:
        raise FormatError(f"{where}: out_features={out_features} is not a multiple of beta2={config.beta2}")


def layer_tensor_specs(
    out_features: int, in_features: int, config: QuantConfig, n_outliers: int
) -> dict[str, TensorSpec]:
    """Every tensor one quantized linear stores, by name suffix: dtype and shape (docs/format.md, section Tensors)."""
    check_layer_shape(out_features, in_features, config)
    out, n_in, g = out_features, in_features, n_groups(in_features, config)
    specs = {"codes": TensorSpec(torch.int32, (out, packed_words(n_in, config.wbits)))}
    for name, bits in (("scale", config.scale_bits), ("zero", config.zero_bits)):
        if bits is None:
            specs[name] = TensorSpec(torch.float16, (out, g))
        else:
            specs[f"{name}_codes"] = TensorSpec(torch.int32, (out, packed_words(g, bits)))
            specs[f"{name}_stats"] = TensorSpec(torch.float16, (out // config.beta2, g, 2))
    specs["outlier_row_ptr"] = TensorSpec(torch.int32, (out + 1,))
    specs["outlier_cols"] = TensorSpec(torch.int16, (n_outliers,))
    specs["outlier_values"] = TensorSpec(torch.float16, (n_outliers,))
    specs["perm"] = TensorSpec(torch.int16, (n_in,))
    return {name: specs[name] for name in ALL_LAYER_TENSORS if name in specs}


def layer_bits(out_features: int, in_features: int, config: QuantConfig, n_outliers: int) -> int:
    """Bits one quantized linear occupies in this format (the sum of its tensors' bytes, times 8)."""
    return 8 * sum(spec.nbytes for spec in layer_tensor_specs(out_features, in_features, config, n_outliers).values())


def row_split_multiple(config: QuantConfig) -> int:
    """Rows of a layer may be split (tensor parallel) at multiples of this: whole second-level groups."""
    return config.beta2 or 1


def column_split_multiple(config: QuantConfig) -> int:
    """Permuted columns of a layer may be split at multiples of this: whole code chunks and whole groups."""
    return math.lcm(CODES_PER_CHUNK, config.beta1 or 1)


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors header name of a dtype."""
    return _SAFETENSORS_NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype | None:
    return _SAFETENSORS_DTYPES.get(name)


_SAFETENSORS_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_SAFETENSORS_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_NAMES.items()}
