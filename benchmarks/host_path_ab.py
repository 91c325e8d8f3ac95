"""Same-process A/B of the eager host path's change of 2026-11-27 (GPU): SpQRLinear's kept kernel pick, the buffers'
key without the device and the outlier bases' early return, against the code before it (restored here by patching:
`select_matmul` per call, `tensors_key` with each tensor's device, `outlier_bases` without the early return).

The host's speed can move by tens of per cent between processes on the GPU machines, so the two are alternated in
one process: per-call host time of an eager 4096x4096 SpQRLinear at 1 and 8 rows of x (with fp16 nn.Linear), then
`spqrkit generate`'s eager path (`generate_text`, the 7B-shaped fused model of benchmarks/generate.py) in alternating
rounds. Prints the medians and writes every round to JSON.

    python benchmarks/host_path_ab.py [--rounds 8] [--generate-rounds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import spqrkit.modules.linear as L
from spqrkit.config import get_preset
from spqrkit.format.synthetic import random_quantized_weight
from spqrkit.kernels import ops

NEW = (L.SpQRLinear._matmul, L.tensors_key, L.SpQRLinear.outlier_bases)


def old_matmul(self, x):
    return L.select_matmul(self, x)(self, x)


def old_key(tensors):
    return tuple((id(t), t.data_ptr(), 0 if t.is_inference() else t._version, t.device)
                 for t in tensors if t is not None)


def old_bases(self, key=None):
    tensors = self.kernel_tensors()[:8]
    if torch.compiler.is_compiling():
        if self._bases is not None:
            return self._bases[1]
        return ops.outlier_bases(*tensors, self.in_features, self.out_features, *self.kernel_layout())
    key = L.tensors_key(tensors) if key is None else key
    if self._bases is None or self._bases[0] != key:
        self._bases = (key, ops.outlier_bases(*tensors, self.in_features, self.out_features, *self.kernel_layout()))
    return self._bases[1]


def use(old: bool) -> None:
    L.SpQRLinear._matmul, L.tensors_key, L.SpQRLinear.outlier_bases = (old_matmul, old_key, old_bases) if old else NEW


def per_call_us(fn, calls: int = 500) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t) / calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--generate-rounds", type=int, default=4)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/host_path_ab.py needs a CUDA device", file=sys.stderr)
        return 2
    out = {"benchmark": "host_path_ab", "device": torch.cuda.get_device_name(0), "layer": {}, "generate": {}}
    n = 4096
    layer = L.SpQRLinear.from_quantized(random_quantized_weight(n, n, get_preset("spqr-w3"), seed=0, device="cuda"))
    dense = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=torch.float16)
    print("| rows | before us | after us | fp16 nn.Linear us | rounds after < before |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in (1, 8):
            x = torch.randn(rows, n, device="cuda", dtype=torch.float16)
            res = {"old": [], "new": [], "fp16": []}
            for _ in range(args.rounds):
                for v in ("old", "new"):
                    use(v == "old")
                    res[v].append(per_call_us(lambda x=x: layer(x)))
                res["fp16"].append(per_call_us(lambda x=x: dense(x)))
            use(False)
            out["layer"][rows] = res
            wins = sum(b < a for a, b in zip(res["old"], res["new"]))
            print(f"| {rows} | {statistics.median(res['old']):.1f} | {statistics.median(res['new']):.1f} | "
                  f"{statistics.median(res['fp16']):.1f} | {wins} of {args.rounds} |", flush=True)
    sys.path.insert(0, str(Path(__file__).parent))
    import generate as harness
    from generate_text_speed import word_tokenizer

    from spqrkit.generate import generate_text
    from spqrkit.models.fusion import fuse_projections

    class Dims:
        tiny, layers = False, 32

    config = harness.llama_config(Dims)
    config.eos_token_id = 1
    tokenizer = word_tokenizer(config.vocab_size)
    model = harness.build_model(config, torch.float16, torch.device("cuda"))
    harness.swap_to_spqr(model, "spqr-w3", 0.01, torch.device("cuda"))
    fuse_projections(model)
    prompt = " ".join(f"w{i}" for i in range(5, 500, 7))
    res = {"old": [], "new": []}
    for _ in range(args.generate_rounds):
        for v in ("old", "new"):
            use(v == "old")
            res[v].append(generate_text(model, tokenizer, prompt, max_new_tokens=32, chat=False,
                                        static_cache=False).tokens_per_s)
    use(False)
    out["generate"] = res
    print(f"generate eager tokens/s by round (the first round captures the graphs): before "
          f"{[round(t, 1) for t in res['old']]}, after {[round(t, 1) for t in res['new']]}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
