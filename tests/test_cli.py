"""The command line end to end on a tiny model that uses the real tokenizer, and its refusals of bad input."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from spqrkit import cli, workflows
from spqrkit.format import checkpoint
from spqrkit.format.checkpoint import is_checkpoint, verify_checkpoint


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, default_tokenizer):
    """A 2-block Llama with random weights, saved with the default model's tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(default_tokenizer), max_position_embeddings=512)
    path = tmp_path_factory.mktemp("tiny") / "llama"
    LlamaForCausalLM(config).save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


QUICK = ["--calib-windows", "4", "--calib-seqlen", "128", "--quiet"]

# Tiny models run fastest on one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quick(calib_text):
    """QUICK on a short calibration text: for the tests whose subject is not the built-in calibration corpus."""
    return ["--calib", str(calib_text), *QUICK]


def test_quantize_then_eval(tiny_llama_dir, tmp_path, capsys):
    # The default calibration corpus (LAMBADA) end to end; the other tests calibrate on a short text file.
    out = tmp_path / "q"
    report = tmp_path / "report.json"
    assert cli.main(["quantize", str(tiny_llama_dir), "--preset", "spqr-w3", "--out", str(out), "--json", str(report),
                     "--beta1", "8", *QUICK]) == 0
    record = workflows.read_quantization_record(out)
    assert record["config"]["beta1"] == 8 and record["config"]["wbits"] == 3
    assert record["calibration"] == {"corpus": "lambada", "windows": 4, "seqlen": 128, "seed": 0,
                                     "autocast_dtype": None}
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    info = verify_checkpoint(out)  # the compressed format by default, with the tokenizer beside it
    assert len(info.layers) == 2 * 7 and (out / "tokenizer.json").is_file()
    assert "wrote" in capsys.readouterr().out
    saved = json.loads(report.read_text())
    assert len(saved["layers"]) == 2 * 7 and 3.5 < saved["avg_paper_bits"] < 6
    assert not list(tmp_path.glob(".q.*")), "no temporary folder may be left behind"

    metrics = tmp_path / "eval.json"
    assert cli.main(["eval", str(out), "--seqlen", "128", "--max-windows", "2", "--json", str(metrics), "--quiet"]) == 0
    result = json.loads(metrics.read_text())
    assert result["n_windows"] == 2 and result["ppl"] > 1
    assert "perplexity" in capsys.readouterr().out


def test_quantize_dequantized_writes_a_plain_folder(tiny_llama_dir, tmp_path, quick):
    out = tmp_path / "plain"
    assert cli.main(["quantize", str(tiny_llama_dir), "--preset", "rtn-w4", "--out", str(out), "--dequantized",
                     *quick]) == 0
    assert not is_checkpoint(out) and workflows.read_quantization_record(out)["config"]["wbits"] == 4
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_existing_output_folder_is_refused_before_any_work(tiny_llama_dir, tmp_path, capsys, monkeypatch, quick):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setattr(workflows, "load_model", lambda *a, **k: pytest.fail("must not load the model"))
    assert cli.main(["quantize", str(tiny_llama_dir), "--out", str(out), *quick]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("dequantized", [False, True])
def test_a_run_that_dies_while_saving_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch, quick, dequantized):
    out = tmp_path / "crash"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    if dequantized:
        monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", boom)
    else:
        monkeypatch.setattr(checkpoint, "_write_safetensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(["quantize", str(tiny_llama_dir), "--out", str(out), *quick] + ["--dequantized"] * dequantized)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_dimension_not_divisible_by_beta2_is_refused(tiny_llama_dir, tmp_path, capsys, quick):
    # k_proj / v_proj have 32 rows: beta2 = 64 cannot tile them.
    out = tmp_path / "q"
    assert cli.main(["quantize", str(tiny_llama_dir), "--out", str(out), "--beta2", "64", *quick]) == 2
    err = capsys.readouterr().err
    assert "beta2" in err and "k_proj" in err
    assert not out.exists()


def test_nan_weights_are_refused(tiny_llama_dir, tmp_path, capsys, quick):
    bad_dir = tmp_path / "bad"
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(bad_dir)
    (bad_dir / "tokenizer.json").write_bytes((tiny_llama_dir / "tokenizer.json").read_bytes())
    (bad_dir / "tokenizer_config.json").write_bytes((tiny_llama_dir / "tokenizer_config.json").read_bytes())
    out = tmp_path / "q"
    assert cli.main(["quantize", str(bad_dir), "--out", str(out), *quick]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "up_proj" in err
    assert not out.exists()


def test_unknown_model_family_is_refused(tmp_path, default_tokenizer, capsys, quick):
    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(default_tokenizer))).save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    assert cli.main(["quantize", str(path), "--out", str(tmp_path / "q"), *quick]) == 2
    err = capsys.readouterr().err
    assert "gpt2" in err and "llama" in err


def test_too_few_calibration_tokens_is_refused(tiny_llama_dir, tmp_path, capsys, calib_text):
    assert cli.main(["quantize", str(tiny_llama_dir), "--out", str(tmp_path / "q"), "--calib", str(calib_text),
                     "--calib-windows", "1",
                     "--calib-seqlen", "16", "--quiet"]) == 2
    assert "calibration tokens" in capsys.readouterr().err


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["quantize", "default", "--out", str(tmp_path / "q"), "--preset", "nope"])
    assert cli.main(["eval", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["quantize", "default", "--out", str(tmp_path / "q"), "--wbits", "9"]) == 2
    assert "wbits" in capsys.readouterr().err


def test_config_overrides_from_the_command_line():
    args = cli.build_parser().parse_args(["quantize", "m", "--out", "o", "--preset", "spqr-w4", "--beta2", "none",
                                          "--scale-bits", "none", "--zero-bits", "none", "--tau", "inf",
                                          "--no-act-order", "--skip", "down_proj"])
    cfg = cli.config_from_args(args)
    assert cfg.wbits == 4 and cfg.beta2 is None and cfg.scale_bits is None and not cfg.has_outliers
    assert not cfg.act_order and cfg.skip_modules == ("down_proj",)
    default = cli.config_from_args(cli.build_parser().parse_args(["quantize", "m", "--out", "o"]))
    assert default == cli.get_preset("spqr-w3")


def test_eval_dequantizes_a_checkpoint_once_on_the_cpu(tiny_llama_dir, tmp_path):
    """On the CPU `eval` decodes each compressed layer once into a plain linear: the same logits and perplexity as
    the compressed layers' own (per-forward) path, which --no-dequantize keeps."""
    from spqrkit.modules.linear import SpQRLinear

    out = tmp_path / "q"
    assert cli.main(["quantize", str(tiny_llama_dir), "--preset", "spqr-w3", "--out", str(out), "--beta1", "8",
                     *QUICK]) == 0
    dense, _ = workflows.load_for_eval(out)
    compressed, tokenizer = workflows.load_for_eval(out, dequantize=False)
    assert not any(isinstance(m, SpQRLinear) for m in dense.modules())
    assert sum(isinstance(m, SpQRLinear) for m in compressed.modules()) == 2 * 7
    ids = torch.randint(0, len(tokenizer), (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(dense(ids).logits, compressed(ids).logits)

    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    results = {}
    for flag in ("--dequantize", "--no-dequantize"):
        path = tmp_path / f"{flag}.json"
        assert cli.main(["eval", str(out), "--corpus", str(text), "--seqlen", "64", "--max-windows", "3", "--quiet",
                         flag, "--json", str(path)]) == 0
        results[flag] = json.loads(path.read_text())["ppl"]
    assert results["--dequantize"] == results["--no-dequantize"]
