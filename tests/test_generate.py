"""`spqrkit generate` and `generate_text` on a tiny quantized Llama that uses the real tokenizer."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import spqrkit
from spqrkit import cli, workflows
from spqrkit.generate import build_inputs, generate_text
from spqrkit.modules.linear import SpQRLinear

QUICK = ["--calib-windows", "2", "--calib-seqlen", "64", "--quiet"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, default_tokenizer, calib_text, one_thread):
    """A 2-block random Llama with the default tokenizer, quantized rtn-w4 into a compressed checkpoint."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(default_tokenizer), max_position_embeddings=512)
    root = tmp_path_factory.mktemp("gen")
    LlamaForCausalLM(config).save_pretrained(root / "llama")
    default_tokenizer.save_pretrained(root / "llama")
    assert cli.main(["quantize", str(root / "llama"), "--preset", "rtn-w4", "--out", str(root / "q"),
                     "--calib", str(calib_text), *QUICK]) == 0
    return root / "q"


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    model = spqrkit.load(tiny_checkpoint)
    assert any(isinstance(m, SpQRLinear) for m in model.modules())
    return model


def test_cli_streams_greedy_text_from_a_quantized_checkpoint(tiny_checkpoint, tmp_path, capsys, one_thread):
    report = tmp_path / "gen.json"
    assert cli.main(["generate", str(tiny_checkpoint), "--prompt", "The capital of France is", "--max-new-tokens",
                     "6", "--device", "cpu", "--json", str(report)]) == 0
    out, err = capsys.readouterr()
    saved = json.loads(report.read_text())
    assert saved["text"].strip() and out == saved["text"] + "\n"  # stdout holds the text and nothing else
    assert saved["prompt"] == "The capital of France is" and saved["model"] == str(tiny_checkpoint)
    assert saved["device"] == "cpu" and saved["chat"] is True
    assert 1 <= saved["new_tokens"] <= 6 and (saved["new_tokens"] == 6 or saved["finish_reason"] == "eos")
    assert saved["seconds"] > 0 and saved["tokens_per_s"] == pytest.approx(saved["new_tokens"] / saved["seconds"])
    assert "tokens/s" in err and f"{saved['new_tokens']} new tokens" in err


def test_stream_equals_text_and_greedy_is_deterministic(tiny_model, default_tokenizer, one_thread):
    pieces = []
    first = generate_text(tiny_model, default_tokenizer, "Once upon a time", max_new_tokens=12, stream=pieces.append)
    assert len(pieces) > 1, "the text must arrive piece by piece"
    assert "".join(pieces) == first.text and first.text.strip()
    again = generate_text(tiny_model, default_tokenizer, "Once upon a time", max_new_tokens=12, seed=123)
    assert again.text == first.text and again.new_tokens == first.new_tokens  # greedy ignores the seed


def test_kv_cache_matches_full_recompute(tiny_model, default_tokenizer, one_thread):
    """Greedy decoding with the cache picks the same tokens as an argmax over full forwards without it."""
    n = 6
    result = generate_text(tiny_model, default_tokenizer, "Hello", max_new_tokens=n, chat=False)
    inputs, _ = build_inputs(default_tokenizer, "Hello", chat=False)
    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(result.new_tokens):
            logits = tiny_model(input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert default_tokenizer.decode(ids[0, result.prompt_tokens:], skip_special_tokens=True) == result.text


@pytest.mark.parametrize("max_new_tokens", [1, 4])
def test_token_count_respects_max_new_tokens(tiny_model, default_tokenizer, one_thread, max_new_tokens):
    result = generate_text(tiny_model, default_tokenizer, "Hi", max_new_tokens=max_new_tokens)
    assert 1 <= result.new_tokens <= max_new_tokens
    assert result.new_tokens == max_new_tokens or result.finish_reason == "eos"
    assert len(default_tokenizer(result.text, add_special_tokens=False).input_ids) <= max_new_tokens + 1


def test_chat_template_and_plain_prompt(tiny_model, default_tokenizer, one_thread):
    chat = generate_text(tiny_model, default_tokenizer, "Hi", max_new_tokens=1)
    plain = generate_text(tiny_model, default_tokenizer, "Hi", max_new_tokens=1, chat=False)
    assert chat.chat and not plain.chat and chat.prompt_tokens > plain.prompt_tokens + 5
    with pytest.raises(ValueError, match="no chat template"):
        build_inputs(SimpleNamespace(chat_template=None), "Hi", chat=True)


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny_model, default_tokenizer, one_thread):
    state = torch.random.get_rng_state()
    runs = [generate_text(tiny_model, default_tokenizer, "Hi", max_new_tokens=8, temperature=1.5, top_p=0.95,
                          seed=s).text for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # a random model at temperature 1.5 gives near-uniform draws
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("extra, message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "  \n"], "prompt is empty"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "max-new-tokens"),
    (["--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["--prompt", "hi", "--temperature", "1", "--top-p", "0"], "top-p"),
])
def test_bad_arguments_are_refused_before_loading(tiny_checkpoint, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(workflows, "load_for_eval", lambda *a, **k: pytest.fail("must not load the model"))
    assert cli.main(["generate", str(tiny_checkpoint), *extra]) == 2
    out, err = capsys.readouterr()
    assert message in err and err.count("\n") == 1 and out == ""


def test_missing_model_is_refused(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "missing"), "--prompt", "hi"]) == 2
    out, err = capsys.readouterr()
    assert "not found" in err and err.count("\n") == 1 and out == ""


def test_dequantize_flag_gives_the_same_greedy_text(tiny_checkpoint, tmp_path, capsys, one_thread):
    """--dequantize swaps the compressed layers for dense ones holding the reference weight: same greedy tokens."""
    texts = []
    for extra in ([], ["--dequantize"]):
        report = tmp_path / f"gen{len(extra)}.json"
        assert cli.main(["generate", str(tiny_checkpoint), "--prompt", "The capital of France is",
                         "--max-new-tokens", "6", "--device", "cpu", "--json", str(report), *extra]) == 0
        texts.append(json.loads(report.read_text())["text"])
    err = capsys.readouterr().err
    assert texts[0] == texts[1]
    assert "dequantized 14 compressed layers" in err  # 2 blocks x 7 linears


def test_fused_projections_give_the_same_greedy_text(tiny_checkpoint, tmp_path, capsys, one_thread):
    """generate fuses q/k/v and gate/up by default (--no-fuse: not): same greedy tokens, compressed or dequantized."""
    runs = {}
    for extra in ([], ["--no-fuse"], ["--dequantize"], ["--dequantize", "--no-fuse"]):
        report = tmp_path / f"gen{'_'.join(extra)}.json"
        assert cli.main(["generate", str(tiny_checkpoint), "--prompt", "The capital of France is",
                         "--max-new-tokens", "6", "--device", "cpu", "--json", str(report), *extra]) == 0
        runs[" ".join(extra)] = json.loads(report.read_text())
    err = capsys.readouterr().err
    assert "fused 4 input-sharing sets into one layer each" in err  # 2 blocks x (q/k/v, gate/up)
    assert [r["fused_layers"] for r in runs.values()] == [4, 0, 4, 0]
    assert len({r["text"] for r in runs.values()}) == 1


def test_static_cache_gives_the_same_greedy_text(tiny_checkpoint, tmp_path, capsys, one_thread):
    """--compile: a static KV cache (compiled by transformers on CUDA only; on the CPU the cache alone)."""
    texts = []
    for extra in ([], ["--compile"]):
        report = tmp_path / f"gen{len(extra)}.json"
        assert cli.main(["generate", str(tiny_checkpoint), "--prompt", "The capital of France is",
                         "--max-new-tokens", "6", "--device", "cpu", "--json", str(report), *extra]) == 0
        saved = json.loads(report.read_text())
        assert saved["compile"] == bool(extra)
        texts.append(saved["text"])
    capsys.readouterr()
    assert texts[0] == texts[1]


def test_dequantize_layers_matches_the_reference_logits(tiny_checkpoint, one_thread):
    from spqrkit.modules.linear import dequantize_layers

    model = spqrkit.load(tiny_checkpoint)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        ref = model(ids).logits
        assert dequantize_layers(model) == 14
        assert not any(isinstance(m, SpQRLinear) for m in model.modules())
        dense = model(ids).logits
    torch.testing.assert_close(dense, ref, rtol=0, atol=0)

