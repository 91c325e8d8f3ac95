"""The format specification's reference: bit packing, packed layers, real bits, the quantized module. All exact."""

from __future__ import annotations

import math

import pytest
import torch

from spqrkit.config import QuantConfig, get_preset
from spqrkit.format.pack import (
    check_layer_tensors,
    dequantize_packed,
    from_u16,
    pack_codes,
    pack_layer,
    real_bits,
    to_u16,
    unpack_codes,
    unpack_layer,
)
from spqrkit.format.spec import (
    FormatError,
    column_split_multiple,
    layer_tensor_specs,
    packed_words,
    row_split_multiple,
)
from spqrkit.modules.linear import SpQRLinear
from spqrkit.quant.representation import QuantizedWeight
from spqrkit.quant.solver import quantize_matrices

# Small matrices solve fastest on one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def pack_with_python_ints(codes: list[int], bits: int) -> list[int]:
    """An independent reading of the spec: each 32-code chunk as one Python integer, cut into 32-bit words."""
    words = []
    for start in range(0, max(len(codes), 1), 32):
        chunk = codes[start:start + 32] + [0] * (32 - len(codes[start:start + 32]))
        string = sum(code << (i * bits) for i, code in enumerate(chunk))
        for k in range(bits):
            word = (string >> (32 * k)) & 0xFFFFFFFF
            words.append(word - (1 << 32) if word >= 1 << 31 else word)
    return words


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 128])
def test_pack_codes_matches_the_spec_and_round_trips(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 1 << bits, (3, n), generator=g, dtype=torch.uint8)
    codes[0, :] = (1 << bits) - 1  # all ones: every straddling bit set
    words = pack_codes(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (3, packed_words(n, bits)) == (3, math.ceil(n / 32) * bits)
    for row in range(3):
        assert words[row].tolist() == pack_with_python_ints(codes[row].tolist(), bits)
    assert torch.equal(unpack_codes(words, bits, n), codes)


def test_pack_codes_layout_by_hand():
    # 3 bits: code i sits at bits [3i, 3i + 3); code 10 straddles words 0 and 1 (bits 30..32).
    codes = torch.zeros(32, dtype=torch.uint8)
    codes[0], codes[1], codes[10], codes[31] = 5, 1, 0b111, 0b100
    words = pack_codes(codes, 3)
    as_int32 = lambda u: u - (1 << 32) if u >= 1 << 31 else u  # noqa: E731
    assert words.tolist() == [as_int32(5 | 1 << 3 | 0b11 << 30), 0b1, as_int32(0b100 << 29)]


def test_pack_codes_refuses_out_of_range_codes():
    with pytest.raises(FormatError, match="lie in"):
        pack_codes(torch.tensor([8]), 3)
    with pytest.raises(FormatError, match="int32 words"):
        unpack_codes(torch.zeros(4, dtype=torch.int32), 3, 32)


def test_u16_indices_round_trip():
    idx = torch.tensor([0, 1, 32767, 32768, 40000, 65535])
    stored = to_u16(idx)
    assert stored.dtype == torch.int16 and stored[3].item() == -32768 and stored[-1].item() == -1
    assert torch.equal(from_u16(stored), idx)
    with pytest.raises(FormatError):
        to_u16(torch.tensor([65536]))


# ---------------------------------------------------------------------------------------------------- layers
CONFIGS = {
    "spqr-w3": get_preset("spqr-w3"),
    "spqr-w2-b8": get_preset("spqr-w3", wbits=2, beta1=8, beta2=8, scale_bits=2, zero_bits=4),
    "spqr-w8-fp16-zero": QuantConfig(wbits=8, beta1=16, beta2=16, scale_bits=3, zero_bits=None),
    "gptq-w4-g128": get_preset("gptq-w4-g128"),
    "gptq-w5-rowwise": get_preset("gptq-w4", wbits=5),
    "rtn-w6": get_preset("rtn-w3", wbits=6),
}


def random_quantized(config: QuantConfig, out: int, n_in: int, seed: int = 0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, n_in, generator=g)
    W[:, 3] *= 20  # a few heavy columns: outliers when the config has them
    x = torch.randn(4 * n_in, n_in, generator=g)
    H = 2 * x.T @ x / x.shape[0]
    return quantize_matrices([W], None if config.algorithm == "rtn" else H, config)[0]


def synthetic(config: QuantConfig, out: int, n_in: int, outliers_per_row: list[int], seed: int = 0):
    """A QuantizedWeight with arbitrary contents: empty rows, full rows, any column set."""
    g = torch.Generator().manual_seed(seed)
    n_g = math.ceil(n_in / config.group_size(n_in))

    def stat(bits):
        if bits is None:
            return torch.randn(out, n_g, generator=g).half(), None, None
        return (None, torch.randint(0, 1 << bits, (out, n_g), generator=g, dtype=torch.uint8),
                torch.randn(out // config.beta2, n_g, 2, generator=g).half())

    s, z = stat(config.scale_bits), stat(config.zero_bits)
    cols = [torch.randperm(n_in, generator=g)[:k].sort().values for k in outliers_per_row]
    row_ptr = torch.zeros(out + 1, dtype=torch.int32)
    row_ptr[1:] = torch.cumsum(torch.tensor(outliers_per_row), 0)
    nnz = int(row_ptr[-1])
    return QuantizedWeight(
        config=config, shape=(out, n_in), perm=torch.randperm(n_in, generator=g),
        codes=torch.randint(0, 1 << config.wbits, (out, n_in), generator=g, dtype=torch.uint8),
        scale=s[0], zero=z[0], scale_codes=s[1], scale_stats=s[2], zero_codes=z[1], zero_stats=z[2],
        outlier_row_ptr=row_ptr, outlier_cols=torch.cat(cols).to(torch.int32),
        outlier_values=torch.randn(nnz, generator=g).half(),
    )


def assert_same_representation(a: QuantizedWeight, b: QuantizedWeight) -> None:
    assert a.config == b.config and tuple(a.shape) == tuple(b.shape)
    for field in ("perm", "codes", "scale", "zero", "scale_codes", "scale_stats", "zero_codes", "zero_stats",
                  "outlier_row_ptr", "outlier_cols", "outlier_values"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            same_dtype = (x, y) if x.is_floating_point() else (x.long(), y.long())
            assert torch.equal(*same_dtype), field


def packed_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("shape", [(16, 45), (32, 64), (48, 100)])
def test_solver_output_packs_exactly(name, shape):
    config = CONFIGS[name]
    qw = random_quantized(config, *shape)
    tensors = pack_layer(qw)
    specs = layer_tensor_specs(*shape, config, qw.n_outliers)
    assert {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()} == {
        k: (s.dtype, s.shape) for k, s in specs.items()}
    assert_same_representation(unpack_layer(tensors, shape, config), qw)
    assert torch.equal(dequantize_packed(tensors, shape, config), qw.dequantize())
    assert real_bits(qw) == 8 * packed_bytes(tensors)


@pytest.mark.parametrize("wbits", range(2, 9))
def test_every_wbits_with_empty_and_full_outlier_rows(wbits):
    config = QuantConfig(wbits=wbits, beta1=16, beta2=8, scale_bits=3, zero_bits=3, act_order=False)
    out, n_in = 24, 37  # in not a multiple of 32 nor of beta1; out = 3 * beta2
    per_row = [0] * out
    per_row[1], per_row[5], per_row[7] = n_in, 3, 1  # one all-outlier row; the rest mostly empty
    qw = synthetic(config, out, n_in, per_row, seed=wbits)
    tensors = pack_layer(qw)
    assert_same_representation(unpack_layer(tensors, (out, n_in), config), qw)
    w = dequantize_packed(tensors, (out, n_in), config)
    assert torch.equal(w, qw.dequantize())
    assert torch.equal(w[1, qw.perm], qw.outlier_values[:n_in].float())  # the full row is its outliers
    assert real_bits(qw) == 8 * packed_bytes(tensors)


def test_no_outliers_at_all():
    config = get_preset("spqr-w4")
    qw = synthetic(config, 16, 40, [0] * 16)
    tensors = pack_layer(qw)
    assert tensors["outlier_cols"].shape == (0,) and tensors["outlier_row_ptr"].abs().sum() == 0
    assert torch.equal(dequantize_packed(tensors, (16, 40), config), qw.dequantize())


def test_real_bits_counts_every_stored_component():
    config = get_preset("spqr-w3")
    out, n_in, nnz = 64, 4096, 100
    codes = out * (n_in // 32) * 3 * 32  # a 4096-wide row at 3 bits is 384 words
    assert packed_words(n_in, 3) == 384
    n_g = n_in // 16
    stats = 2 * (out * math.ceil(n_g / 32) * 3 * 32 + (out // 16) * n_g * 2 * 16)
    csr = nnz * (16 + 16) + (out + 1) * 32
    perm = n_in * 16
    per_row = [nnz] + [0] * (out - 1)
    assert real_bits(synthetic(config, out, n_in, per_row)) == codes + stats + csr + perm


def test_wide_layers_are_refused():
    config = get_preset("gptq-w4")
    qw = QuantizedWeight(config, (1, 65537), *([torch.zeros(0)] * 11))
    with pytest.raises(FormatError, match="65536"):
        pack_layer(qw)


def test_contents_are_checked():
    config = get_preset("spqr-w3")
    tensors = pack_layer(synthetic(config, 16, 40, [1] * 16))
    bad = dict(tensors, outlier_row_ptr=tensors["outlier_row_ptr"].flip(0))
    with pytest.raises(FormatError, match="outlier_row_ptr"):
        check_layer_tensors(bad, 16, 40, config, where="layer")
    bad = dict(tensors, perm=torch.zeros_like(tensors["perm"]))
    with pytest.raises(FormatError, match="perm: not a permutation"):
        check_layer_tensors(bad, 16, 40, config, where="layer")
    bad = dict(tensors, codes=tensors["codes"][:, :-1])
    with pytest.raises(FormatError, match=r"layer\.codes: expected torch\.int32 \[16, 6\]"):
        check_layer_tensors(bad, 16, 40, config, where="layer")


def test_split_multiples():
    assert row_split_multiple(get_preset("spqr-w3")) == 16 and column_split_multiple(get_preset("spqr-w3")) == 32
    assert column_split_multiple(get_preset("gptq-w4-g128")) == 128
    assert column_split_multiple(get_preset("spqr-w3", beta1=48)) == 96
    assert row_split_multiple(get_preset("gptq-w4")) == 1


# ---------------------------------------------------------------------------------------------------- the module
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spqr_linear_forward_is_dequantize_then_linear(dtype):
    qw = random_quantized(CONFIGS["spqr-w3"], 32, 45)
    bias = torch.randn(32)
    layer = SpQRLinear.from_quantized(qw, bias).to(dtype)
    x = torch.randn(2, 5, 45, dtype=dtype)
    expected = torch.nn.functional.linear(x, qw.dequantize().to(dtype), bias.to(dtype))
    assert torch.equal(layer(x), expected)
    # .to(dtype) moved the bias, never the packed buffers
    assert layer.bias.dtype == dtype
    assert layer.outlier_values.dtype == torch.float16 and layer.codes.dtype == torch.int32
    assert_same_representation(layer.quantized_weight(), qw)


def test_spqr_linear_skeleton_on_meta_matches_the_spec():
    config = CONFIGS["gptq-w4-g128"]
    layer = SpQRLinear(300, 64, config, n_outliers=0, bias=True, device="meta")
    specs = layer_tensor_specs(64, 300, config, 0)
    assert {k: (t.dtype, tuple(t.shape)) for k, t in layer.packed_tensors().items()} == {
        k: (s.dtype, s.shape) for k, s in specs.items()}
    assert all(t.device.type == "meta" for t in layer.state_dict().values())
    assert set(layer.state_dict()) == set(specs) | {"bias"}
