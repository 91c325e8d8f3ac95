"""Same-process A/B of the eager host path's change of 2026-11-27 (GPU): the kept kernel picks of `select_matmul`,
the buffers' key without the device and the outlier bases' early return, against the code before it (restored here
by patching: `choose_kernel` per call, `tensors_key` with each tensor's device, `outlier_bases` gathering the
packed tensors at every call).

The host's speed can move by tens of per cent between processes on the GPU machines, so the two are alternated in
one process: per-call host time of an eager 4096x4096 SpQRLinear at 1 and 8 rows of x (with fp16 nn.Linear), then
`spqrkit generate`'s eager path (`generate_text`, the 7B-shaped fused model of benchmarks/generate.py) in alternating
rounds. Prints the medians and writes every round to JSON.

    python benchmarks/experiments/host_path_ab.py [--rounds 8] [--generate-rounds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from host_overhead import per_call_us, square_layers

import spqrkit.modules.linear as L
from spqrkit.kernels import ops

NEW = (L.SpQRLinear._matmul, L.tensors_key, L.SpQRLinear.outlier_bases)


def old_matmul(self, x):
    return L.MATMULS[L.choose_kernel(self, x)](self, x)


def old_key(tensors):
    return tuple((id(t), t.data_ptr(), 0 if t.is_inference() else t._version, t.device)
                 for t in tensors if t is not None)


def old_bases(self, key=None):
    tensors = self.packed_layer().stored_tensors()
    if torch.compiler.is_compiling():
        if self._bases is not None:
            return self._bases[1]
        return ops.outlier_bases(self.packed_layer())
    key = L.tensors_key(tensors) if key is None else key
    if self._bases is None or self._bases[0] != key:
        self._bases = (key, ops.outlier_bases(self.packed_layer()))
    return self._bases[1]


def use(old: bool) -> None:
    L.SpQRLinear._matmul, L.tensors_key, L.SpQRLinear.outlier_bases = (old_matmul, old_key, old_bases) if old else NEW


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds of 500 calls per row count")
    parser.add_argument("--generate-rounds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/experiments/host_path_ab.py needs a CUDA device")
    out = {"benchmark": "host_path_ab", "device": torch.cuda.get_device_name(0), "layer": {}, "generate": {}}
    layer, dense = square_layers(4096)
    print("| rows | before us | after us | fp16 nn.Linear us | rounds after < before |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in (1, 8):
            x = torch.randn(rows, layer.in_features, device="cuda", dtype=torch.float16)
            res = {"old": [], "new": [], "fp16": []}
            for _ in range(args.rounds):
                for v in ("old", "new"):
                    use(v == "old")
                    res[v].append(per_call_us(lambda x=x: layer(x), 500, 1))
                res["fp16"].append(per_call_us(lambda x=x: dense(x), 500, 1))
            use(False)
            out["layer"][rows] = res
            wins = sum(b < a for a, b in zip(res["old"], res["new"]))
            print(f"| {rows} | {statistics.median(res['old']):.1f} | {statistics.median(res['new']):.1f} | "
                  f"{statistics.median(res['fp16']):.1f} | {wins} of {args.rounds} |", flush=True)
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
