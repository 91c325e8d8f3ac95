"""A/B timing of one kernel's variants (launcher options), interleaved, on LLaMA-2 shapes (GPU).

Tuning decisions compare variants whose differences are a few per cent, smaller than the drift between two runs of
`kernel_speed.py`. Here every variant is timed on every shape in each of `--rounds` rounds, in turn, with
kernel_speed's method (a CUDA graph of calls on weight copies that exceed the L2 cache, CUDA-event median); the
table gives each variant's median over the rounds, its ratio to the first variant and to fp16 F.linear (timed in the
same rounds), and the effective bandwidth against the copy bandwidth measured in the same run. Every variant's output
is checked against the reference dequantization first (relative max error printed; a variant off by more than 2e-2
is reported and not timed).

    python benchmarks/experiments/kernel_ab.py --kernel gemv_pairs --variant base='{}' \\
        --variant magic='{"subnormal": false}' --shapes "7B q/k/v/o,70B gate/up" --batches 1,2 --json ab.json

A variant's options may name another kernel ("kernel": "gemv_seg"), to time two kernels side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from kernel_speed import ACT_DTYPE, SHAPES, copies_for, copy_bandwidth, layer_bytes, make_layers, time_graph

from spqrkit.config import get_preset
from spqrkit.kernels import dot, gemv, gemv_pairs
from spqrkit.modules.linear import MATMULS

LAUNCHERS = {"gemv_pairs": gemv_pairs.gemv_pairs, "dot_pairs": dot.dot_pairs, "gemv_seg": gemv.gemv,
             "dot": dot.dot}
FIXED = {"gemv_seg": {"segments": True}}  # options that make the launcher that kernel


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, opts = text.partition("=")
    if not name or not opts:
        raise argparse.ArgumentTypeError(f"--variant NAME=JSON, got {text!r}")
    try:
        parsed = json.loads(opts)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--variant {name}: {e}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"--variant {name}: options must be a JSON object")
    return name, parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", choices=sorted(LAUNCHERS), default="gemv_pairs")
    p.add_argument("--variant", type=parse_variant, action="append", required=True,
                   help="NAME=JSON options of the launcher; the first is the baseline of the ratios")
    p.add_argument("--shapes", default="7B q/k/v/o,7B gate/up,7B down,70B q/o,70B gate/up,70B down")
    p.add_argument("--batches", default="1")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--preset", default="spqr-w3")
    p.add_argument("--beta1", type=int, help="the preset's group size overridden (e.g. 32, 64)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernel_ab.py needs a CUDA GPU", file=sys.stderr)
        return 2
    config = get_preset(args.preset, **({"beta1": args.beta1} if args.beta1 else {}))
    names = [s.strip() for s in args.shapes.split(",")]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        p.error(f"unknown shapes {unknown}; known: {sorted(SHAPES)}")
    batches = [int(b) for b in args.batches.split(",")]
    variants = dict(args.variant)
    bw = copy_bandwidth(10)
    cases = []
    for name in names:
        out, n_in = SHAPES[name]
        layers = make_layers(out, n_in, config, 0)
        dense = [torch.randn(out, n_in, device="cuda", dtype=ACT_DTYPE) * 0.02
                 for _ in range(copies_for(out * n_in * 2))]
        for batch in batches:
            x = torch.randn(batch, n_in, device="cuda", dtype=ACT_DTYPE)
            ref = MATMULS["reference"](layers[0], x).float()
            row = {"shape": name, "out": out, "in": n_in, "batch": batch, "layer_bytes": layer_bytes(layers[0]),
                   "err": {}, "times": {v: [] for v in [*variants, "fp16"]}}

            def call(lay, opts, x=x, out=out):
                opts = dict(opts)
                kernel = opts.pop("kernel", args.kernel)  # (a variant may name another kernel)
                return LAUNCHERS[kernel](x, lay.packed_layer(lay.outlier_bases()), None, **FIXED.get(kernel, {}),
                                         **opts)

            live = {}
            for v, opts in variants.items():
                try:
                    y = call(layers[0], opts).float()
                except (RuntimeError, ValueError) as e:  # (reported, not timed: the other variants still run)
                    print(f"{name} b{batch} {v}: {type(e).__name__}: {e}", file=sys.stderr)
                    row["err"][v] = float("inf")
                    continue
                err = ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
                row["err"][v] = err
                if err <= 2e-2:
                    live[v] = opts
            for _ in range(args.rounds):
                for v, opts in live.items():
                    row["times"][v].append(time_graph([lambda lay=lay, o=opts: call(lay, o) for lay in layers],
                                                      args.repeats))
                row["times"]["fp16"].append(time_graph([lambda w=w, x=x: F.linear(x, w) for w in dense],
                                                         args.repeats))
            row["median_s"] = {v: statistics.median(t) for v, t in row["times"].items() if t}
            cases.append(row)
        del layers, dense
        torch.cuda.empty_cache()
    base = next(iter(variants))
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s; {args.kernel}, {args.preset} (beta1 {config.beta1}), "
          f"{args.rounds} rounds; "
          f"us (x {base}, x fp16, % of copy)")
    print(f"{'shape':<14} {'b':>2} " + " ".join(f"{v:>26}" for v in [*variants, "fp16"]))
    for row in cases:
        cells = []
        for v in [*variants, "fp16"]:
            t = row["median_s"].get(v)
            if t is None:
                cells.append(f"{'err ' + format(row['err'][v], '.1e'):>26}")
                continue
            tb = row["median_s"].get(base)
            nbytes = row["layer_bytes"] if v != "fp16" else row["out"] * row["in"] * 2
            cells.append(f"{t * 1e6:7.1f} {(tb / t if tb else float('nan')):5.2f}x "
                         f"{row['median_s']['fp16'] / t:5.2f}x {100 * nbytes / t / bw:4.0f}%")
        print(f"{row['shape']:<14} {row['batch']:>2} " + " ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(),
                       "kernel": args.kernel, "preset": args.preset, "config": config.to_dict(), "variants": variants,
                       "copy_bandwidth_Bps": bw, "rounds": args.rounds, "cases": cases}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
