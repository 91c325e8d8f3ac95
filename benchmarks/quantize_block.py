"""Quantization speed of one LLaMA-7B-shaped decoder block (hidden 4096, MLP 11008, 32 heads).

Runs the real pipeline (`spqrkit.models.pipeline.quantize_model`) on a one-block Llama model with random weights and
random calibration tokens (128 x 2048 by default), and reports the time split: capturing block inputs, collecting
Hessians, solving, recomputing outputs. Then times the solver alone on the block's four input-sharing sets
(q/k/v, o, gate/up, down) with the eager reference chunk sweep and with the fused Triton chunk kernel.

    python benchmarks/quantize_block.py --json out.json            # on a GPU machine
    python benchmarks/quantize_block.py --tokens 4 --seqlen 256 --hidden 256 --mlp 688 --heads 4   # a CPU smoke run

The authors' engine on an H100 (SPQR.md): 76.7 s per block = 3.2 s Hessians + 73.2 s solve + 0.4 s recompute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spqrkit.config import get_preset
from spqrkit.models.pipeline import quantize_model
from spqrkit.quant.hessian import HessianAccumulator
from spqrkit.quant.solver import quantize_matrices

AUTHORS_H100 = {"hessian": 3.2, "solve": 73.2, "recompute": 0.4, "total": 76.7}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_block_model(hidden: int, mlp: int, heads: int, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_attention_heads=heads,
                         num_key_value_heads=heads, num_hidden_layers=1, vocab_size=32000,
                         max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype=dtype, device=device)
    model.eval()
    return model


def time_solver(model, calib_ids, preset: str, device: str, repeats: int) -> dict:
    """The solve alone for each input-sharing set, with each chunk sweeper: median seconds over `repeats`."""
    block = model.model.layers[0]
    sets = {
        "qkv": [block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj],
        "o": [block.self_attn.o_proj],
        "gate_up": [block.mlp.gate_proj, block.mlp.up_proj],
        "down": [block.mlp.down_proj],
    }
    accs = {k: HessianAccumulator(v[0].in_features) for k, v in sets.items()}
    hooks = [v[0].register_forward_pre_hook(lambda m, a, acc=accs[k]: acc.add(a[0])) for k, v in sets.items()]
    with torch.no_grad():
        for ids in calib_ids.split(4):
            model(ids.to(device), use_cache=False)
    for h in hooks:
        h.remove()
    hessians = {k: acc.finalize() for k, acc in accs.items()}
    config = get_preset(preset)
    result = {}
    for kernel in ("reference", "triton") if device.startswith("cuda") else ("reference",):
        per_set = {}
        for name, linears in sets.items():
            weights = [lin.weight.detach().float() for lin in linears]
            times = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                quantize_matrices(weights, hessians[name], config, kernel=kernel)
                _sync(device)
                times.append(time.perf_counter() - t0)
            per_set[name] = statistics.median(times)
        per_set["total"] = sum(per_set.values())
        result[kernel] = per_set
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="spqr-w3")
    p.add_argument("--tokens", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--mlp", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="repeats of the solver-only timing (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    device = args.device
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = build_block_model(args.hidden, args.mlp, args.heads, dtype, device)
    g = torch.Generator().manual_seed(0)
    calib_ids = torch.randint(0, model.config.vocab_size, (args.tokens, args.seqlen), generator=g)

    config = get_preset(args.preset)
    # A warm-up run on a little data compiles the Triton kernels and initialises cuBLAS/cuSOLVER.
    quantize_model(build_block_model(args.hidden, args.mlp, args.heads, dtype, device), calib_ids[:8], config,
                   device=device, batch_size=1, progress=False)
    _sync(device)
    report = quantize_model(model, calib_ids, config, device=device, batch_size=args.batch_size, progress=False)
    _sync(device)
    split = {
        "capture": report.capture_seconds, "hessian": report.hessian_seconds, "solve": report.solve_seconds,
        "recompute": report.recompute_seconds, "total": report.total_seconds,
    }
    solver = time_solver(build_block_model(args.hidden, args.mlp, args.heads, dtype, device), calib_ids[:8],
                         args.preset, device, args.repeats)

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    result = {
        "benchmark": "quantize_block",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": gpu,
        "torch": torch.__version__,
        "shape": {"hidden": args.hidden, "mlp": args.mlp, "heads": args.heads},
        "calibration": {"windows": args.tokens, "seqlen": args.seqlen},
        "preset": args.preset,
        "pipeline_seconds": split,
        "block_output_error": report.blocks[0].output_error,
        "outlier_share": report.outlier_share,
        "avg_bits_paper": report.avg_paper_bits,
        "solver_only_seconds": solver,
        "authors_h100_seconds": AUTHORS_H100,
    }
    dominant = max(("capture", "hessian", "solve", "recompute"), key=lambda k: split[k])
    print(f"\nSpQR {args.preset} on one {args.hidden}/{args.mlp} block, {args.tokens} x {args.seqlen} calibration "
          f"tokens, {gpu}")
    print("| stage | spqrkit s | share | authors (H100) s |")
    print("|---|---|---|---|")
    for k in ("capture", "hessian", "solve", "recompute", "total"):
        share = f"{100 * split[k] / split['total']:.0f}%"
        print(f"| {k} | {split[k]:.2f} | {share} | {AUTHORS_H100.get(k, '-')} |")
    print(f"dominant stage: {dominant}; block output error {report.blocks[0].output_error:.4f}, "
          f"outliers {100 * report.outlier_share:.2f}%, {report.avg_paper_bits:.3f} bits (Eq. 4)")
    print(f"\nsolver only (median of {args.repeats}), seconds per input-sharing set:")
    kernels = list(solver)
    print("| set | " + " | ".join(kernels) + " |")
    print("|---|" + "---|" * len(kernels))
    for name in solver[kernels[0]]:
        print(f"| {name} | " + " | ".join(f"{solver[k][name]:.3f}" for k in kernels) + " |")
    if "triton" in solver:
        print(f"fused chunk kernel speed-up over the eager reference: "
              f"{solver['reference']['total'] / solver['triton']['total']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
