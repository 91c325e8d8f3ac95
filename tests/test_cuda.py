"""CPU and CUDA agree. These run on the GPU machine (the `device` tool); without CUDA they are skipped."""

import math

import pytest
import torch

from spqrkit.config import get_preset
from spqrkit.quant.solver import layer_error, quantize_matrices

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _problem(out=256, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4096, n, generator=g) @ (torch.randn(n, n, generator=g) * 0.2 + torch.eye(n))
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(out, n, generator=g) * 0.02
    W += (torch.rand(out, n, generator=g) < 0.005) * torch.randn(out, n, generator=g) * 0.2
    return W, H


@cuda
@pytest.mark.parametrize("preset", ["spqr-w3", "spqr-w4", "gptq-w4", "gptq-w3-g128", "rtn-w4"])
def test_solver_cpu_and_cuda_agree(preset):
    torch.backends.cuda.matmul.allow_tf32 = False
    W, H = _problem()
    cfg = get_preset(preset)
    (cpu,) = quantize_matrices([W], H, cfg)
    (gpu,) = quantize_matrices([W.cuda()], H.cuda(), cfg)
    w_cpu, w_gpu = cpu.dequantize(), gpu.dequantize().cpu()
    # A sequential rounding algorithm: fp32 summation order differs between devices, so a few codes near a rounding
    # boundary may flip and shift later columns slightly. The errors must agree closely and most weights exactly.
    assert (w_cpu == w_gpu).float().mean() > 0.95
    e_cpu, e_gpu = layer_error(W, w_cpu, H), layer_error(W, w_gpu, H)
    assert abs(e_cpu - e_gpu) <= 0.03 * e_cpu, (e_cpu, e_gpu)
    if math.isfinite(cfg.outlier_threshold):
        assert abs(cpu.n_outliers - gpu.n_outliers) <= max(3, 0.05 * cpu.n_outliers)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_hessian_on_cuda_matches_fp32(dtype):
    from spqrkit.quant.hessian import HessianAccumulator

    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(3, 1000, 256, device="cuda").to(dtype)
    fast, slow = HessianAccumulator(256), HessianAccumulator(256)
    for chunk in x:
        fast.add(chunk)
        slow.add(chunk.float())
    torch.testing.assert_close(fast.finalize(), slow.finalize(), rtol=1e-5, atol=1e-5)


@cuda
def test_compiled_static_cache_generation_of_a_fused_spqr_model():
    """generate_text with a static cache on CUDA: transformers compiles the decode step (torch.compile, CUDA graphs)
    through the SpQR custom ops and the fused projections; the greedy text equals eager decoding's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from spqrkit.format.synthetic import random_packed_layer
    from spqrkit.generate import generate_text
    from spqrkit.models.fusion import fuse_projections
    from spqrkit.modules.linear import SpQRLinear

    words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(98)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(words), max_position_embeddings=128,
                         eos_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    qconfig = get_preset("spqr-w3")
    for b, block in enumerate(model.model.layers):
        for k, (parent, names) in enumerate(((block.self_attn, ("q_proj", "k_proj", "v_proj")),
                                             (block.self_attn, ("o_proj",)), (block.mlp, ("gate_proj", "up_proj")),
                                             (block.mlp, ("down_proj",)))):
            n_in = getattr(parent, names[0]).in_features
            perm = torch.randperm(n_in, generator=torch.Generator().manual_seed(10 * b + k))
            for j, name in enumerate(names):
                old = getattr(parent, name)
                tensors = random_packed_layer(old.out_features, n_in, qconfig, seed=100 * b + 10 * k + j, perm=perm)
                layer = SpQRLinear(n_in, old.out_features, qconfig, tensors["outlier_values"].shape[0], device="meta")
                layer.load_packed(tensors)
                setattr(parent, name, layer)
    model = model.cuda().half()
    assert not fuse_projections(model).skipped
    prompt = " ".join(f"w{i}" for i in range(3, 40, 3))
    eager = generate_text(model, tokenizer, prompt, max_new_tokens=12, chat=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = generate_text(model, tokenizer, prompt, max_new_tokens=12, chat=False, static_cache=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the decode step was compiled
    assert compiled.new_tokens == eager.new_tokens and compiled.text == eager.text


@cuda
def test_eager_calls_replay_per_layer_cuda_graphs(monkeypatch):
    """An eager SpQRLinear call is direct the first time, captured the second, replayed after: outputs equal the
    direct kernels' (SPQRKIT_EAGER_GRAPHS=0), are fresh tensors, follow x, and follow the buffers when one is
    written in place (the stale graph is dropped); another row count gets its own graph; inside a caller's own
    capture nothing is captured."""
    from spqrkit.format.synthetic import random_quantized_weight
    from spqrkit.modules import eager_graphs
    from spqrkit.modules.linear import SpQRLinear

    layer = SpQRLinear.from_quantized(random_quantized_weight(1024, 2048, get_preset("spqr-w3"), seed=0,
                                                              device="cuda"))
    xs = [torch.randn(1, 2048, device="cuda", dtype=torch.float16, generator=None) for _ in range(4)]

    def direct(x):
        monkeypatch.setenv(eager_graphs.EAGER_GRAPHS_ENV, "0")
        y = layer(x)
        monkeypatch.delenv(eager_graphs.EAGER_GRAPHS_ENV)
        return y

    def close(a, b):
        return (a.float() - b.float()).abs().max().item() <= 1e-3 * max(1.0, b.float().abs().max().item())

    with torch.inference_mode():
        ys = [layer(x) for x in xs]  # direct, captured, replayed, replayed
        assert sum(isinstance(v, eager_graphs._Graph) for v in layer._graphs.values()) == 1
        for x, y in zip(xs, ys):
            assert close(y, direct(x))
        assert ys[2].data_ptr() != ys[3].data_ptr() and close(ys[2], direct(xs[2]))  # not overwritten by a replay
        layer.outlier_values.mul_(2)  # the buffers change: the old graph reads them, its key no longer matches
        after = [layer(xs[0]) for _ in range(3)]
        for y in after:
            assert close(y, direct(xs[0]))
        assert not close(after[0], ys[0])
        # captured again into the shared pool, though its only graph was dropped (the pools outlive their graphs)
        assert sum(isinstance(v, eager_graphs._Graph) for v in layer._graphs.values()) == 1
        x8 = torch.randn(8, 2048, device="cuda", dtype=torch.float16)
        y8 = [layer(x8) for _ in range(3)]
        assert close(y8[2], direct(x8))
        assert sum(isinstance(v, eager_graphs._Graph) for v in layer._graphs.values()) == 2
        # a caller's own capture: the calls inside it launch the kernels (no graph in a graph)
        before = dict(layer._graphs)
        static = xs[1].clone()
        layer(static)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(static)
        graph.replay()
        torch.cuda.synchronize()
        assert close(out, direct(xs[1])) and layer._graphs.keys() == before.keys()
