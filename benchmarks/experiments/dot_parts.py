"""Where the time of the tensor-core `dot` kernel (or `dot_pairs`, `--kernel`) goes: each of its three launches
(`dot.dot_stages`: the x gather, the dense part on the tensor cores, the outlier kernel) timed alone, against the
whole call and fp16 cuBLAS, on the LLaMA-2 shapes, with 1% outliers and with none.

Timing as in benchmarks/kernel_speed.py (CUDA graphs over weight copies that exceed the L2 cache, median replay);
a stage timed alone runs without the one before it, so the sum of the stages can differ from the whole call (the
whole call also overlaps the launches: programmatic dependent launch on Hopper).

    python benchmarks/experiments/dot_parts.py [--batches 1,8,16] [--json out.json]      # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
import kernel_speed as ks

from spqrkit.config import get_preset
from spqrkit.kernels import dot
from spqrkit.modules.linear import MATMULS


def stages(layer, x, kernel="dot"):
    return dot.dot_stages(x, layer.packed_layer(layer.outlier_bases()), None, pairs=kernel == "dot_pairs")[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(ks.ISSUE_SHAPES))
    p.add_argument("--batches", default="1,8,16")
    p.add_argument("--outlier-shares", default="0.01,0")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--kernel", choices=("dot", "dot_pairs"), default="dot",
                   help="dot, or dot_pairs (the same launches with its fp16-pair dense kernel)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/experiments/dot_parts.py needs a CUDA device", file=sys.stderr)
        return 2
    config = get_preset("spqr-w3")
    rows = []
    kern = args.kernel
    print(f"{'shape':<12} {'outliers':>8} {'b':>3} {'fp16':>7} {kern:>9} {'gather':>7} {'dense':>7} "
          f"{'outlier':>7}  (us)")
    for name in args.shapes.split(","):
        out, n_in = ks.SHAPES[name]
        dense_w = [torch.randn(out, n_in, device="cuda", dtype=torch.float16)]
        dense_w += [dense_w[0].clone() for _ in range(ks.copies_for(out * n_in * 2) - 1)]
        for share in (float(s) for s in args.outlier_shares.split(",")):
            ks.OUTLIER_SHARE = share
            layers = ks.make_layers(out, n_in, config, 0)
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.randn(batch, n_in, device="cuda", dtype=torch.float16)
                row = {"shape": name, "out": out, "in": n_in, "batch": batch, "outlier_share": share,
                       "kernel": kern, "err": ks.check(layers[0], x, kern),
                       "fp16_s": ks.time_graph([lambda w=w, x=x: F.linear(x, w) for w in dense_w], args.repeats),
                       "dot_s": ks.time_graph([lambda lay=lay, x=x: MATMULS[kern](lay, x) for lay in layers],
                                              args.repeats)}  # ("dot_s": the whole call of `kernel`)
                per_layer = [stages(lay, x, kern) for lay in layers]
                for i, (stage, _) in enumerate(per_layer[0]):
                    row[f"{stage}_s"] = ks.time_graph([st[i][1] for st in per_layer], args.repeats)
                rows.append(row)
                print(f"{name:<12} {share:>8.2%} {batch:>3} " + " ".join(
                    f"{row[k] * 1e6:{9 if k == 'dot_s' else 7}.1f}"
                    for k in ("fp16_s", "dot_s", "gather x_s", "dense_s", "outliers_s")),
                    flush=True)
            del layers
            torch.cuda.empty_cache()
        del dense_w
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "preset": "spqr-w3", "rows": rows},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
