"""The generic block-by-block walk on tiny random models of every family (real solver, CPU, offline)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import transformers
from test_families import TINY_CONFIGS, tiny_model
from torch import nn

from spqrkit.config import get_preset
from spqrkit.models import pipeline
from spqrkit.models.families import UnsupportedModelError, block_layout, decoder_blocks, family_of
from spqrkit.models.pipeline import (
    PipelineError,
    QuantizationReport,
    capture_block_inputs,
    quantize_model,
    run_block,
)
from spqrkit.quant.hessian import HessianAccumulator

SPQR = get_preset("spqr-w3")
RTN = get_preset("rtn-w3")


# Tiny models run fastest on one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def calib(n: int = 8, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def target_names(model: nn.Module) -> list[str]:
    prefix = family_of(model).blocks
    names = block_layout(model).linear_names
    return [f"{prefix}.{i}.{name}" for i in range(len(decoder_blocks(model))) for name in names]


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("kind", ["llama", "opt", "gpt_neox", "falcon", "qwen2", "phi3", "phi"])
def test_quantizes_every_targeted_linear(kind: str) -> None:
    model = tiny_model(kind)
    before = weights(model)
    report = quantize_model(model, calib(), SPQR, batch_size=3, progress=False)

    targets = target_names(model)
    assert [layer.name for layer in report.layers] == [n for n in report.quantized]
    assert sorted(report.quantized) == sorted(targets)
    for name, p in model.named_parameters():
        module_name = name.rpartition(".")[0]
        if name.endswith(".weight") and module_name in targets:
            assert not torch.equal(p, before[name]), f"{name} was not quantized"
            # The written weight is exactly the dequantized representation.
            assert torch.equal(p, report.quantized[module_name].dequantize())
            assert report.quantized[module_name].codes.device.type == "cpu"
        else:
            assert torch.equal(p, before[name]), f"{name} changed but is no target"

    assert len(report.blocks) == model.config.num_hidden_layers
    for block in report.blocks:
        assert 0 < block.output_error < 0.5
        assert 0 <= block.outlier_share < 0.1
    for layer in report.layers:
        assert 0 < layer.layer_error < 0.5 and layer.seconds >= 0
        assert layer.avg_paper_bits == pytest.approx(SPQR.paper_avg_bits(layer.shape[1], layer.outlier_share))
        assert layer.avg_real_bits > layer.avg_paper_bits - 0.5
    n_params = sum(before[f"{name}.weight"].numel() for name in targets)
    assert report.n_params == n_params
    assert report.n_outliers == sum(qw.n_outliers for qw in report.quantized.values())
    assert 3.625 <= report.avg_paper_bits < 3.625 + 32 * 0.1
    split = report.capture_seconds + report.hessian_seconds + report.solve_seconds + report.recompute_seconds
    assert 0 < split <= report.total_seconds
    assert report.to_dict()["n_params"] == n_params
    assert "bits/param" in report.summary()

    with torch.no_grad():
        logits = model(calib(2, 16, seed=1)).logits
    assert torch.isfinite(logits).all()


def test_skip_modules_are_left_untouched() -> None:
    model = tiny_model("llama")
    before = weights(model)
    skip = ("mlp.down_proj", "model.layers.1.self_attn.q_proj")
    report = quantize_model(model, calib(), SPQR.replace(skip_modules=skip), progress=False)
    skipped = {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"}
    for name in target_names(model):
        changed = not torch.equal(model.get_submodule(name).weight, before[f"{name}.weight"])
        assert changed == (name not in skipped), name
    assert set(report.quantized) == set(target_names(model)) - skipped
    # k and v still share the Hessian that q would have shared: quantized jointly, without q.
    assert "model.layers.1.self_attn.k_proj" in report.quantized


def test_rtn_collects_no_hessian(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hessian(*args, **kwargs):
        raise AssertionError("RTN must not build a Hessian")

    hessians = []
    real = pipeline.quantize_matrices

    def spy(ws, H, config):
        hessians.append(H)
        return real(ws, H, config)

    monkeypatch.setattr(pipeline, "HessianAccumulator", no_hessian)
    monkeypatch.setattr(pipeline, "quantize_matrices", spy)
    model = tiny_model("llama")
    before = weights(model)
    # RTN needs no minimum token count: one short window is enough.
    report = quantize_model(model, calib(1, 8), RTN, progress=False)
    assert hessians and all(H is None for H in hessians)
    assert report.hessian_seconds >= 0 and all(0 < b.output_error < 1 for b in report.blocks)
    for name in target_names(model):
        assert not torch.equal(model.get_submodule(name).weight, before[f"{name}.weight"])


def test_gptq_preset_without_outliers_runs() -> None:
    model = tiny_model("opt")
    report = quantize_model(model, calib(), get_preset("gptq-w4"), progress=False)
    assert report.n_outliers == 0
    assert report.avg_paper_bits == pytest.approx(4 + 32 / 64, rel=0.2)


# ---------------------------------------------------------------------------------------------------- true-sequential
def _record_hessians(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    hessians: list[torch.Tensor] = []
    real = pipeline.quantize_matrices

    def spy(ws, H, config):
        hessians.append(H.clone())
        return real(ws, H, config)

    monkeypatch.setattr(pipeline, "quantize_matrices", spy)
    return hessians


def test_true_sequential_hessians_come_from_quantized_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    hessians = _record_hessians(monkeypatch)
    ids = calib()
    sequential = tiny_model("llama")
    report = quantize_model(sequential, ids, SPQR, progress=False)
    seq_h = list(hessians)
    hessians.clear()
    quantize_model(tiny_model("llama"), ids, SPQR.replace(true_sequential=False), progress=False)
    flat_h = list(hessians)

    # Calls per block: (q, k, v), o, (gate, up), down — in this order in both modes.
    assert len(seq_h) == len(flat_h) == 8
    assert torch.equal(seq_h[0], flat_h[0])  # q, k, v of block 0 read the captured inputs either way
    assert not torch.allclose(seq_h[1], flat_h[1], rtol=1e-3)  # o_proj: inputs after quantized q, k, v

    # The sequential o_proj Hessian is exactly that of a full-precision model whose q, k, v alone are quantized.
    reference = tiny_model("llama")
    attn = reference.model.layers[0].self_attn
    with torch.no_grad():
        for proj in ("q_proj", "k_proj", "v_proj"):
            getattr(attn, proj).weight.copy_(report.quantized[f"model.layers.0.self_attn.{proj}"].dequantize())
    acc = HessianAccumulator(64)
    handle = attn.o_proj.register_forward_pre_hook(lambda m, args: acc.add(args[0]))
    with torch.no_grad():
        for batch in ids.split(1):
            reference(batch, use_cache=False)
    handle.remove()
    torch.testing.assert_close(seq_h[1], acc.finalize(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(flat_h[1], acc.finalize(), rtol=1e-3)


@pytest.mark.parametrize("kind", ["llama", "gpt_neox", "falcon", "phi"])
def test_stubbed_stage_passes_give_the_hessians_of_full_passes(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hessians = _record_hessians(monkeypatch)
    ids = calib()
    stubbed = tiny_model(kind)
    quantize_model(stubbed, ids, SPQR, batch_size=3, progress=False)
    stubbed_h = list(hessians)
    hessians.clear()

    class FullPasses(pipeline._Stubs):
        """The stand-ins always run the real linear: every stage pass is a full pass of the block."""

        passthrough = property(lambda self: True, lambda self, value: None)

    monkeypatch.setattr(pipeline, "_Stubs", FullPasses)
    full = tiny_model(kind)
    quantize_model(full, ids, SPQR, batch_size=3, progress=False)
    assert len(hessians) == len(stubbed_h) > 2
    for H_stubbed, H_full in zip(stubbed_h, hessians):
        torch.testing.assert_close(H_stubbed, H_full, rtol=1e-5, atol=1e-7)
    for (name, p_stubbed), p_full in zip(stubbed.named_parameters(), full.parameters()):
        torch.testing.assert_close(p_stubbed, p_full, rtol=1e-5, atol=1e-6, msg=name)


def test_stubs_are_removed_after_each_pass() -> None:
    model = tiny_model("llama")
    quantize_model(model, calib(), SPQR, progress=False)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_error_windows_change_no_weight() -> None:
    a, b = tiny_model("llama"), tiny_model("llama")
    ra = quantize_model(a, calib(), SPQR, batch_size=3, error_windows=1, progress=False)
    rb = quantize_model(b, calib(), SPQR, batch_size=3, error_windows=None, progress=False)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert all(0 < x.output_error < 0.5 for x in ra.blocks + rb.blocks)
    assert [x.output_error for x in ra.blocks] != [x.output_error for x in rb.blocks]


def test_shared_input_sets_are_solved_together(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[list[tuple[int, int]]] = []
    real = pipeline.quantize_matrices

    def spy(ws, H, config):
        sizes.append([tuple(w.shape) for w in ws])
        return real(ws, H, config)

    monkeypatch.setattr(pipeline, "quantize_matrices", spy)
    quantize_model(tiny_model("falcon"), calib(8, 64), SPQR, progress=False)
    # Falcon-7B wiring: fused qkv [96, 64] and dense_h_to_4h [256, 64] share one input, then dense, then 4h_to_h.
    assert sizes[:3] == [[(96, 64), (256, 64)], [(64, 64)], [(64, 256)]]


# ---------------------------------------------------------------------------------------------------- capture
@pytest.mark.parametrize("kind", ["llama", "opt", "gpt_neox", "falcon", "qwen2", "phi3"])
def test_captured_arguments_reproduce_the_model_forward(kind: str) -> None:
    model = tiny_model(kind)
    ids = calib(5, 16)
    layers_before = decoder_blocks(model)
    calls = {"lm_head": 0, "block1": 0}
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    decoder_blocks(model)[1].register_forward_hook(lambda *a: calls.__setitem__("block1", calls["block1"] + 1))

    inputs = capture_block_inputs(model, ids, batch_size=2)  # batches of 2, 2 and 1 window
    assert calls == {"lm_head": 0, "block1": 0}
    assert decoder_blocks(model) is layers_before and len(layers_before) == 2
    assert len(inputs.hidden) == 3 and inputs.n_tokens == 5 * 16
    assert inputs.calls[0] is inputs.calls[1]  # equal arguments are stored once

    with torch.no_grad():
        outputs = torch.cat(run_block(decoder_blocks(model)[0], inputs, "cpu"))
        expected = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(torch.cat(inputs.hidden), expected[0])
    torch.testing.assert_close(outputs, expected[1])


def test_a_real_attention_mask_is_replayed() -> None:
    # With eager attention the block gets an explicit [batch, 1, seqlen, seqlen] mask instead of None (SDPA's
    # is_causal): dropping or mixing it up between batches of different sizes would change the outputs.
    config = TINY_CONFIGS["llama"]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    ids = calib(3, 16)
    inputs = capture_block_inputs(model, ids, batch_size=2)
    assert inputs.calls[0].kwargs["attention_mask"].shape == (2, 1, 16, 16)
    assert inputs.calls[1].kwargs["attention_mask"].shape == (1, 1, 16, 16)
    with torch.no_grad():
        outputs = torch.cat(run_block(decoder_blocks(model)[0], inputs, "cpu"))
        expected = model(ids, output_hidden_states=True, use_cache=False).hidden_states[1]
    torch.testing.assert_close(outputs, expected)


def test_half_precision_model_keeps_its_dtype() -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    report = quantize_model(model, calib(), SPQR, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    q = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q, report.quantized["model.layers.0.self_attn.q_proj"].dequantize().to(torch.bfloat16))
    assert all(0 < b.output_error < 0.5 for b in report.blocks)


def test_llama_block_receives_position_embeddings() -> None:
    inputs = capture_block_inputs(tiny_model("llama"), calib(2, 16), batch_size=2)
    kwargs = inputs.calls[0].kwargs
    assert kwargs["use_cache"] is False
    cos, sin = kwargs["position_embeddings"]
    assert cos.shape == sin.shape == (1, 16, 16)
    assert set(kwargs) >= {"attention_mask", "position_ids", "position_embeddings"}


def test_offloaded_activations_give_the_same_result() -> None:
    a, b = tiny_model("llama"), tiny_model("llama")
    ra = quantize_model(a, calib(), SPQR, progress=False)
    rb = quantize_model(b, calib(), SPQR, offload_activations=True, device="cpu", batch_size=4, progress=False)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    assert [x.output_error for x in ra.blocks] == pytest.approx([x.output_error for x in rb.blocks], rel=1e-3)


def test_logs_one_line_per_block(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spqrkit"):
        quantize_model(tiny_model("llama"), calib(), SPQR, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("block ")]
    assert len(lines) == 2 and lines[0].startswith("block 1/2:") and "output error" in lines[0]


# ---------------------------------------------------------------------------------------------------- errors
def _unchanged_after_error(model: nn.Module, exc: type[Exception], match: str, *args, **kwargs) -> None:
    before = weights(model)
    with pytest.raises(exc, match=match):
        quantize_model(model, *args, progress=False, **kwargs)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, equal_nan=True, msg=name)


def test_nan_weight_is_refused() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = math.nan
    _unchanged_after_error(model, PipelineError, r"model\.layers\.1\.mlp\.up_proj.*NaN", calib(), SPQR)


def test_nan_activation_is_refused() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[7] = math.inf
    ids = calib()
    ids[2, 3] = 7
    _unchanged_after_error(model, PipelineError, "activations.*NaN or Inf", ids, SPQR)


@pytest.mark.parametrize("ids, match", [
    (calib(2, 32), r"too few calibration tokens for GPTQ: 2 x 32 = 64.*down_proj has 128"),
    (calib(0, 32), "too few calibration tokens"),
    (calib().float(), "integer tensor of token ids"),
    (calib()[0], "integer tensor of token ids"),
    (calib() + 200, r"token ids must lie in \[0, 128\)"),
])
def test_bad_calibration_is_refused(ids: torch.Tensor, match: str) -> None:
    _unchanged_after_error(tiny_model("llama"), PipelineError, match, ids, SPQR)


def test_unknown_family_is_refused() -> None:
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=128))
    _unchanged_after_error(model, UnsupportedModelError, "'gpt2' is not supported", calib(), SPQR)


def test_out_features_not_divisible_by_beta2_names_the_layer() -> None:
    # k_proj and v_proj have 32 rows; beta2 = 64 divides q_proj's 64 but not theirs.
    _unchanged_after_error(tiny_model("llama"), PipelineError, r"model\.layers\.0\.self_attn\.k_proj.*beta2=64",
                           calib(), SPQR.replace(beta2=64))


def test_skip_modules_that_match_nothing_are_refused() -> None:
    _unchanged_after_error(tiny_model("llama"), PipelineError, "'mlp.typo_proj' matches no module", calib(),
                           SPQR.replace(skip_modules=("mlp.typo_proj",)))


def test_skipping_everything_is_refused() -> None:
    skip = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")
    _unchanged_after_error(tiny_model("llama"), PipelineError, "nothing to quantize", calib(),
                           SPQR.replace(skip_modules=skip))


def test_bad_batch_size_is_refused() -> None:
    _unchanged_after_error(tiny_model("llama"), PipelineError, "batch_size", calib(), SPQR, batch_size=0)


def test_bad_error_windows_are_refused() -> None:
    _unchanged_after_error(tiny_model("llama"), PipelineError, "error_windows", calib(), SPQR, error_windows=0)


def test_mixed_attention_types_are_refused() -> None:
    model = tiny_model("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention"]
    _unchanged_after_error(model, UnsupportedModelError, "different attention types", calib(), SPQR)


def test_report_is_a_dataclass_with_quantized_weights() -> None:
    model = tiny_model("phi3")
    report = quantize_model(model, calib(), SPQR, progress=False)
    assert isinstance(report, QuantizationReport)
    first = report.layers[0]
    assert first.name == "model.layers.0.self_attn.qkv_proj" and first.shape == (192, 64)
    assert report.quantized[first.name].shape == (192, 64)
    assert report.config is SPQR
