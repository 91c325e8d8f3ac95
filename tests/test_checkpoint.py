"""Compressed checkpoints end to end on tiny models: write, verify, load (spqrkit.load and transformers), inspect,
and the refusal of damaged folders."""

from __future__ import annotations

import functools
import json
import shutil
import struct

import pytest
import torch
import transformers
from test_families import TINY_CONFIGS, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

import spqrkit
from spqrkit import cli
from spqrkit.config import get_preset
from spqrkit.format import checkpoint
from spqrkit.format.checkpoint import read_safetensors_header, verify_checkpoint
from spqrkit.format.spec import MANIFEST_FILE, SHARD_INDEX_FILE, FormatError
from spqrkit.models.compressed import save_checkpoint
from spqrkit.models.pipeline import quantize_model
from spqrkit.modules.linear import SpQRLinear

CASES = {
    # Llama with tied embeddings and the paper's 3-bit SpQR config (outliers, 3-bit statistics).
    "llama-spqr-w3-tied": ("llama", get_preset("spqr-w3", beta1=8), {"tie_word_embeddings": True}),
    # Qwen2: q, k, v have biases; 4-bit SpQR.
    "qwen2-spqr-w4": ("qwen2", get_preset("spqr-w4"), {}),
    # OPT: biases everywhere, fp16 statistics in groups of 32 (in = 64 / 128: two and four groups).
    "opt-gptq-w4-g32": ("opt", get_preset("gptq-w4-g128", beta1=32), {}),
}


# Tiny models run fastest on one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def ids(seed: int = 0, n: int = 2, seqlen: int = 24) -> torch.Tensor:
    return torch.randint(3, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@functools.cache
def quantized(case: str):
    """(model with dequantized weights written back, report), quantized in memory once per session."""
    kind, config, overrides = CASES[case]
    torch.manual_seed(0)
    hf_config = TINY_CONFIGS[kind]()
    for key, value in overrides.items():
        setattr(hf_config, key, value)
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    report = quantize_model(model, ids(1, n=8, seqlen=32), config, progress=False)
    return model, report


@functools.cache
def saved(case: str, tmp_root, **kwargs) -> checkpoint.CheckpointInfo:
    model, report = quantized(case)
    return save_checkpoint(tmp_root / case, model, report.quantized, report.config, **kwargs)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpt")


def logits(model, x=None):
    with torch.no_grad():
        return model(ids() if x is None else x, use_cache=False).logits


# ---------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("case", CASES)
def test_loaded_model_equals_the_in_memory_quantized_model(case, root):
    model, report = quantized(case)
    info = saved(case, root)
    loaded = spqrkit.load(info.folder)
    assert torch.equal(logits(loaded), logits(model))

    modules = dict(loaded.named_modules())
    assert sorted(info.layers) == sorted(report.quantized)
    for layer in report.layers:
        module = modules[layer.name]
        assert isinstance(module, SpQRLinear)
        assert torch.equal(module.dequantize(), report.quantized[layer.name].dequantize())
        # The bytes the format stores for a layer are exactly its predicted real bits.
        assert 8 * info.layer_bytes(layer.name) == layer.real_bits
    # Dense tensors are what the model had.
    for name, p in model.named_parameters():
        module_name = name.rpartition(".")[0]
        if module_name not in report.quantized or name.endswith(".bias"):
            assert torch.equal(loaded.get_parameter(name), p), name


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_every_family_round_trips(kind, tmp_path):
    """The loader is generic: every supported architecture (rotary buffers, Gemma's embedding scale, biases, fused
    projections, tied heads) comes back equal to the in-memory quantized model, through both loaders."""
    model = tiny_model(kind)
    config = get_preset("spqr-w3", algorithm="rtn", act_order=False)
    report = quantize_model(model, ids(1, n=2, seqlen=16), config, progress=False)
    folder = save_checkpoint(tmp_path / kind, model, report.quantized, config).folder
    expected = logits(model)
    assert torch.equal(logits(spqrkit.load(folder)), expected)
    assert torch.equal(logits(transformers.AutoModelForCausalLM.from_pretrained(folder)), expected)


def test_tied_embeddings_are_stored_once_and_tied_after_loading(root):
    info = saved("llama-spqr-w3-tied", root)
    assert "model.embed_tokens.weight" in info.tensors and "lm_head.weight" not in info.tensors
    loaded = spqrkit.load(info.folder)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_from_pretrained_after_import_spqrkit(root):
    for case in CASES:
        model, _ = quantized(case)
        folder = saved(case, root).folder
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
        assert isinstance(loaded.model.layers[0].self_attn.q_proj if case != "opt-gptq-w4-g32"
                          else loaded.model.decoder.layers[0].self_attn.q_proj, SpQRLinear)
        assert torch.equal(logits(loaded), logits(model)), case
        # generate() may compile the decode step with a static cache (the kernels are custom ops)
        assert loaded.hf_quantizer.is_compileable and not loaded.hf_quantizer.is_trainable
    # A lower-precision load casts the dense tensors; the packed tensors keep their stored dtypes.
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved("qwen2-spqr-w4", root).folder,
                                                               dtype=torch.bfloat16)
    q_proj = loaded.model.layers[0].self_attn.q_proj
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16 and q_proj.bias.dtype == torch.bfloat16
    assert q_proj.outlier_values.dtype == torch.float16 and q_proj.scale_stats.dtype == torch.float16
    assert q_proj.codes.dtype == torch.int32 and q_proj.perm.dtype == torch.int16
    assert torch.isfinite(logits(loaded)).all()


def test_load_never_materialises_full_precision_quantized_weights(root):
    model, report = quantized("qwen2-spqr-w4")
    folder = saved("qwen2-spqr-w4", root).folder
    # Shapes only quantized weights have (the embeddings and the head are [vocab, hidden] like gate_proj here).
    dense = {tuple(p.shape) for name, p in model.named_parameters() if name.rpartition(".")[0] not in report.quantized}
    shapes = {tuple(qw.shape) for qw in report.quantized.values()} - dense
    assert len(shapes) >= 2

    class Watch(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta"
                        and tuple(t.shape) in shapes):
                    self.seen.append((func, tuple(t.shape)))
            return out

    with Watch():
        loaded = spqrkit.load(folder)
    assert Watch.seen == []
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())


def test_sharded_checkpoint(root):
    model, report = quantized("llama-spqr-w3-tied")
    info = save_checkpoint(root / "sharded", model, report.quantized, report.config, max_shard_bytes=20_000)
    assert len(info.shards) > 3 and (info.folder / SHARD_INDEX_FILE).is_file()
    index = json.loads((info.folder / SHARD_INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(info.tensors)
    assert torch.equal(logits(spqrkit.load(info.folder)), logits(model))
    assert torch.equal(logits(transformers.AutoModelForCausalLM.from_pretrained(info.folder)), logits(model))


def test_a_loaded_checkpoint_saves_again_identically(root, tmp_path):
    info = saved("llama-spqr-w3-tied", root)
    loaded = spqrkit.load(info.folder)
    again = save_checkpoint(tmp_path / "again", loaded, {}, info.config)
    assert again.layers == info.layers and set(again.tensors) == set(info.tensors)
    assert all(again.tensors[key].sha256 == info.tensors[key].sha256 for key in info.tensors)


@pytest.mark.parametrize("case", ["llama-spqr-w3-tied", "qwen2-spqr-w4"])
def test_a_fused_model_is_refused_and_saves_identically_unfused(root, tmp_path, case):
    """save_checkpoint refuses a model with fused projections (its state dict names the fused layers, which no
    model of the architecture has) and writes nothing; unfused again (exactly), the model writes the checkpoint it
    was loaded from, tensor for tensor (qwen2: q, k and v with biases)."""
    info = saved(case, root)
    loaded = spqrkit.load(info.folder)
    report = spqrkit.fuse_projections(loaded)
    assert report.fused and not report.skipped
    with pytest.raises(FormatError, match="unfuse_projections"):
        save_checkpoint(tmp_path / "fused", loaded, {}, info.config)
    assert not (tmp_path / "fused").exists()
    assert sorted(spqrkit.unfuse_projections(loaded)) == sorted(report.fused)
    again = save_checkpoint(tmp_path / "again", loaded, {}, info.config)
    assert again.layers == info.layers and set(again.tensors) == set(info.tensors)
    assert all(again.tensors[key].sha256 == info.tensors[key].sha256 for key in info.tensors)


def test_dense_dtype_and_load_dtype(root):
    model, report = quantized("llama-spqr-w3-tied")
    info = save_checkpoint(root / "half", model, report.quantized, report.config, dense_dtype=torch.float16)
    assert json.loads((info.folder / "config.json").read_text())["dtype"] == "float16"
    loaded = spqrkit.load(info.folder)
    assert loaded.model.embed_tokens.weight.dtype == torch.float16
    assert loaded.model.norm.weight.dtype == torch.float16
    as_fp32 = spqrkit.load(info.folder, dtype=torch.float32)
    assert as_fp32.model.embed_tokens.weight.dtype == torch.float32
    assert as_fp32.model.layers[0].self_attn.q_proj.outlier_values.dtype == torch.float16


def test_inspect(root, tmp_path, capsys):
    _, report = quantized("llama-spqr-w3-tied")
    folder = saved("llama-spqr-w3-tied", root).folder
    out = tmp_path / "inspect.json"
    assert cli.main(["inspect", str(folder), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "checksums verified" in text and "model.layers.1.mlp.down_proj" in text and "fp16" in text
    d = json.loads(out.read_text())
    t = d["totals"]
    assert t["n_quantized_layers"] == len(report.layers) == len(d["layers"])
    assert 8 * t["quantized_bytes"] == sum(layer.real_bits for layer in report.layers)
    assert t["avg_bits_per_param"] == pytest.approx(report.avg_real_bits)
    assert t["avg_paper_bits_per_param"] == pytest.approx(report.avg_paper_bits)
    assert t["n_outliers"] == report.n_outliers
    headers = sum(read_safetensors_header(folder / file)[2] for file in json.loads(
        (folder / MANIFEST_FILE).read_text())["shards"])
    assert t["shard_bytes"] == t["tensor_bytes"] + headers  # the headers are the only overhead
    assert d["config"] == report.config.to_dict()


def test_writing_is_atomic(root, monkeypatch):
    model, report = quantized("llama-spqr-w3-tied")
    calls = []

    def fail_on_second(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        checkpoint.save_file(tensors, str(path), metadata={"format": "pt", "spqrkit_format_version": "1"})

    monkeypatch.setattr(checkpoint, "_write_safetensors", fail_on_second)
    target = root / "crash" / "ckpt"
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model, report.quantized, report.config, max_shard_bytes=20_000)
    assert not target.exists() and list(target.parent.iterdir()) == []
    with pytest.raises(FileExistsError):
        save_checkpoint(saved("llama-spqr-w3-tied", root).folder, model, report.quantized, report.config)


def test_the_format_writes_a_folder_from_tensors_alone(root, tmp_path):
    """write_checkpoint needs no model: a checkpoint's own tensors, layers and config write the same shards again,
    and a packed tensor that disagrees with the spec is refused before anything is written."""
    info = saved("qwen2-spqr-w4", root)
    tensors = checkpoint.load_tensors(info)
    hf_config = transformers.AutoConfig.from_pretrained(info.folder)
    again = checkpoint.write_checkpoint(tmp_path / "again", tensors, info.layers, info.config, hf_config)
    assert again.tensors == info.tensors and again.layers == info.layers  # every tensor's bytes (SHA-256)
    # (safetensors writes the header's metadata entries in no fixed order, so a shard's own hash may differ)
    assert {k: v["bytes"] for k, v in again.shards.items()} == {k: v["bytes"] for k, v in info.shards.items()}
    name = next(iter(info.layers))
    bad = dict(tensors, **{f"{name}.codes": tensors[f"{name}.codes"][:, :-1]})
    with pytest.raises(FormatError, match=rf"{name}\.codes: torch\.int32 \[\d+, \d+\], but the format stores"):
        checkpoint.write_checkpoint(tmp_path / "bad", bad, info.layers, info.config, hf_config)
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------------- refusals
@pytest.fixture
def damaged(root, tmp_path):
    """A fresh copy of a saved checkpoint, to break."""
    folder = tmp_path / "copy"
    shutil.copytree(saved("llama-spqr-w3-tied", root).folder, folder)
    return folder


TENSOR = "model.layers.1.mlp.up_proj.codes"


def refused(folder, *patterns):
    """Both loaders refuse `folder` with a FormatError whose message matches every pattern."""
    for load in (spqrkit.load, transformers.AutoModelForCausalLM.from_pretrained):
        with pytest.raises(FormatError) as exc:
            load(folder)
        for pattern in patterns:
            assert pattern in str(exc.value), (load, str(exc.value))
    return str(exc.value)


def test_a_flipped_byte_is_refused_naming_file_and_tensor(damaged):
    shard = damaged / "model.safetensors"
    header, _, _ = read_safetensors_header(shard)
    data = bytearray(shard.read_bytes())
    data[header[TENSOR].begin + 5] ^= 0x10
    shard.write_bytes(bytes(data))
    refused(damaged, "model.safetensors", TENSOR, "checksum")
    verify_checkpoint(damaged, checksums=False)  # the structure itself is intact


def test_a_truncated_shard_is_refused(damaged):
    shard = damaged / "model.safetensors"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 100)
    refused(damaged, "model.safetensors", "truncated", "cut off")


def test_a_changed_shape_in_a_header_is_refused_naming_the_tensor(damaged):
    shard = damaged / "model.safetensors"
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    rows, words = header[TENSOR]["shape"]
    header[TENSOR]["shape"] = [rows // 2, words * 2]  # same byte count: only the shape is wrong
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    shard.write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n:])
    refused(damaged, "model.safetensors", TENSOR, f"[{rows // 2}, {words * 2}] in the header")


def test_an_unknown_format_version_is_refused(damaged):
    config_path = damaged / "config.json"
    original = config_path.read_text()
    cfg = json.loads(original)
    cfg["quantization_config"]["format_version"] = 99
    config_path.write_text(json.dumps(cfg))
    refused(damaged, "format version 99", "config.json")

    config_path.write_text(original)
    manifest = json.loads((damaged / MANIFEST_FILE).read_text())
    manifest["format_version"] = 2
    (damaged / MANIFEST_FILE).write_text(json.dumps(manifest))
    refused(damaged, "format version 2", MANIFEST_FILE)


def test_a_manifest_inconsistent_with_the_format_is_refused(damaged):
    manifest = json.loads((damaged / MANIFEST_FILE).read_text())
    manifest["layers"]["model.layers.0.mlp.down_proj"]["in_features"] = 256
    (damaged / MANIFEST_FILE).write_text(json.dumps(manifest))
    refused(damaged, "model.layers.0.mlp.down_proj.codes", "format version 1 stores")


def test_a_missing_manifest_is_refused(damaged):
    (damaged / MANIFEST_FILE).unlink()
    refused(damaged, MANIFEST_FILE, "missing")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loaded_on_cuda_equals_the_in_memory_model_on_cuda(root):
    import copy

    model, _ = quantized("qwen2-spqr-w4")
    folder = saved("qwen2-spqr-w4", root).folder
    reference = copy.deepcopy(model).to("cuda")
    x = ids().cuda()
    for loaded in (spqrkit.load(folder, device="cuda"),
                   transformers.AutoModelForCausalLM.from_pretrained(folder, device_map="cuda")):
        q_proj = loaded.model.layers[0].self_attn.q_proj
        assert q_proj.codes.is_cuda and q_proj.outlier_values.dtype == torch.float16
        assert torch.equal(logits(loaded, x), logits(reference, x))
    # In half precision both loaders build the same model.
    half = [spqrkit.load(folder, device="cuda", dtype=torch.float16),
            transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16, device_map="cuda")]
    assert torch.equal(logits(half[0], x), logits(half[1], x))


@pytest.mark.slow
def test_default_model_size_on_disk(default_model_and_tokenizer, tmp_path):
    """SmolLM2-135M with the 3-bit SpQR layout (RTN fit, so it runs in seconds): the shards hold exactly the
    predicted real bits plus the dense tensors, far below the fp16 size."""
    import copy

    from spqrkit.format.describe import describe_checkpoint

    model, tokenizer = default_model_and_tokenizer
    model = copy.deepcopy(model)
    config = get_preset("spqr-w3", algorithm="rtn", act_order=False)
    report = quantize_model(model, torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(0)),
                            config, progress=False)
    info = save_checkpoint(tmp_path / "smollm2", model, report.quantized, config, tokenizer=tokenizer,
                           dense_dtype=torch.float16)
    totals = describe_checkpoint(info.folder)["totals"]
    predicted = sum(layer.real_bits for layer in report.layers) / 8 + totals["dense_bytes"]
    assert totals["quantized_bytes"] * 8 == sum(layer.real_bits for layer in report.layers)
    assert abs(totals["shard_bytes"] - predicted) / predicted < 0.02
    assert totals["shard_bytes"] < 0.5 * totals["fp16_bytes"]
    assert totals["dense_dtypes"] == ["F16"] and 0.001 < totals["outlier_share"] < 0.05
    # Loaded in fp32, it is the in-memory model with its dense tensors rounded to fp16.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rpartition(".")[0] not in report.quantized:
                p.copy_(p.half().float())
    loaded = spqrkit.load(info.folder, dtype=torch.float32)
    x = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(loaded, x), logits(model, x))
