"""Zero-shot accuracy (full splits of the paper's five tasks) of the baseline, RTN, GPTQ and SpQR on the default model.

Each configuration is quantized from the same model with 32 random 2048-token LAMBADA windows (seed 0), then scored
with `spqrkit.eval.zeroshot` (lm-eval's prompts and metrics). The JSON is rewritten after every row.

    python benchmarks/zero_shot_table.py --device cuda --json zero_shot.json [--limit N]
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import torch

from spqrkit.config import get_preset
from spqrkit.data.corpora import calibration_windows
from spqrkit.demo import restore_linear_weights, snapshot_linear_weights
from spqrkit.eval.zeroshot import TASK_NAMES, zero_shot
from spqrkit.io_utils import atomic_write_text
from spqrkit.models.pipeline import quantize_model
from spqrkit.models.source import load_model

ROWS = {
    "baseline": None,
    "rtn-w4": ("rtn-w4", {}),
    "gptq-w4": ("gptq-w4", {}),
    "spqr-3.6": ("spqr-w3", {"outlier_threshold": 1.0}),
    "spqr-4.6": ("spqr-w4", {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--limit", type=int, default=None, help="first N items per task (default: full splits)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="zero_shot.json")
    args = p.parse_args()

    model, tokenizer = load_model("default")
    calib_ids = calibration_windows(tokenizer, "lambada", n_windows=args.calib_windows, seqlen=2048, seed=0)
    saved = snapshot_linear_weights(model)
    result = {"benchmark": "zero_shot_table", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "limit": args.limit, "calibration": {"corpus": "lambada", "windows": args.calib_windows,
                                                   "seqlen": 2048, "seed": 0}, "rows": []}
    for key in args.rows.split(","):
        restore_linear_weights(model, saved)
        row = {"key": key}
        if ROWS[key] is not None:
            preset, overrides = ROWS[key]
            config = get_preset(preset, **overrides)
            report = quantize_model(model, calib_ids, config, device=args.device, batch_size=8, progress=False)
            row.update(config=config.to_dict(), bits=report.avg_paper_bits, outliers=report.outlier_share)
        model.to(args.device)
        zs = zero_shot(model, tokenizer, TASK_NAMES, limit=args.limit, batch_size=args.batch_size, progress=False)
        model.to("cpu")
        row["zero_shot"] = zs
        result["rows"].append(row)
        atomic_write_text(args.json, json.dumps(result, indent=2, default=str))
        print(format_row(row), flush=True)

    print("\n| config | bits (Eq. 4) | " + " | ".join(TASK_NAMES) + " | avg acc |")
    print("|---|---|" + "---|" * len(TASK_NAMES) + "---|")
    for row in result["rows"]:
        print(format_row(row))


def format_row(row: dict) -> str:
    zs = row["zero_shot"]
    tasks = zs["tasks"]
    cells = []
    for t in TASK_NAMES:
        r = tasks[t]
        norm = f" / {100 * r['acc_norm']:.1f}" if r.get("acc_norm") is not None else ""
        cells.append(f"{100 * r['acc']:.1f}{norm}")
    bits = f"{row['bits']:.3f}" if "bits" in row else "fp32"
    return f"| {row['key']} | {bits} | " + " | ".join(cells) + f" | {100 * zs['avg_acc']:.2f} |"


if __name__ == "__main__":
    main()
