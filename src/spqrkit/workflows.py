"""End-to-end jobs behind the CLI: load -> calibrate -> quantize -> save, and load -> evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import QuantConfig
from .data.corpora import calibration_windows
from .data.tasks import task_spec
from .eval.perplexity import corpus_perplexity
from .eval.zeroshot import zero_shot
from .format.checkpoint import DEFAULT_MAX_SHARD_BYTES, is_checkpoint
from .io_utils import atomic_folder, check_new_folder
from .models.compressed import load as spqrkit_load
from .models.compressed import save_checkpoint
from .models.pipeline import QuantizationReport, quantize_model
from .models.source import load_model, load_tokenizer, resolve_model_ref
from .modules.linear import dequantize_layers

QUANTIZATION_FILE = "spqrkit_quantization.json"


def dtype_label(dtype: torch.dtype | None) -> str | None:
    """A dtype as records name it ("bfloat16"), or None."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def quantize_and_save(
    model_ref: str | os.PathLike,
    out: str | os.PathLike,
    config: QuantConfig,
    *,
    calib: str = "lambada",
    calib_windows: int = 32,
    calib_seqlen: int = 2048,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 1,
    offload_activations: bool = False,
    progress: bool = True,
    dequantized: bool = False,
    dense_dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    autocast_dtype: torch.dtype | None = None,
) -> QuantizationReport:
    """Quantize a model and write it to `out` with its tokenizer and the quantization record.

    By default `out` is a compressed checkpoint (docs/format.md): packed quantized linears, every other tensor in
    `dense_dtype` (default: the dtype the source folder stores, see `source_dtype`; fp32 for GGUF), loadable with
    `spqrkit.load` or, after `import spqrkit`, with `AutoModelForCausalLM.from_pretrained`. `dequantized=True`
    writes a plain Hugging Face folder instead, with the dequantized weights in full precision, for tools that do
    not read the compressed format.
    The folder appears only when everything is written: a run that dies halfway leaves no `out`.
    """
    out = check_new_folder(out)
    model, tokenizer = load_model(model_ref)
    calib_ids = calibration_windows(tokenizer, calib, n_windows=calib_windows, seqlen=calib_seqlen, seed=seed)
    report = quantize_model(model, calib_ids, config, device=device, batch_size=batch_size,
                            offload_activations=offload_activations, progress=progress,
                            autocast_dtype=autocast_dtype)
    record = {
        "config": config.to_dict(),
        "calibration": {"corpus": str(calib), "windows": calib_windows, "seqlen": calib_seqlen, "seed": seed,
                        "autocast_dtype": dtype_label(autocast_dtype)},
        "source_model": str(model_ref),
        "report": report.to_dict(),
    }
    record_text = json.dumps(record, indent=2, sort_keys=True)
    if dequantized:
        with atomic_folder(out) as tmp:
            if dense_dtype is not None:
                model.to(dense_dtype)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / QUANTIZATION_FILE).write_text(record_text)
    else:
        save_checkpoint(out, model, report.quantized, config, tokenizer=tokenizer,
                        dense_dtype=dense_dtype or source_dtype(model_ref), max_shard_bytes=max_shard_bytes,
                        extra_files={QUANTIZATION_FILE: record_text})
    return report


def source_dtype(model_ref: str | os.PathLike) -> torch.dtype | None:
    """The floating-point dtype a Hugging Face model folder stores its weights in (config.json's `dtype`), or None
    (a .gguf file, the default model, no dtype recorded). Models are quantized in fp32, which holds fp16 and bf16
    values exactly, so the unquantized tensors go back to this dtype without loss."""
    try:
        folder, gguf_file = resolve_model_ref(model_ref)
    except (FileNotFoundError, ValueError, ModuleNotFoundError):
        return None
    if gguf_file is not None:
        return None
    try:
        recorded = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    name = recorded.get("dtype") or recorded.get("torch_dtype")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(name)


def load_for_eval(model_ref: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  dequantize: bool | None = None):
    """(model, tokenizer) of "default", a .gguf file, a Hugging Face folder or a compressed spqrkit checkpoint.

    dequantize: decode each compressed layer of a checkpoint once into an ordinary linear of `dtype` (the same
    outputs as the compressed layer's reference path, at the memory of the unquantized model) instead of on every
    forward; None = only on the CPU, which has no fused kernels.
    """
    if is_checkpoint(model_ref):
        model = spqrkit_load(model_ref, device=device, dtype=dtype)
        if dequantize is None:
            dequantize = torch.device(device).type == "cpu"
        if dequantize:
            dequantize_layers(model, dtype=dtype)
        return model, load_tokenizer(model_ref)
    return load_model(model_ref, dtype=dtype, device=device)


def evaluate(
    model_ref: str | os.PathLike,
    *,
    corpus: str = "wiki",
    seqlen: int = 2048,
    max_windows: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    model=None,
    tokenizer=None,
    dequantize: bool | None = None,
) -> dict:
    """Perplexity of a model (loaded from `model_ref` unless `model` and `tokenizer` are given) as a flat dict.

    dequantize: see `load_for_eval`."""
    if model is None:
        model, tokenizer = load_for_eval(model_ref, device=device, dequantize=dequantize)
    result = corpus_perplexity(model, tokenizer, corpus, seqlen=seqlen, max_windows=max_windows, progress=progress)
    return {
        "model": str(model_ref),
        "corpus": str(corpus),
        "ppl": result.ppl,
        "mean_nll": result.mean_nll,
        "n_windows": result.n_windows,
        "n_tokens": result.n_tokens,
        "seqlen": seqlen,
        "seconds": result.seconds,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch": torch.__version__,
    }


def evaluate_tasks(
    model_ref: str | os.PathLike,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    corpus: str | None = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    dequantize: bool | None = None,
) -> dict:
    """Zero-shot accuracy on `tasks` (see `spqrkit.eval.zeroshot`), plus perplexity on `corpus` when one is given.

    The model is loaded once. The dict holds `zero_shot` (per task results and `avg_acc`) and, with a corpus,
    `perplexity` (the dict of `evaluate`).
    """
    for task in tasks:
        task_spec(task)  # an unknown name fails before the model loads
    model, tokenizer = load_for_eval(model_ref, device=device, dequantize=dequantize)
    result = {
        "model": str(model_ref),
        "zero_shot": zero_shot(model, tokenizer, tasks, limit=limit, batch_size=batch_size, progress=progress),
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch": torch.__version__,
    }
    if corpus is not None:
        result["perplexity"] = evaluate(model_ref, corpus=corpus, seqlen=seqlen, max_windows=max_windows,
                                        device=device, progress=progress, model=model, tokenizer=tokenizer)
    return result


def read_quantization_record(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / QUANTIZATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None
