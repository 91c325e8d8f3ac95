"""Plain-torch reference of the format: bit packing, packing a QuantizedWeight into its stored tensors, and back.

Every function here is exact (integer arithmetic, or a copy of stored values); fast kernels are tested against
`dequantize_packed`, which equals `QuantizedWeight.dequantize()` bit for bit because it IS that function applied to
the unpacked representation.
"""

from __future__ import annotations

import torch

from ..config import QuantConfig
from ..quant.representation import QuantizedWeight
from .spec import (
    CODES_PER_CHUNK,
    FormatError,
    check_layer_shape,
    layer_bits,
    layer_tensor_specs,
    n_groups,
)

_WORD_MASK = (1 << 32) - 1


# ---------------------------------------------------------------------------------------------------- bit packing
def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes [..., n] (each < 2**bits) into int32 words [..., ceil(n / 32) * bits].

    The codes are padded with 0 to whole 32-code chunks. Chunk j of a row is the `bits` words
    [j * bits, (j + 1) * bits); code i of the chunk occupies bits [i * bits, (i + 1) * bits) of the chunk's
    32 * bits-bit little-endian string, whose bits [32 k, 32 k + 32) are word k (bit 0 = least significant).
    """
    if not 1 <= bits <= 8:
        raise FormatError(f"bits must be in 1..8, got {bits}")
    if codes.is_floating_point() or codes.is_complex():
        raise FormatError(f"codes must be an integer tensor, got {codes.dtype}")
    n = codes.shape[-1]
    n_chunks = -(-n // CODES_PER_CHUNK)
    values = torch.zeros(*codes.shape[:-1], n_chunks * CODES_PER_CHUNK, dtype=torch.int64, device=codes.device)
    values[..., :n] = codes.to(torch.int64)
    if n and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
        raise FormatError(f"codes must lie in [0, {1 << bits}) for {bits}-bit packing")
    values = values.reshape(*codes.shape[:-1], n_chunks, CODES_PER_CHUNK)  # [..., n_chunks, 32]
    words = torch.zeros(*codes.shape[:-1], n_chunks, bits, dtype=torch.int64, device=codes.device)
    for i in range(CODES_PER_CHUNK):
        word, offset = divmod(i * bits, 32)
        v = values[..., i]  # [..., n_chunks]
        words[..., word] |= (v << offset) & _WORD_MASK
        if offset + bits > 32:  # the code straddles two words: its high bits start the next one
            words[..., word + 1] |= v >> (32 - offset)
    return _u32_to_int32(words.reshape(*codes.shape[:-1], n_chunks * bits))


def unpack_codes(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: int32 words [..., ceil(n / 32) * bits] -> codes uint8 [..., n]."""
    if not 1 <= bits <= 8:
        raise FormatError(f"bits must be in 1..8, got {bits}")
    n_chunks = -(-n // CODES_PER_CHUNK)
    if words.dtype != torch.int32 or words.shape[-1] != n_chunks * bits:
        raise FormatError(
            f"{n} codes of {bits} bits need int32 words [..., {n_chunks * bits}], got {words.dtype} "
            f"{tuple(words.shape)}"
        )
    w = (words.to(torch.int64) & _WORD_MASK).reshape(*words.shape[:-1], n_chunks, bits)  # [..., n_chunks, bits]
    mask = (1 << bits) - 1
    codes = torch.empty(*words.shape[:-1], n_chunks, CODES_PER_CHUNK, dtype=torch.int64, device=words.device)
    for i in range(CODES_PER_CHUNK):
        word, offset = divmod(i * bits, 32)
        v = w[..., word] >> offset
        if offset + bits > 32:
            v = v | (w[..., word + 1] << (32 - offset))
        codes[..., i] = v & mask
    return codes.reshape(*words.shape[:-1], n_chunks * CODES_PER_CHUNK)[..., :n].to(torch.uint8)


def _u32_to_int32(words: torch.Tensor) -> torch.Tensor:
    """Values in [0, 2**32) (int64) -> int32 with the same bit pattern."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def to_u16(indices: torch.Tensor) -> torch.Tensor:
    """Indices in [0, 65536) -> int16 holding the same 16 bits (values >= 32768 read as negative int16)."""
    indices = indices.to(torch.int64)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= 1 << 16):
        raise FormatError("16-bit column indices must lie in [0, 65536)")
    return torch.where(indices >= 1 << 15, indices - (1 << 16), indices).to(torch.int16)


def from_u16(stored: torch.Tensor) -> torch.Tensor:
    """int16 storage -> the unsigned indices it holds, int64."""
    return stored.to(torch.int64) & 0xFFFF


# ---------------------------------------------------------------------------------------------------- layers
def pack_layer(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The stored tensors of one quantized linear, by name suffix (docs/format.md), on the device of `qw`."""
    out, n_in = qw.shape
    config = qw.config
    check_layer_shape(out, n_in, config)
    tensors = {"codes": pack_codes(qw.codes, config.wbits)}
    for name, bits, fp, codes, stats in (
        ("scale", config.scale_bits, qw.scale, qw.scale_codes, qw.scale_stats),
        ("zero", config.zero_bits, qw.zero, qw.zero_codes, qw.zero_stats),
    ):
        if bits is None:
            tensors[name] = fp.to(torch.float16)
        else:
            tensors[f"{name}_codes"] = pack_codes(codes, bits)
            tensors[f"{name}_stats"] = stats.to(torch.float16)
    tensors["outlier_row_ptr"] = qw.outlier_row_ptr.to(torch.int32)
    tensors["outlier_cols"] = to_u16(qw.outlier_cols)
    tensors["outlier_values"] = qw.outlier_values.to(torch.float16)
    tensors["perm"] = to_u16(qw.perm)
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    check_layer_tensors(tensors, out, n_in, config, where="packed layer")
    return tensors


def real_bits(qw: QuantizedWeight) -> int:
    """Total bits of this layer in the compressed checkpoint format (docs/format.md), exactly its tensor bytes
    times 8: codes packed into whole 32-code chunks of int32 words (padding included), statistic codes packed
    the same way along the group axis with their fp16 second-level (scale, zero) pairs, or fp16 statistics; CSR
    outliers (fp16 value + 16-bit column per outlier, 32-bit row pointers); the 16-bit permutation."""
    return layer_bits(qw.out_features, qw.in_features, qw.config, qw.n_outliers)


def unpack_layer(tensors: dict[str, torch.Tensor], shape: tuple[int, int], config: QuantConfig) -> QuantizedWeight:
    """Inverse of `pack_layer`: the in-memory representation (uint8 codes, int64 perm, int32 outlier columns)."""
    out, n_in = shape
    g = n_groups(n_in, config)
    stats = {}
    for name, bits in (("scale", config.scale_bits), ("zero", config.zero_bits)):
        if bits is None:
            stats[name] = (tensors[name], None, None)
        else:
            stats[name] = (None, unpack_codes(tensors[f"{name}_codes"], bits, g), tensors[f"{name}_stats"])
    return QuantizedWeight.from_statistics(
        config, (out, n_in), from_u16(tensors["perm"]), unpack_codes(tensors["codes"], config.wbits, n_in),
        stats["scale"], stats["zero"], tensors["outlier_row_ptr"],
        from_u16(tensors["outlier_cols"]).to(torch.int32), tensors["outlier_values"],
    )


def dequantize_packed(tensors: dict[str, torch.Tensor], shape: tuple[int, int], config: QuantConfig) -> torch.Tensor:
    """The reference dequantization of the stored form: fp32 [out, in] in the original column order.

    W[r, perm[c]] = outlier value if (r, c) is an outlier, else s[r, g] * (q[r, c] - z[r, g]) with g = c // beta1
    and s, z the (second-level dequantized) statistics; equal bit for bit to `QuantizedWeight.dequantize()`.
    """
    return unpack_layer(tensors, shape, config).dequantize()


def check_layer_tensors(
    tensors: dict[str, torch.Tensor], out_features: int, in_features: int, config: QuantConfig, *,
    where: str, check_values: bool = True,
) -> None:
    """Names, dtypes and shapes of one layer's tensors against the specification; with `check_values`, also the
    contents the dequantization indexes with (row pointers, column indices, permutation), so that a bad value is a
    clear error instead of an out-of-range index or a silently wrong weight."""
    nnz = tensors["outlier_values"].shape[0] if "outlier_values" in tensors else 0
    specs = layer_tensor_specs(out_features, in_features, config, nnz)
    missing = sorted(set(specs) - set(tensors))
    extra = sorted(set(tensors) - set(specs))
    if missing or extra:
        raise FormatError(f"{where}: tensors {missing} missing, {extra} unexpected for this layer's config")
    for name, spec in specs.items():
        t = tensors[name]
        if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
            raise FormatError(
                f"{where}.{name}: expected {spec.dtype} {list(spec.shape)} for a [{out_features}, {in_features}] "
                f"layer (wbits={config.wbits}, beta1={config.beta1}, beta2={config.beta2}, nnz={nnz}), got "
                f"{t.dtype} {list(t.shape)}"
            )
    if not check_values or tensors["codes"].device.type == "meta":
        return
    row_ptr = tensors["outlier_row_ptr"].to(torch.int64)
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != nnz or bool((row_ptr[1:] < row_ptr[:-1]).any()):
        raise FormatError(
            f"{where}.outlier_row_ptr: must rise from 0 to the number of outliers ({nnz}) without decreasing"
        )
    cols = from_u16(tensors["outlier_cols"])
    if nnz and int(cols.max()) >= in_features:
        raise FormatError(f"{where}.outlier_cols: a column index is >= in_features={in_features}")
    if nnz:
        rows = torch.repeat_interleave(torch.arange(out_features, device=cols.device), row_ptr.diff())
        keys = rows * in_features + cols
        if bool((keys[1:] <= keys[:-1]).any()):
            raise FormatError(f"{where}.outlier_cols: columns within a row must be strictly increasing")
    perm = from_u16(tensors["perm"])
    if int(perm.max()) >= in_features or not torch.equal(
        torch.sort(perm).values, torch.arange(in_features, device=perm.device)
    ):
        raise FormatError(f"{where}.perm: not a permutation of 0..{in_features - 1}")


# ---------------------------------------------------------------------------------------------------- row concat
def concat_packed_rows(
    parts: list[dict[str, torch.Tensor]], out_features: list[int], in_features: int, config: QuantConfig, *,
    where: str = "concat",
) -> dict[str, torch.Tensor]:
    """The stored tensors of ONE layer whose rows are those of `parts` in order (each [out_features[i], in]): the
    inverse of the row split of docs/format.md ("Splitting a layer across devices"). Exact (copies and integer
    offsets): the result dequantizes to the row concatenation of the parts' dequantized weights. The parts must
    share the config, `in_features` and the permutation (every row of the result reads x in one order); each part's
    rows are a multiple of beta2 already (the specification's shape rule). FormatError names what differs."""
    if len(parts) != len(out_features) or not parts:
        raise FormatError(f"{where}: {len(parts)} parts for {len(out_features)} row counts")
    for i, (tensors, out) in enumerate(zip(parts, out_features)):
        check_layer_tensors(tensors, out, in_features, config, where=f"{where}[{i}]", check_values=False)
        if not torch.equal(tensors["perm"], parts[0]["perm"]):
            raise FormatError(f"{where}[{i}]: its permutation differs from part 0's: rows that read x in different "
                              "orders cannot share one layer")
    joined = {}
    for name in parts[0]:
        if name == "perm":
            joined[name] = parts[0]["perm"].clone()
        elif name == "outlier_row_ptr":
            offsets, ptrs = 0, []
            for k, tensors in enumerate(parts):
                ptr = tensors[name]
                ptrs.append((ptr if k == 0 else ptr[1:]) + offsets)  # (each part's ptr starts at 0)
                offsets += int(ptr[-1])
            joined[name] = torch.cat(ptrs).to(torch.int32)
        else:  # codes, statistics (rows, or rows / beta2 for the second level), outlier columns and values
            joined[name] = torch.cat([tensors[name] for tensors in parts]).contiguous()
    check_layer_tensors(joined, sum(out_features), in_features, config, where=where)
    return joined


def split_packed_rows(
    tensors: dict[str, torch.Tensor], out_features: list[int], in_features: int, config: QuantConfig, *,
    where: str = "split",
) -> list[dict[str, torch.Tensor]]:
    """The stored tensors of the layers made of consecutive row ranges of one layer, of `out_features[i]` rows each
    in order: the row split of docs/format.md ("Splitting a layer across devices"), the inverse of
    `concat_packed_rows`. Exact (copies and integer offsets); every part keeps the whole permutation. Each part's
    rows must be a multiple of beta2 (its second-level statistics are whole blocks)."""
    if not out_features or min(out_features) < 1:
        raise FormatError(f"{where}: row counts must be positive, got {out_features}")
    check_layer_tensors(tensors, sum(out_features), in_features, config, where=where, check_values=False)
    if config.beta2 and any(out % config.beta2 for out in out_features):
        raise FormatError(f"{where}: row counts {out_features} are not multiples of beta2={config.beta2}")
    row_ptr = tensors["outlier_row_ptr"]
    parts = []
    r0 = 0
    for out in out_features:
        r1 = r0 + out
        k0, k1 = int(row_ptr[r0]), int(row_ptr[r1])
        part = {}
        for name, t in tensors.items():
            if name == "perm":
                part[name] = t.clone()
            elif name == "outlier_row_ptr":
                part[name] = (t[r0:r1 + 1] - t[r0]).to(torch.int32)
            elif name in ("outlier_cols", "outlier_values"):
                part[name] = t[k0:k1].clone()
            elif name.endswith("_stats"):  # [out / beta2, n_groups, 2]
                part[name] = t[r0 // config.beta2:r1 // config.beta2].clone()
            else:  # codes, statistic codes, fp16 statistics: one row per output row
                part[name] = t[r0:r1].clone()
        check_layer_tensors(part, out, in_features, config, where=f"{where}[{len(parts)}]")
        parts.append(part)
        r0 = r1
    return parts
