"""End-to-end jobs behind the CLI: load -> calibrate -> quantize -> save, and load -> evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import QuantConfig
from .data.corpora import calibration_windows
from .eval.perplexity import corpus_perplexity
from .io_utils import atomic_folder, check_new_folder
from .models.loading import load_model
from .models.pipeline import QuantizationReport, quantize_model

QUANTIZATION_FILE = "spqrkit_quantization.json"


def quantize_and_save(
    model_ref: str | os.PathLike,
    out: str | os.PathLike,
    config: QuantConfig,
    *,
    calib: str = "lambada",
    calib_windows: int = 128,
    calib_seqlen: int = 2048,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 1,
    offload_activations: bool = False,
    progress: bool = True,
) -> QuantizationReport:
    """Quantize a model and write it as a Hugging Face folder (dequantized weights for now) plus the report.

    The folder appears only when everything is written: a run that dies halfway leaves no `out`.
    """
    out = check_new_folder(out)
    model, tokenizer = load_model(model_ref)
    calib_ids = calibration_windows(tokenizer, calib, n_windows=calib_windows, seqlen=calib_seqlen, seed=seed)
    report = quantize_model(model, calib_ids, config, device=device, batch_size=batch_size,
                            offload_activations=offload_activations, progress=progress)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "config": config.to_dict(),
            "calibration": {"corpus": str(calib), "windows": calib_windows, "seqlen": calib_seqlen, "seed": seed},
            "source_model": str(model_ref),
            "report": report.to_dict(),
        }
        (tmp / QUANTIZATION_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return report


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
) -> dict:
    """Perplexity of a model (loaded from `model_ref` unless `model` and `tokenizer` are given) as a flat dict."""
    if model is None:
        model, tokenizer = load_model(model_ref, device=device)
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


def read_quantization_record(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / QUANTIZATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None
