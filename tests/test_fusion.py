"""Fused projections: the format's row concatenation (exact), the fused layers and their slices, a whole model."""

import pytest
import torch
from test_families import TINY_CONFIGS, tiny_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from spqrkit.config import get_preset
from spqrkit.format.pack import concat_packed_rows, dequantize_packed, split_packed_rows
from spqrkit.format.spec import FormatError
from spqrkit.format.synthetic import random_packed_layer
from spqrkit.models.fusion import fusable_sets, fuse_projections, unfuse_projections
from spqrkit.models.pipeline import quantize_model
from spqrkit.modules.fused import FusionError, LinearSlice, SharedOutput, concat_linears, split_linear
from spqrkit.modules.linear import SpQRLinear, reference_matmul

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def spqr_layer(out, n_in, config, seed, perm=None, device="cpu", **kwargs) -> SpQRLinear:
    tensors = random_packed_layer(out, n_in, config, seed=seed, perm=perm, device=device, **kwargs)
    layer = SpQRLinear(n_in, out, config, tensors["outlier_values"].shape[0], device="meta")
    layer.load_packed(tensors)
    return layer


@pytest.mark.parametrize("preset", ["spqr-w3", "gptq-w4", "gptq-w4-g128"])
def test_concat_packed_rows_is_the_row_concatenation(preset):
    """Exact: the concatenated layer dequantizes to the parts' weights stacked (rows with many outliers, rows with
    none, and an odd column count included), and `split_packed_rows` gives the parts back."""
    config = get_preset(preset)
    n_in = 200
    perm = torch.randperm(n_in, generator=torch.Generator().manual_seed(0))
    outs = [32, 16, 48]
    parts = [random_packed_layer(out, n_in, config, seed=k, perm=perm, dense_rows=2 * k, empty_rows=3)
             for k, out in enumerate(outs)]
    joined = concat_packed_rows(parts, outs, n_in, config)
    expected = torch.cat([dequantize_packed(t, (out, n_in), config) for t, out in zip(parts, outs)])
    assert torch.equal(dequantize_packed(joined, (sum(outs), n_in), config), expected)
    assert joined["outlier_values"].shape[0] == sum(t["outlier_values"].shape[0] for t in parts)
    # the row split is its inverse, bit for bit, in copies
    back = split_packed_rows(joined, outs, n_in, config)
    assert len(back) == 3
    for part, again in zip(parts, back):
        assert part.keys() == again.keys()
        assert all(torch.equal(part[k], again[k]) and part[k].dtype == again[k].dtype for k in part)
        assert all(again[k].untyped_storage().data_ptr() != joined[k].untyped_storage().data_ptr() for k in again)
    if config.beta2:  # (second-level statistics come in whole blocks of beta2 rows)
        with pytest.raises(FormatError, match="multiples of beta2"):
            split_packed_rows(joined, [8, 88], n_in, config)
    with pytest.raises(FormatError, match="expected"):
        split_packed_rows(joined, [32, 32], n_in, config)  # (rows that do not add up to the layer's)


def test_concat_packed_rows_refuses_different_permutations():
    config = get_preset("spqr-w3")
    parts = [random_packed_layer(16, 64, config, seed=k) for k in range(2)]  # a random permutation each
    with pytest.raises(FormatError, match="permutation differs"):
        concat_packed_rows(parts, [16, 16], 64, config)


def test_concat_linears_checks_what_it_joins():
    config = get_preset("spqr-w3")
    a, b = spqr_layer(16, 64, config, 0), spqr_layer(16, 64, config, 1)
    with pytest.raises(FusionError, match="permutation"):
        concat_linears([a, b])
    with pytest.raises(FusionError, match="one type"):
        concat_linears([a, nn.Linear(64, 16)])
    with pytest.raises(FusionError, match="bias"):
        concat_linears([nn.Linear(64, 16), nn.Linear(64, 8, bias=False)])
    with pytest.raises(FusionError, match="in_features"):
        concat_linears([nn.Linear(64, 16), nn.Linear(32, 8)])
    with pytest.raises(FusionError, match="one type"):  # a subclass of nn.Linear may hold anything
        concat_linears([Counting(64, 16), Counting(64, 8)])
    with pytest.raises(FusionError, match="at least two"):
        concat_linears([nn.Linear(64, 16)])


@pytest.mark.parametrize("bias", [False, True])
def test_concat_linears_outputs(bias):
    torch.manual_seed(0)
    dense = [nn.Linear(40, n, bias=bias) for n in (24, 8, 8)]
    x = torch.randn(3, 5, 40)
    fused = concat_linears(dense)
    assert fused.out_features == 40 and fused.in_features == 40
    torch.testing.assert_close(fused(x), torch.cat([m(x) for m in dense], -1), rtol=1e-6, atol=1e-6)

    config = get_preset("spqr-w3")
    perm = torch.randperm(96)
    packed = [spqr_layer(n, 96, config, k, perm=perm) for k, n in enumerate((32, 16))]
    if bias:
        for k, layer in enumerate(packed):
            layer.bias = nn.Parameter(torch.randn(layer.out_features, generator=torch.Generator().manual_seed(k)))
    fused = concat_linears(packed)
    assert isinstance(fused, SpQRLinear) and fused.out_features == 48
    x = torch.randn(2, 96)
    # the reference path: one dequantized matrix; rows are computed alike, up to the matmul's blocking
    torch.testing.assert_close(fused(x), torch.cat([m(x) for m in packed], -1), rtol=1e-5, atol=1e-5)


class Counting(nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_shared_output_computes_once_per_input_and_lets_go():
    torch.manual_seed(0)
    layer = Counting(8, 6)
    shared = SharedOutput(layer, [2, 3, 1])
    slices = [LinearSlice(shared, i, 8) for i in range(3)]
    x = torch.randn(4, 8)
    full = nn.functional.linear(x, layer.weight, layer.bias)
    Counting.calls = 0
    outs = [s(x) for s in slices]
    assert Counting.calls == 1
    assert [o.shape[-1] for o in outs] == [2, 3, 1] and [s.out_features for s in slices] == [2, 3, 1]
    assert torch.equal(torch.cat(outs, -1), full)
    assert shared._y is None and shared._x is None  # every slice served: the output is not kept

    # a slice called twice, or with another tensor (even an equal one), recomputes
    slices[1](x)
    slices[1](x)
    assert Counting.calls == 3
    slices[0](x.clone())
    assert Counting.calls == 4
    # any order of the slices
    Counting.calls = 0
    y = torch.randn(4, 8)
    outs = [slices[i](y) for i in (2, 0, 1)]
    assert Counting.calls == 1 and torch.equal(torch.cat([outs[1], outs[2], outs[0]], -1), layer(y))
    shared.clear()
    assert shared._y is None


def tiny_llama(spqr: bool, fuse_perms: bool = True, seed: int = 0) -> LlamaForCausalLM:
    """A 2-block LLaMA (hidden 64, MLP 96, GQA 4 heads / 2 kv heads); with `spqr` every decoder linear is a random
    SpQR layer, the linears of each input-sharing set with one permutation when `fuse_perms`."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    if spqr:
        qconfig = get_preset("spqr-w3")
        k = 0
        for block in model.model.layers:
            for group in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
                          ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",))):
                parent = getattr(block, group[0])
                n_in = getattr(parent, group[1][0]).in_features
                perm = torch.randperm(n_in) if fuse_perms else None
                for name in group[1]:
                    old = getattr(parent, name)
                    setattr(parent, name, spqr_layer(old.out_features, n_in, qconfig, k, perm=perm))
                    k += 1
    return model


@pytest.mark.parametrize("spqr", [False, True])
def test_fuse_projections_keeps_the_model_output(spqr):
    model = tiny_llama(spqr)
    assert fusable_sets(model) == [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                   ("mlp.gate_proj", "mlp.up_proj")]
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        report = fuse_projections(model)
        after = model(input_ids=ids).logits
    assert report.fused == [f"model.layers.{b}.{name}" for b in range(2) for name in
                            ("self_attn.fused_q_proj_k_proj_v_proj", "mlp.fused_gate_proj_up_proj")]
    assert not report.skipped
    block = model.model.layers[0]
    assert isinstance(block.self_attn.k_proj, LinearSlice) and block.self_attn.k_proj.out_features == 32
    fused = block.self_attn.fused_q_proj_k_proj_v_proj
    assert fused.out_features == 64 + 32 + 32 and isinstance(fused, SpQRLinear if spqr else nn.Linear)
    assert sum(1 for m in model.modules() if isinstance(m, LinearSlice)) == 10
    # the old linears are gone from the module tree; the fused layers are in it once (state dict, .to())
    names = [n for n, _ in model.named_modules()]
    assert "model.layers.0.self_attn.q_proj" in names and len(names) == len(set(names))
    assert not any(k.startswith("model.layers.0.self_attn.q_proj.") for k in model.state_dict())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # nothing kept between forwards
    assert all(m.shared._y is None for m in model.modules() if isinstance(m, LinearSlice))


def test_fuse_projections_leaves_sets_with_different_permutations():
    model = tiny_llama(spqr=True, fuse_perms=False)
    report = fuse_projections(model)
    assert report.fused == [] and len(report.skipped) == 4
    assert "permutation" in report.skipped[0][1] and "model.layers.0.{self_attn.q_proj" in report.skipped[0][0]
    assert "left 4 unfused" in report.summary()


def test_fused_model_traces_under_torch_compile():
    """dynamo follows the kept output (attribute side effects) and returns what the eager fused model does."""
    model = tiny_llama(spqr=False)
    fuse_projections(model)
    ids = torch.randint(0, 100, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.parametrize("rows", [1, 2, 8])
def test_fused_spqr_layer_on_cuda_matches_its_parts(rows):
    """The fused layer through the selector's kernel (gemv_pairs / dot_pairs) against the unfused layers' outputs
    and against the fused layer's reference path (LLaMA-7B-like q/k/v rows, GQA-sized k and v)."""
    config = get_preset("spqr-w3")
    perm = torch.randperm(1024, generator=torch.Generator().manual_seed(0)).cuda()
    parts = [spqr_layer(out, 1024, config, k, perm=perm, device="cuda") for k, out in enumerate((1024, 256, 256))]
    fused = concat_linears(parts)
    x = torch.randn(rows, 1024, device="cuda", dtype=torch.float16)
    y = fused(x)
    ref = reference_matmul(fused, x).float()
    scale = ref.abs().max().item()
    assert (y.float() - ref).abs().max().item() <= 2e-3 * scale
    assert (y.float() - torch.cat([p(x) for p in parts], -1).float()).abs().max().item() <= 2e-3 * scale


def test_the_quantizer_gives_input_sharing_sets_one_permutation(one_thread):
    """Fusion relies on it: q/k/v (and gate/up) share one Hessian, so act order gives them one permutation; a
    quantized tiny LLaMA fuses every set, and its output stays the same."""
    model = tiny_model("llama")
    config = get_preset("spqr-w3")
    assert config.act_order
    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, ids, config, progress=False)
    for name, qw in report.quantized.items():
        parent, attr = name.rsplit(".", 1)
        old = model.get_submodule(name)
        model.get_submodule(parent).register_module(attr, SpQRLinear.from_quantized(qw, old.bias))
    perm = model.model.layers[0].self_attn.q_proj.perm
    assert not torch.equal(perm, torch.arange(perm.numel(), dtype=perm.dtype))  # a real act-order permutation
    with torch.no_grad():
        before = model(ids[:2]).logits
        fusion = fuse_projections(model)
        after = model(ids[:2]).logits
    assert not fusion.skipped and len(fusion.fused) == 2 * len(model.model.layers)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@cuda
def test_fused_model_on_cuda_matches_unfused_and_captures():
    """A tiny fp16 SpQR LLaMA on CUDA (the selector's kernels: gemv_pairs for one token, dot_pairs for eight):
    fused logits against unfused ones, and a forward captured in a CUDA graph replays to the same logits (up to
    split K's atomics)."""
    model = tiny_llama(spqr=True).cuda().half()
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(3)).cuda()
    with torch.no_grad():
        before = [model(input_ids=ids[:, :n], use_cache=False).logits[:, -1].float() for n in (1, 8)]
        fuse_projections(model)
        after = [model(input_ids=ids[:, :n], use_cache=False).logits[:, -1].float() for n in (1, 8)]
        for a, b in zip(after, before):
            assert (a - b).abs().max().item() <= 2e-2 * max(1.0, b.abs().max().item())
        static = ids[:, :1].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(input_ids=static, use_cache=False)  # warm-up off the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(input_ids=static, use_cache=False).logits
        graph.replay()
        torch.cuda.synchronize()
        assert (out[:, -1].float() - after[0]).abs().max().item() <= 1e-3 * max(1.0, after[0].abs().max().item())


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_every_family_fuses_and_keeps_its_output(kind, one_thread):
    """Every family's input-sharing sets fuse (dense layers here) and the model's forward is unchanged: no family's
    modeling code reads a fused linear's weight or calls it with another tensor (Falcon's own linear class is left
    alone, with the reason)."""
    model = tiny_model(kind)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        report = fuse_projections(model)
        after = model(ids).logits
    n_sets = len(fusable_sets(model)) * model.config.num_hidden_layers
    if kind.startswith("falcon"):  # FalconLinear, a subclass of nn.Linear: left alone (its SpQR layers would fuse)
        assert report.fused == [] and len(report.skipped) == n_sets
        assert all("FalconLinear" in reason for _, reason in report.skipped)
    else:
        assert not report.skipped and len(report.fused) == n_sets
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spqr,device", [(False, "cpu"), (True, "cpu"),
                                         pytest.param(True, "cuda", marks=cuda)])
def test_unfuse_projections_restores_the_model(spqr, device):
    """fuse then unfuse: the same modules under the same names, the same state dict bit for bit, the same output
    (on CUDA through the selector's kernels, whose order of summation is the same before and after)."""
    model = tiny_llama(spqr).to(device)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1)).to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = {name: type(m) for name, m in model.named_modules()}
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        fused = fuse_projections(model).fused
        removed = unfuse_projections(model)
        again = model(input_ids=ids).logits
    assert sorted(removed) == sorted(fused) and len(removed) == 4
    assert {name: type(m) for name, m in model.named_modules()} == kinds  # no slices, no fused layers left
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(again, logits)
    assert unfuse_projections(model) == []  # (nothing fused: nothing to do)


def test_split_linear_checks_its_rows():
    layer = nn.Linear(8, 6)
    a, b = split_linear(layer, [2, 4])
    assert torch.equal(torch.cat([a.weight, b.weight]), layer.weight)  # (the rows, exactly)
    assert torch.equal(torch.cat([a.bias, b.bias]), layer.bias)
    x = torch.randn(3, 8)  # (outputs: BLAS may block a 2-row and a 6-row product differently, last bits apart)
    torch.testing.assert_close(torch.cat([a(x), b(x)], -1), layer(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(FusionError, match="add up"):
        split_linear(layer, [2, 3])
