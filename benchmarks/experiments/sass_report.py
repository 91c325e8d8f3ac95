"""Offline report on the compiled decode / dequantize kernels: registers, spills and the instruction mix of every loop
of the sm_90a machine code, without a GPU.

Each kernel is compiled by Triton for an H100 target (`GPUTarget("cuda", 90, 32)`); Triton's bundled `cuobjdump` reads
the cubin's resource usage (registers, local memory = spills) and disassembles it; every backward branch marks a loop,
whose instructions are counted by opcode. The main loop of a decode kernel is its largest one: its size per weight
and its barriers (BAR) are what the H100 measurements tracked (issue 4's notes: the kernels are issue- and
latency-bound, and a barrier per tile synchronises the warps of a program).

    python benchmarks/experiments/sass_report.py [--json out.json]

Prints a table; the JSON has every kernel's counts. Run it with TRITON_INTERPRET unset (it is unset here).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from spqrkit.kernels import dequantize as dq
from spqrkit.kernels import dot as dk
from spqrkit.kernels import dot_pairs as dp
from spqrkit.kernels import gemv as gk
from spqrkit.kernels import gemv_pairs as gp
from spqrkit.kernels import plan as kplan
from spqrkit.kernels.pair_schedule import pair_plan

TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
POINTERS = {
    "x_ptr": "*fp16", "y_ptr": "*fp16", "bias_ptr": "*fp16", "codes_ptr": "*i32", "s_ptr": "*i32", "sst_ptr": "*fp16",
    "z_ptr": "*i32", "zst_ptr": "*fp16", "rowptr_ptr": "*i32", "vals_ptr": "*fp16", "cols_ptr": "*i16",
    "perm_ptr": "*i16", "w_ptr": "*fp16", "xt_ptr": "*fp32", "xs_ptr": "*fp32",
    "ws_ptr": "*fp32", "cnt_ptr": "*i32", "sst32_ptr": "*i32", "zst32_ptr": "*i32", "xk_ptr": "*fp16",
    "bases_ptr": "*fp32", "xp_ptr": "*i32", "sc_ptr": "*fp32", "xo_ptr": "*fp32", "inv_ptr": "*i32",
    "order_ptr": "*i32",
}
SPQR_W3 = {"WB": 3, "GROUP": 16, "SB": 3, "ZB": 3, "HAS_BIAS": False, "KO": 64}


def kernels():
    """(name, jit function, constexprs, num_warps, weights per thread per main-loop iteration) of the selector's
    kernels at their default tiles, spqr-w3 (`gemv.gemv` / `dot_stages` / `dequantize_chunked`,
    `gemv_pairs.gemv_pairs` on large layers). gemv_pairs' main loop includes its conditional outlier step (run on
    the first tiles only, while a row has outliers left)."""
    plan, types = pair_plan(3, 16)
    return [
        ("gemv_pairs 1 row", gp._gemv_pairs_kernel,
         {k: v for k, v in dict(SPQR_W3, BETA2=16, HAS_BASE=True, PLAN=plan, TYPES=types, BR=4, NCH=64, SEG=16,
                                SPLIT=False, SHARED2=True, ASM=True, PDL=True, RT=kplan.chunk_major_tile(), BB=1,
                                LATE=False).items()
          if k != "KO"}, 2, 4 * 64 * 32 // 64),
        ("gemv_seg 1 row", gk._gemv_seg_kernel,
         dict(SPQR_W3, BB=1, BR=4, NCH=32, SEG=16, SPLIT=False, SHARED2=True, RT=kplan.chunk_major_tile(),
              PREFETCH=False, PDL=True, HAS_BASE=True), 2, 4 * 32 * 32 // 64),
        ("gemv_xc 4 rows", gk._gemv_kernel, dict(SPQR_W3, BB=4, BR=8, NCH=16, XC=16), 4, 8 * 16 * 32 // 128),
        ("gemv 1 row", gk._gemv_kernel, dict(SPQR_W3, BB=1, BR=4, NCH=32, XC=0), 2, 4 * 32 * 32 // 64),
        ("dot 16 rows", dk._dot_kernel,
         {k: v for k, v in dict(SPQR_W3, BM=16, BN=64, NCH=8, SEG=16, SHARED2=False, SPLIT=True, IEEE=False,
                                PDL=True).items() if k not in ("HAS_BIAS", "KO")}, 4, 64 * 8 * 32 // 128),
        ("dot_pairs 16 rows", dp.dot_pairs_kernel,
         {k: v for k, v in dict(SPQR_W3, PLAN=plan, TYPES=types, BM=16, BN=64, NCH=kplan.DOT_PAIRS_CHUNKS, SEG=16,
                                SHARED2=False, SPLIT=True, ASM=True, PDL=True).items() if k not in ("HAS_BIAS", "KO")},
         4, 64 * kplan.DOT_PAIRS_CHUNKS * 32 // 128),
        ("dot outliers 8", dk._dot_outliers_kernel,  # per step: 32 outliers of 4 rows, 8 rows of x each
         {k: v for k, v in dict(SPQR_W3, BR=4, KOR=32, BM=8, NCH=8, SEG=16, HAS_BASE=True, ORDERED=False,
                                PDL=True).items()
          if k != "KO"}, 2, 4 * 32 * 8 // 64),
        ("dequantize", dq._dequantize_kernel,
         {k: v for k, v in dict(SPQR_W3, BR=8, NCH=32).items() if k not in ("HAS_BIAS", "KO")}, 4, None),
    ]


# software-pipelining stages as the launchers pass them (gemv_seg and dot's dense kernel 1, gemv_pairs 1;
# gemv 3; the others Triton's default, 3)
NUM_STAGES = {"gemv_seg 1 row": 1, "gemv_pairs 1 row": 1, "dot 16 rows": 1, "dot_pairs 16 rows": 1}
MAX_REGISTERS = {"gemv_pairs 1 row": gp.MAX_REGISTERS}  # (ptxas' cap, as launched)


def analyse(fn, constexprs: dict, num_warps: int, num_stages: int = 3, maxnreg: int | None = None) -> dict:
    sig = {n: ("constexpr" if n in constexprs else POINTERS.get(n, "i32")) for n in fn.arg_names}
    # as launched: Triton specialises pointers and integer arguments divisible by 16 (the strides here are), which
    # decides the width of vector loads
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n not in constexprs and (n.endswith("_ptr") or n.startswith("stride"))}
    options = {"num_warps": num_warps, "num_stages": num_stages, **({"maxnreg": maxnreg} if maxnreg else {})}
    k = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=TARGET, options=options)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        usage = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([str(BIN / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"LOCAL:(\d+)", usage).group(1))  # local memory = register spills here
    ins = []
    for line in sass.splitlines():
        mt = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", line)
        if mt:
            ins.append((int(mt.group(1), 16), mt.group(2).split(".")[0], mt.group(3)))
    loops = []
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            body = collections.Counter(o for a, o, _ in ins if int(target.group(1), 16) <= a <= addr)
            loops.append({"instructions": sum(body.values()), "barriers": body.get("BAR", 0),
                          "mix": dict(body.most_common())})
    loops.sort(key=lambda lp: -lp["instructions"])
    return {"registers": regs, "spill_bytes": spills, "instructions": len(ins), "loops": loops}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not (BIN / "cuobjdump").exists():
        print(f"no cuobjdump under {BIN} (this Triton install has no bundled CUDA tools)", file=sys.stderr)
        return 2
    rows = []
    print(f"{'kernel':<16} {'regs':>5} {'local B':>7} {'instr':>6} {'main loop':>9} {'per weight':>10} {'BAR':>4}")
    for name, fn, constexprs, warps, weights in kernels():
        r = analyse(fn, constexprs, warps, NUM_STAGES.get(name, 3), MAX_REGISTERS.get(name))
        main_loop = r["loops"][0] if r["loops"] else {"instructions": 0, "barriers": 0}
        per_w = main_loop["instructions"] / weights if weights else float("nan")
        rows.append({"kernel": name, "constexprs": constexprs, "num_warps": warps, "weights_per_iteration": weights,
                     **r})
        print(f"{name:<16} {r['registers']:>5} {r['spill_bytes']:>7} {r['instructions']:>6} "
              f"{main_loop['instructions']:>9} {per_w:>10.1f} {main_loop['barriers']:>4}")
    if args.json:
        args.json.write_text(json.dumps({"target": "sm_90a", "triton": triton.__version__, "kernels": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
