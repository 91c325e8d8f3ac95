"""Tokens/s of `spqrkit generate`'s own path (`spqrkit.generate.generate_text`: transformers generate, a batch of
one) on the LLaMA-2-7B-shaped model of benchmarks/generate.py, fp16 against every decoder linear in SpQR, both with
q/k/v and gate/up fused (`spqrkit generate`'s default), eager (dynamic cache) and with `static_cache`
(`spqrkit generate --compile`: transformers compiles the decode step, torch.compile + CUDA graphs).

No tokenizer of that model exists offline: a word-level tokenizer over its 32000 ids ("w0" ... ) stands in; the
prompt is 71 such words. Each configuration generates `--new-tokens` tokens twice: the first call (compilation
included) and the second, whose tokens/s is reported (random weights may emit the end-of-sequence id early: the
token count is reported too).

    python benchmarks/generate_text_speed.py [--layers 32] [--new-tokens 64] [--modes eager,compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
import generate as harness  # benchmarks/generate.py: the model and the SpQR swap

from spqrkit.generate import generate_text
from spqrkit.models.fusion import fuse_projections


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(vocab - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--preset", default="spqr-w3")
    p.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile (static cache)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    if not modes or any(m not in ("eager", "compile") for m in modes):
        p.error(f"--modes takes eager and / or compile, got {args.modes!r}")
    if not torch.cuda.is_available():
        print("benchmarks/generate_text_speed.py needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")

    class Dims:
        tiny, layers = False, args.layers

    config = harness.llama_config(Dims)
    config.eos_token_id = 1
    tokenizer = word_tokenizer(config.vocab_size)
    model = harness.build_model(config, torch.float16, device)
    prompt = " ".join(f"w{i}" for i in range(5, 500, 7))
    rows = []
    for name in ("fp16", args.preset):
        if name != "fp16":
            fused = [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1].startswith("fused_")]
            harness.swap_to_spqr(model, args.preset, 0.01, device)
            for n in fused:  # the dense fused layers: the swap replaced their slices
                holder, attr = n.rsplit(".", 1)
                delattr(model.get_submodule(holder), attr)
            torch.cuda.empty_cache()
        fuse_projections(model)
        for static in [m == "compile" for m in modes]:
            torch._dynamo.reset()
            t = time.perf_counter()
            generate_text(model, tokenizer, prompt, max_new_tokens=args.new_tokens, chat=False, static_cache=static)
            first = time.perf_counter() - t
            r = generate_text(model, tokenizer, prompt, max_new_tokens=args.new_tokens, chat=False,
                              static_cache=static)
            rows.append({"config": name, "mode": "--compile" if static else "eager", "tokens_per_s": r.tokens_per_s,
                         "new_tokens": r.new_tokens, "first_call_s": first})
    print(f"\nspqrkit generate's path (generate_text), LLaMA-shaped {args.layers} layers, fused, "
          f"{torch.cuda.get_device_name(0)}")
    print("| config | mode | tokens/s | tokens | first call s (compile included) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['mode']} | {r['tokens_per_s']:.1f} | {r['new_tokens']} | "
              f"{r['first_call_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "generate_text_speed", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "layers": args.layers,
            "new_tokens": args.new_tokens, "prompt_words": len(prompt.split()), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
