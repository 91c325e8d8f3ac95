"""SpQR matmul kernels vs torch fp16 (cuBLAS) vs the authors' kernel (PyPI spqr-quant 0.2.0), on LLaMA-2 shapes.

For every [out x in] shape of LLaMA-2 7B and 70B and every batch size: the median time of each of our kernels
(gemv, gemv_xc, gemv_seg, dot, dequantize+cuBLAS; `--kernels` picks) and of the one the selector picks ("auto"),
of F.linear with an fp16 weight, and at batch 1 of spqr-quant's fused kernel (3-bit 16x16 only; it has no batched
kernel). Effective bandwidth = bytes of the packed layer (every stored tensor) / time, against the device-to-device
copy bandwidth measured in the same run (bytes read + written / time).

Timing: each measurement is a CUDA graph of K back-to-back calls on K different copies of the weight (K large enough
that the copies exceed twice the L2 cache, so every call reads its weight from HBM, as in a real model), replayed
`--repeats` times, each replay timed with CUDA events; the reported time is median(replay) / K. Random layers with 1%
outliers (`spqrkit.format.synthetic`). Every kernel's output is checked against the reference dequantization first.

    python benchmarks/kernel_speed.py --json out.json                # the full table (GPU)
    python benchmarks/kernel_speed.py --layouts                          # + every wbits x beta1 x beta2 at 4096x4096
    python benchmarks/kernel_speed.py --tune                             # + tile / tuning-flag sweeps (--tune-shapes)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from spqrkit.config import QuantConfig, get_preset
from spqrkit.format.synthetic import random_quantized_weight
from spqrkit.kernels import dot, dot_pairs, gemv, gemv_pairs, reach, select
from spqrkit.modules.linear import MATMULS, SpQRLinear, choose_kernel

SHAPES = {  # [out, in]
    "7B q/k/v/o": (4096, 4096), "7B gate/up": (11008, 4096), "7B down": (4096, 11008),
    "70B q/o": (8192, 8192), "70B gate/up": (28672, 8192), "70B down": (8192, 28672),
    # the fused projections (spqrkit.models.fusion): q+k+v and gate+up as one layer; 70B's k and v are 1024 rows (GQA)
    "7B qkv": (12288, 4096), "7B gate+up": (22016, 4096), "70B qkv": (10240, 8192), "70B gate+up": (57344, 8192),
}
ISSUE_SHAPES = ("7B q/k/v/o", "7B gate/up", "7B down", "70B q/o", "70B gate/up", "70B down")  # the default run


def copy_bandwidth(repeats: int) -> float:
    """Device-to-device copy of 1 GiB: (read + written bytes) / median time, bytes/s."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 2):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * (1 << 30) / statistics.median(times[2:])


def l2_bytes() -> int:
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)


def time_graph(fns, repeats: int) -> float:
    """Median seconds per call of the callables `fns` (one per weight copy), captured in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:  # warm-up: compile, allocate
            f()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del graph
    return statistics.median(times) / len(fns)


def copies_for(nbytes: int) -> int:
    return max(2, -(-2 * l2_bytes() // max(nbytes, 1)) + 1)


def layer_bytes(layer: SpQRLinear) -> int:
    return sum(t.numel() * t.element_size() for t in layer.packed_tensors().values())


OUTLIER_SHARE = 0.01
ACT_DTYPE = torch.float16  # activations, and the dense baseline's weight (--dtype)
DENSE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}  # (the table's "fp16 us" column is in ACT_DTYPE)


def make_layers(out: int, n_in: int, config: QuantConfig, seed: int) -> list[SpQRLinear]:
    qw = random_quantized_weight(out, n_in, config, outlier_share=OUTLIER_SHARE, seed=seed, device="cuda")
    base = SpQRLinear.from_quantized(qw)
    del qw
    layers = [base]
    for _ in range(copies_for(layer_bytes(base)) - 1):
        c = SpQRLinear(n_in, out, config, base.n_outliers, device="meta")
        c.load_packed({k: v.clone() for k, v in base.packed_tensors().items()})
        layers.append(c)
    return layers


def check(layer: SpQRLinear, x: torch.Tensor, kernel: str) -> float:
    """Max |kernel - reference| / max |reference| on this input."""
    ref = MATMULS["reference"](layer, x).float()
    y = MATMULS[kernel](layer, x).float()
    return ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


KERNELS = ("gemv", "gemv_xc", "gemv_seg", "gemv_pairs", "dot", "dot_pairs", "dequantize")


def bench_shape(name, out, n_in, config, batches, repeats, spqr_quant, seed=0, kernels=KERNELS):
    rows = []
    layers = make_layers(out, n_in, config, seed)
    nbytes = layer_bytes(layers[0])
    dense = torch.randn(out, n_in, device="cuda", dtype=ACT_DTYPE) * 0.02
    dense_copies = [dense] + [dense.clone() for _ in range(copies_for(dense.numel() * 2) - 1)]
    theirs = None
    if spqr_quant is not None and config == get_preset("spqr-w3"):
        from spqr_quant_adapter import incompatibility, spqr_quant_matvec, to_spqr_quant

        why = incompatibility((out, n_in), config, layers[0].n_outliers)
        if why is None:
            tensors = {k: v.cpu() for k, v in layers[0].packed_tensors().items()}
            # as many copies as ours, so that their weights are read from HBM too
            theirs = ([to_spqr_quant(tensors, (out, n_in), config) for _ in range(len(layers))], spqr_quant_matvec)
        else:
            theirs = why
    for batch in batches:
        x = torch.randn(batch, n_in, device="cuda", dtype=ACT_DTYPE)
        row = {"shape": name, "out": out, "in": n_in, "batch": batch, "wbits": config.wbits, "beta1": config.beta1,
               "beta2": config.beta2, "layer_bytes": nbytes, "fp16_bytes": out * n_in * 2,
               "outliers": layers[0].n_outliers, "copies": len(layers)}
        t16 = time_graph([lambda w=w, x=x: F.linear(x, w) for w in dense_copies], repeats)
        row["fp16_s"] = t16
        for kernel in kernels:
            if reach.unsupported_reason(n_in, config.wbits, config.beta1 or 0, kernel):
                continue
            if kernel == "dot_pairs" and not dot_pairs.supports(ACT_DTYPE, config.wbits, config.beta1 or 0):
                continue
            if kernel.startswith("gemv") and batch > (reach.rows_per_launch(kernel) if kernel == "gemv_pairs"
                                                      else reach.GEMV_SEG_MAX_BATCH):
                continue  # the gemv kernels take 4 (gemv_seg 8, gemv_pairs 1) rows of x per launch
            row[f"{kernel}_err"] = check(layers[0], x, kernel)
            row[f"{kernel}_s"] = time_graph([lambda lay=lay, k=kernel, x=x: MATMULS[k](lay, x)
                                               for lay in layers], repeats)
        if "gemv_seg" in kernels and batch <= reach.GEMV_MAX_BATCH:
            ref = MATMULS["reference"](layers[0], x).float()
            for vname, params in SEG_VARIANTS.items():
                y = launch(gemv.gemv, x, layers[0], params)
                row[f"{vname}_err"] = ((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
                row[f"{vname}_s"] = time_graph([lambda lay=lay, x=x, prm=params: launch(
                    gemv.gemv, x, lay, prm)
                    for lay in layers], repeats)
        row["auto_kernel"] = choose_kernel(layers[0], x)
        row["auto_s"] = row.get(f"{row['auto_kernel']}_s")
        if batch == 1 and isinstance(theirs, tuple):
            objs, fn = theirs
            ref = MATMULS["reference"](layers[0], x).float()[0]
            y = fn(objs[0], x).float()
            row["spqr_quant_err"] = ((y - ref).abs().max() / ref.abs().max()).item()
            row["spqr_quant_s"] = time_graph([lambda o=o, fn=fn, x=x: fn(o, x) for o in objs], repeats)
        elif batch == 1 and isinstance(theirs, str):
            row["spqr_quant_skipped"] = theirs
        rows.append(row)
    del layers, dense, dense_copies, theirs
    torch.cuda.empty_cache()
    return rows


# gemv_seg with other options than its defaults, timed on every shape (column name -> options)
SEG_VARIANTS = {"seg_nopdl": {"segments": True, "pdl": False}, "seg_nosplit": {"segments": True, "split": 1},
                "seg_cols": {"segments": True, "rows_in_thread": False},  # ([rows, chunks] tile: stop 8's)
                "seg_decode": {"segments": True, "bases": None}}  # outliers decoded again, no outlier_bases


def launch(fn, x, layer, params):
    """Launcher `fn` on the layer's packed tensors with options `params` and the layer's outlier bases (as the
    selector's path passes them), unless `params` sets `bases` itself (None: the outliers decoded again)."""
    opts = dict(params)
    bases = opts.pop("bases") if "bases" in opts else layer.outlier_bases()
    return fn(x, layer.packed_layer(bases), None, **opts)


# (block_rows, chunks, warps) tried for gemv_xc (the best two of stop 8's sweep) and gemv_seg (rows in thread: a
# thread holds one chunk of every row of the block)
XC_TILES = ((4, 32, 2), (4, 64, 4))
SEG_TILES = ((4, 32, 2), (8, 32, 2), (2, 32, 2), (8, 32, 4), (4, 16, 1), (8, 16, 1), (4, 64, 2), (16, 32, 4),
             (4, 64, 4), (8, 64, 4), (4, 128, 4))
# (block_n, chunks, split, num_warps) tried for dot (split None: `dot_stages`' default), one software-pipelining
# stage: from 2 stages Triton loads the packed words by cp.async a tile ahead, and the whole call took 2.1-3.7x as
# long (H200, 2026-11-26, 8 rows of x, 4096^2 / 11008x4096 / 28672x8192: 38.4 / 96.0 / 426.4 us with 2 stages at
# 64 x 8, against 18.0 / 44.0 / 166.8 with one, tune_dot_b8_stages_h200.json); 8 warps were slower too
DOT_TILES = ((64, 8, None, 4), (64, 16, None, 4), (64, 8, 8, 4), (128, 8, None, 8))
# flags tried on the default tile (programs_per_sm: the split K is chosen for about that many programs per SM).
# (Before the top-of-mantissa decode, at 131 registers, a cap of 128 or 96 registers per thread (launch option
# maxnreg; four or five programs per SM) was no faster or slower: 18.1 / 23.0 us against 18.0 at 4096^2, 8 rows,
# tune_dot_b8_b16_h200.json.)
DOT_FLAGS = ({"programs_per_sm": 3}, {"programs_per_sm": 4}, {"programs_per_sm": 6}, {"programs_per_sm": 8},
             {"outlier_rows": 1, "outliers_per_step": 64}, {"outlier_rows": 2, "outliers_per_step": 32},
             {"outlier_rows": 4, "outliers_per_step": 16}, {"outlier_rows": 8, "outliers_per_step": 16},
             {"outlier_rows": 8, "outliers_per_step": 32}, {"outlier_rows": 4, "outliers_per_step": 64},
             {"chunks": 16}, {"chunks": 16, "outlier_rows": 1, "outliers_per_step": 64}, {"pdl": False},
             {"chunks": 4}, {"chunks": 4, "programs_per_sm": 5})


# options tried for dot_pairs (its default: `dot_stages`' tile with DOT_PAIRS_CHUNKS chunks)
DOT_PAIRS_FLAGS = ({}, {"chunks": 4}, {"chunks": 16}, {"programs_per_sm": 6}, {"max_registers": 128},
                   {"chunks": 4, "programs_per_sm": 8}, {"max_registers": 128, "programs_per_sm": 8},
                   {"chunks": 4, "max_registers": 96, "programs_per_sm": 8}, {"block_n": 32, "num_warps": 2},
                   {"chunks": 16, "max_registers": 128}, {"outlier_rows": 8, "outliers_per_step": 16},
                   {"outlier_rows": 2, "outliers_per_step": 32}, {"outlier_rows": 4, "outliers_per_step": 16},
                   {"outlier_rows": 1, "outliers_per_step": 64}, {"outlier_rows": 8, "outliers_per_step": 32})


# (block_rows, chunks, warps) tried for gemv_pairs (a thread holds one chunk of every row of the block, like gemv_seg)
PAIRS_TILES = ((4, 32, 1), (2, 64, 2), (4, 64, 2), (8, 32, 2), (4, 128, 4), (4, 64, 1), (8, 32, 1), (2, 32, 1),
               (2, 128, 4), (8, 64, 2), (2, 64, 1))


def tune(out, n_in, config, batch, repeats, kernels=("gemv", "gemv_xc", "dot")):
    """Block-size sweep of the fused kernels on one shape: [(kernel, params, seconds)] sorted by time."""
    layers = make_layers(out, n_in, config, 0)
    x = torch.randn(batch, n_in, device="cuda", dtype=ACT_DTYPE)
    results = []
    def run(fn, params, lay):
        return launch(fn, x, lay, params)

    space = []
    if batch <= 4 and "gemv" in kernels:
        for br, nch, nw in itertools.product((2, 4, 8), (16, 32), (2, 4)):
            space.append((gemv.gemv, "gemv", {"block_rows": br, "chunks": nch, "num_warps": nw}))
    if batch <= 4 and "gemv_xc" in kernels:
        for br, nch, nw in XC_TILES:
            space.append((gemv.gemv, "gemv_xc", {"block_rows": br, "chunks": nch, "num_warps": nw,
                                                        "x_chunked": True}))
    if batch <= reach.GEMV_SEG_MAX_BATCH and "gemv_seg" in kernels:
        for br, nch, nw in SEG_TILES:  # rows in thread (the default)
            space.append((gemv.gemv, "gemv_seg", {"block_rows": br, "chunks": nch, "num_warps": nw,
                                                         "segments": True}))
        for flags in ({"prefetch": True}, {"pdl": False}, {"prefetch": True, "pdl": False}, {"split": 2},
                      {"block_rows": 4, "chunks": 64, "prefetch": True}):
            space.append((gemv.gemv, "gemv_seg", {"segments": True, **flags}))
        space.append((gemv.gemv, "gemv_seg", {"segments": True, "rows_in_thread": False}))  # stop 8's
    if batch <= reach.PAIRS_MAX_ROWS and "gemv_pairs" in kernels:
        for br, nch, nw in PAIRS_TILES:
            space.append((gemv_pairs.gemv_pairs, "gemv_pairs", {"block_rows": br, "chunks": nch, "num_warps": nw}))
        for flags in ({"pdl": False}, {"split": 2}, {"max_registers": None}, {"max_registers": 80},
                      {"max_registers": 56}, {"max_registers": 80, "block_rows": 4, "chunks": 64, "num_warps": 2},
                      {"max_registers": 96}, {"max_registers": None, "block_rows": 4, "chunks": 32, "num_warps": 1}):
            space.append((gemv_pairs.gemv_pairs, "gemv_pairs", flags))
    if "dot" in kernels:
        for bn, nch, split, warps in DOT_TILES:
            space.append((dot.dot, "dot", {"block_n": bn, "chunks": nch, "split": split, "num_warps": warps}))
        for flags in DOT_FLAGS:
            space.append((dot.dot, "dot", flags))
    if "dot_pairs" in kernels and dot_pairs.supports(ACT_DTYPE, config.wbits, config.beta1 or 0):
        for flags in DOT_PAIRS_FLAGS:
            space.append((dot.dot_pairs, "dot_pairs", flags))
    ref = MATMULS["reference"](layers[0], x).float()
    for fn, name, params in space:
        try:
            y = run(fn, params, layers[0]).float()
            if not torch.allclose(y, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item()):
                results.append((name, params, float("nan")))
                continue
            t = time_graph([lambda lay=lay, fn=fn, prm=params: run(fn, prm, lay) for lay in layers], repeats)
        except Exception as e:
            results.append((name, params, f"{type(e).__name__}"))
            continue
        results.append((name, params, t))
    del layers
    torch.cuda.empty_cache()
    return sorted(results, key=lambda r: r[2] if isinstance(r[2], float) and r[2] == r[2] else 1e9)


def fmt_us(s):
    return f"{s * 1e6:8.1f}" if isinstance(s, float) else "       -"


def print_table(rows, copy_bw):
    print(f"\ncopy bandwidth (read + write): {copy_bw / 1e9:.0f} GB/s")
    head = (f"{'shape':<12} {'out x in':>12} {'b':>3} {'fp16 us':>8} {'gemv':>8} {'gemv_xc':>8} {'gemv_seg':>8} "
            f"{'pairs':>8} "
            f"{'dot':>8} {'dotpairs':>8} "
            f"{'deq+mm':>8} "
            f"{'auto':>8} {'pick':>10} {'x ' + DENSE_NAMES[ACT_DTYPE]:>7} {'BW %copy':>8} {'spqr-q':>8} "
            f"{'vs spqr-q':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        auto = r.get("auto_s")
        speed = r["fp16_s"] / auto if auto else float("nan")
        bw = r["layer_bytes"] / auto / copy_bw * 100 if auto else float("nan")
        theirs = r.get("spqr_quant_s")
        vs = f"{theirs / auto:9.2f}" if theirs and auto else "        -"
        print(f"{r['shape']:<12} {r['out']:>5}x{r['in']:<6} {r['batch']:>3} {fmt_us(r['fp16_s'])} "
              f"{fmt_us(r.get('gemv_s'))} {fmt_us(r.get('gemv_xc_s'))} {fmt_us(r.get('gemv_seg_s'))} "
              f"{fmt_us(r.get('gemv_pairs_s'))} "
              f"{fmt_us(r.get('dot_s'))} {fmt_us(r.get('dot_pairs_s'))} "
              f"{fmt_us(r.get('dequantize_s'))} {fmt_us(auto)} "
              f"{r['auto_kernel']:>10} {speed:7.2f} {bw:8.1f} {fmt_us(theirs)} {vs}")


def print_variants(rows):
    vrows = [r for r in rows if any(f"{v}_s" in r for v in SEG_VARIANTS)]
    if not vrows:
        return
    print("\ngemv_seg options (us): default vs " + ", ".join(SEG_VARIANTS))
    for r in vrows:
        print(f"{r['shape']:<12} {r['out']:>5}x{r['in']:<6} {r['batch']:>3} {fmt_us(r.get('gemv_seg_s'))} "
              + " ".join(fmt_us(r.get(f"{v}_s")) for v in SEG_VARIANTS)
              + "   max rel err " + " ".join(f"{r.get(f'{v}_err', float('nan')):.1e}" for v in SEG_VARIANTS))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(ISSUE_SHAPES),
                   help="comma-separated names of SHAPES (default: the six LLaMA-2 linear shapes)")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--preset", default="spqr-w3")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--layouts", action="store_true", help="also every wbits 2..4 x beta1 x beta2 at 4096x4096")
    p.add_argument("--tune", action="store_true", help="also sweep the fused kernels' block sizes (--tune-shapes)")
    p.add_argument("--no-spqr-quant", action="store_true")
    p.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated kernels to time (and tune)")
    p.add_argument("--tune-batches", default="1,16")
    p.add_argument("--tune-shapes", default="7B q/k/v/o", help="comma-separated names of SHAPES to tune on")
    p.add_argument("--outlier-share", type=float, default=0.01, help="average share of outliers (default 1%%)")
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16",
                   help="activations and the dense baseline (cuBLAS) in this dtype")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernel_speed.py needs a CUDA device", file=sys.stderr)
        return 2
    os.environ.pop(select.MATMUL_ENV, None)
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True  # torch's default for fp16
    global OUTLIER_SHARE, ACT_DTYPE
    OUTLIER_SHARE = args.outlier_share
    ACT_DTYPE = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    kernels = tuple(args.kernels.split(","))
    config = get_preset(args.preset)
    copy_bw = copy_bandwidth(args.repeats)
    spqr_quant = None
    spqr_quant_note = "disabled"
    if not args.no_spqr_quant:
        sys.path.insert(0, str(Path(__file__).parent))
        from spqr_quant_adapter import spqr_quant_available

        spqr_quant_note = spqr_quant_available()
        spqr_quant = True if spqr_quant_note is None else None
        print(f"spqr-quant: {spqr_quant_note or 'available'}", flush=True)
    rows = []
    for name in args.shapes.split(","):
        out, n_in = SHAPES[name]
        rows += bench_shape(name, out, n_in, config, batches, args.repeats, spqr_quant, kernels=kernels)
        print(f"  {name} done", flush=True)
    print_table(rows, copy_bw)
    print_variants(rows)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "preset": args.preset, "outlier_share": args.outlier_share, "dtype": args.dtype,
              "config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
              "copy_bandwidth_Bps": copy_bw, "spqr_quant": spqr_quant_note or "available", "rows": rows,
              "selector": {"gemv_seg_max_rows": select.GEMV_SEG_MAX_ROWS, "dot_max_rows": select.DOT_MAX_ROWS}}

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1, default=str))

    save()  # (again after each part below: a run cut short keeps what it measured)
    if args.layouts:
        lrows = []
        for wb, b1, b2 in itertools.product((2, 3, 4), (8, 16, 32, 64), (16, 32, 64)):
            cfg = QuantConfig(wbits=wb, beta1=b1, beta2=b2, scale_bits=3, zero_bits=3)
            lrows += bench_shape(f"w{wb} {b1}x{b2}", 4096, 4096, cfg, [1, 16], max(5, args.repeats // 2), None,
                                 kernels=("gemv", "gemv_xc", "gemv_seg", "dot"))
        print("\nevery layout at 4096x4096 (3-bit statistics):")
        print_table(lrows, copy_bw)
        result["layouts"] = lrows
        save()
    if args.tune:
        result["tune"] = {}
        for (out, n_in), batch in itertools.product([SHAPES[n] for n in args.tune_shapes.split(",")],
                                                    [int(b) for b in args.tune_batches.split(",")]):
            res = tune(out, n_in, config, batch, max(5, args.repeats // 2), kernels)
            key = f"{out}x{n_in} b{batch}"
            result["tune"][key] = [(n, p, t) for n, p, t in res]
            print(f"\ntune {key}:")
            for n, prm, t in res:
                print(f"  {n:<5} {prm} {fmt_us(t)} us")
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
