"""`spqrkit demo`: the baseline, RTN, GPTQ and SpQR side by side on one model, one calibration set, one eval set.

The model is loaded once; before each configuration its linear weights are restored from a copy, so every row
starts from the same full-precision model and sees the same calibration windows and evaluation windows. Each row also
gets the zero-shot average accuracy (acc) over the paper's five tasks, on the first `tasks_limit` items of each task
so that it stays quick: a small-sample figure (its standard error is in the JSON), not the full-split number of
`spqrkit eval --tasks all`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from .config import QuantConfig, get_preset
from .data.corpora import calibration_windows, tokenize_corpus
from .data.tasks import TASK_NAMES
from .eval.perplexity import perplexity
from .eval.zeroshot import zero_shot
from .models.pipeline import quantize_model
from .models.source import load_model
from .workflows import dtype_label

DEFAULT_TASKS_LIMIT = 15  # items per zero-shot task and row: about 11 s a row on 2 idle CPU cores (20: 15 s)


@dataclass(frozen=True)
class DemoRow:
    key: str
    label: str
    preset: str | None  # None = the unquantized baseline
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self) -> QuantConfig | None:
        return None if self.preset is None else get_preset(self.preset, **self.overrides)


DEMO_ROWS: tuple[DemoRow, ...] = (
    DemoRow("baseline", "baseline (unquantized)", None),
    DemoRow("rtn-w4", "RTN 4-bit, per-channel", "rtn-w4"),
    DemoRow("gptq-w4", "GPTQ 4-bit, per-channel, act_order", "gptq-w4"),
    DemoRow("spqr-3.6", "SpQR w3, 16x16, 3-bit stats, tau 1.0", "spqr-w3", {"outlier_threshold": 1.0}),
    DemoRow("spqr-4.6", "SpQR w4, 16x16, 3-bit stats, tau 0.2", "spqr-w4"),
)


def snapshot_linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every nn.Linear weight, by module name, so several configurations can start from one model."""
    return {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def restore_linear_weights(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in saved.items():
            modules[name].weight.copy_(w)


def run_demo(
    *,
    model_ref: str = "default",
    rows: list[str] | None = None,
    corpus: str = "wiki",
    seqlen: int = 2048,
    max_windows: int | None = 8,
    calib: str = "lambada",
    calib_windows: int = 32,
    calib_seqlen: int = 512,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 4,
    offload_activations: bool = False,
    tasks_limit: int = DEFAULT_TASKS_LIMIT,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Run the demo rows and return every figure: settings, environment and one dict per row.

    `tasks_limit` items of each zero-shot task per row; 0 skips the zero-shot column.
    """
    if tasks_limit < 0:
        raise ValueError(f"tasks_limit must be 0 (no zero-shot) or positive, got {tasks_limit!r}")
    known = {r.key: r for r in DEMO_ROWS}
    wanted = list(known) if rows is None else rows
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise ValueError(f"unknown demo rows {unknown}; choose from {list(known)}")
    started = time.perf_counter()
    model, tokenizer = load_model(model_ref)
    eval_tokens = tokenize_corpus(tokenizer, corpus)
    calib_ids = calibration_windows(tokenizer, calib, n_windows=calib_windows, seqlen=calib_seqlen, seed=seed)
    saved = snapshot_linear_weights(model)

    results: list[dict[str, Any]] = []
    baseline_ppl = None
    # The baseline always runs first and is always reported: every change is relative to it.
    for key in ["baseline"] + [k for k in wanted if k != "baseline"]:
        row = known[key]
        config = row.config()
        label = row.label
        if row.preset is None and model_ref == "default":
            label = "baseline: the dequantized GGUF model"  # its weights already sit on a 4-bit grid
        entry: dict[str, Any] = {"key": row.key, "label": label}
        restore_linear_weights(model, saved)
        if config is not None:
            entry["config"] = config.to_dict()
            report = quantize_model(model, calib_ids, config, device=device, batch_size=batch_size,
                                    offload_activations=offload_activations, progress=progress,
                                    autocast_dtype=autocast_dtype)
            entry.update(
                avg_bits_paper=report.avg_paper_bits,
                avg_bits_real=report.avg_real_bits,
                outlier_share=report.outlier_share,
                quant_seconds=report.total_seconds,
                report=report.to_dict(),
            )
        model.to(device)
        ppl = perplexity(model, eval_tokens, seqlen=seqlen, max_windows=max_windows, progress=progress)
        entry.update(ppl=ppl.ppl, eval_windows=ppl.n_windows, eval_seconds=ppl.seconds)
        if tasks_limit:
            tasks = zero_shot(model, tokenizer, TASK_NAMES, limit=tasks_limit, progress=progress)
            entry.update(zero_shot_avg=tasks["avg_acc"], zero_shot_seconds=tasks["seconds"], zero_shot=tasks)
        else:
            entry.update(zero_shot_avg=None, zero_shot_seconds=0.0)
        model.to("cpu")
        if config is None:
            baseline_ppl = ppl.ppl
            entry.update(avg_bits_paper=None, avg_bits_real=None, outlier_share=0.0, quant_seconds=0.0)
        entry["ppl_change"] = ppl.ppl / baseline_ppl - 1
        results.append(entry)

    return {
        "model": str(model_ref),
        "eval": {"corpus": corpus, "seqlen": seqlen, "max_windows": max_windows},
        "zero_shot": {"tasks": list(TASK_NAMES) if tasks_limit else [], "limit": tasks_limit, "average_of": "acc"},
        "calibration": {"corpus": calib, "windows": calib_windows, "seqlen": calib_seqlen, "seed": seed,
                        "autocast_dtype": dtype_label(autocast_dtype)},
        "device": device,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": results,
        "wall_seconds": time.perf_counter() - started,
    }


def format_table(result: dict[str, Any]) -> str:
    ev, cal, zs = result["eval"], result["calibration"], result["zero_shot"]
    lines = [
        f"model {result['model']} | eval {ev['corpus']}, {ev['max_windows'] or 'all'} windows x {ev['seqlen']} "
        f"| calibration {cal['corpus']}, {cal['windows']} x {cal['seqlen']} tokens, seed {cal['seed']} "
        f"| {result['device']}, {result['machine']}",
        "",
        f"| {'configuration':<40} | {'bits (Eq.4)':>11} | {'bits (real)':>11} | {'outliers':>8} | "
        f"{'wiki ppl':>8} | {'vs base':>8} | {'0-shot avg':>10} | {'quant s':>7} |",
        f"|{'-' * 42}|{'-' * 13}|{'-' * 13}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 12}|{'-' * 9}|",
    ]
    for r in result["rows"]:
        bits = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        zero_shot_avg = "-" if r["zero_shot_avg"] is None else f"{100 * r['zero_shot_avg']:.1f}%"
        lines.append(
            f"| {r['label']:<40} | {bits(r['avg_bits_paper']):>11} | {bits(r['avg_bits_real']):>11} | "
            f"{100 * r['outlier_share']:>7.2f}% | {r['ppl']:>8.3f} | {100 * r['ppl_change']:>+7.1f}% | "
            f"{zero_shot_avg:>10} | {r['quant_seconds']:>7.1f} |"
        )
    lines.append("")
    if zs["limit"]:
        lines.append(f"0-shot avg: mean acc over {', '.join(zs['tasks'])}, first {zs['limit']} items of each "
                     "(a small sample; `spqrkit eval DIR --tasks all` gives the full splits)")
    lines.append(f"total wall time {result['wall_seconds']:.0f} s")
    return "\n".join(lines)
