"""Host (CPU) time of one eager SpQRLinear call against one fp16 nn.Linear call, per launch path.

Eager decoding (no CUDA graph, no torch.compile) is bound by the host when each linear's Python and kernel-launch
work exceeds its GPU time: at one row a 4096x4096 SpQR matvec runs for about 9 us on an H100, cuBLAS for 18. Each
row of the table is the wall time per call of a loop of calls (the GPU keeps up: the host is the limit), for the
whole layer and for the launch paths below it: the custom op's dispatch (`torch.ops.spqrkit.fused_matmul`, which the
layer skips in eager mode, `spqrkit.kernels.ops.eager`), the kernel's launcher, and its x kernel alone.

    python benchmarks/host_overhead.py [--json out.json]      # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from spqrkit.config import get_preset
from spqrkit.format.synthetic import random_quantized_weight
from spqrkit.kernels import gemv_pairs, ops
from spqrkit.modules import eager_graphs
from spqrkit.modules.linear import SpQRLinear, choose_kernel, tensors_key


def per_call_us(fn, calls: int, rounds: int) -> float:
    """Median over `rounds` of the wall time per call of `calls` calls (after a warm-up)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append(1e6 * (time.perf_counter() - t) / calls)
    return statistics.median(times)


def square_layers(n: int) -> tuple[SpQRLinear, torch.nn.Linear]:
    """(a random spqr-w3 SpQRLinear, an fp16 nn.Linear), both n x n, on the GPU."""
    layer = SpQRLinear.from_quantized(random_quantized_weight(n, n, get_preset("spqr-w3"), seed=0, device="cuda"))
    return layer, torch.nn.Linear(n, n, bias=False, device="cuda", dtype=torch.float16)


def launch_paths(layer: SpQRLinear, dense: torch.nn.Linear, x: torch.Tensor, kernel: str) -> dict:
    """name -> a call, from the whole layer down to the kernel's launcher (for the kernel the selector picks), and
    the pieces of an eager call through its CUDA graph (`spqrkit.modules.eager_graphs`): the kernel's selection,
    the buffers' key (`linear.tensors_key` of the packed tensors, bias and outlier bases), the replay alone (x
    copied in, the graph replayed, its output copied out)."""
    n = layer.in_features
    bases = layer.outlier_bases()
    p = layer.packed_layer(bases)
    paths = {"fp16 nn.Linear": lambda: dense(x), "SpQRLinear": lambda: layer(x)}
    if eager_graphs.wanted(x) and kernel != "dequantize":
        packed = layer.packed_layer()
        paths["  choose_kernel"] = lambda: choose_kernel(layer, x)  # (eager calls keep its pick: select_matmul)
        paths["  its buffers' key"] = lambda: (tensors_key(packed.stored_tensors())
                                                + tensors_key((packed.perm, layer.bias, bases)))

        def impl(v):
            return ops.fused_matmul_impl(v, p, layer.bias, kernel)

        impl(x)  # (compiles, and makes the constants a capture cannot copy from the host, as the layer's first call)
        entry = eager_graphs._capture(x, impl)

        def replay():
            entry.x.copy_(x)
            entry.graph.replay()
            return entry.y.clone()

        paths["  its graph replay"] = replay
    if kernel != "dequantize":
        paths["custom op dispatch"] = lambda: ops.fused_matmul(x, p, layer.bias, kernel)
        paths["op implementation"] = lambda: ops.fused_matmul_impl(x, p, layer.bias, kernel)
    if kernel == "gemv_pairs":
        paths["gemv_pairs launcher"] = lambda: gemv_pairs.gemv_pairs(x, p, layer.bias)
        paths["its x kernel alone"] = lambda: gemv_pairs.gather_x_pairs(
            x, layer.perm, layer.config.wbits, layer.config.beta1 or 0, 64, -(-n // 2048) * 64)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096, help="the layer is size x size (default 4096)")
    p.add_argument("--rows", default="1,8,128")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/host_overhead.py needs a CUDA device", file=sys.stderr)
        return 2
    n = args.size
    layer, dense = square_layers(n)
    rows_out = []
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, n, device="cuda", dtype=torch.float16)
            kernel = choose_kernel(layer, x)
            for name, fn in launch_paths(layer, dense, x, kernel).items():
                us = per_call_us(fn, args.calls, args.rounds)
                rows_out.append({"rows": rows, "kernel": kernel, "path": name, "us_per_call": us})
                print(f"{n}x{n} {rows:>4} rows ({kernel:<10}) {name:<24} {us:8.1f} us per call", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "host_overhead", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "size": n, "calls": args.calls,
            "rounds": args.rounds, "rows": rows_out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
