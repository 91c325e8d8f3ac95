"""Run each SpQR matmul kernel a few times on one LLaMA-2 shape, for a profiler to capture (Nsight Compute).

    ncu --clock-control none --kernel-name regex:gemv --launch-skip 3 --launch-count 1 \
        python benchmarks/experiments/profile_kernels.py --kernels gemv

Nothing is timed here (benchmarks/kernel_speed.py times); this only gives a profiler well-warmed launches of the
kernels named, on a random spqr-w3 layer with 1% outliers (`--outlier-share`), at batch `--batch`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

from spqrkit.config import get_preset
from spqrkit.format.synthetic import random_quantized_weight
from spqrkit.modules.linear import MATMULS, SpQRLinear


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4096x4096", help="OUTxIN")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--preset", default="spqr-w3")
    p.add_argument("--outlier-share", type=float, default=0.01)
    p.add_argument("--kernels", default="gemv", help="comma-separated: MATMULS names, or spqr-quant")
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/experiments/profile_kernels.py needs a CUDA device", file=sys.stderr)
        return 2
    out, n_in = (int(v) for v in args.shape.split("x"))
    qw = random_quantized_weight(out, n_in, get_preset(args.preset), outlier_share=args.outlier_share, seed=0,
                                 device="cuda")
    layer = SpQRLinear.from_quantized(qw)
    x = torch.randn(args.batch, n_in, device="cuda", dtype=torch.float16)
    ref = MATMULS["reference"](layer, x).float()
    for name in args.kernels.split(","):
        if name == "spqr-quant":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
            from spqr_quant_adapter import spqr_quant_matvec, to_spqr_quant

            tensors = {k: v.cpu() for k, v in layer.packed_tensors().items()}
            theirs = to_spqr_quant(tensors, (out, n_in), get_preset(args.preset))
            call = functools.partial(spqr_quant_matvec, theirs, x)
        else:
            call = functools.partial(MATMULS[name], layer, x)
        for _ in range(args.calls):
            y = call()
        torch.cuda.synchronize()
        err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
        print(f"{name}: {args.calls} calls, max |y - ref| / max |ref| = {err:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
