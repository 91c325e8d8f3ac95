"""End-to-end greedy decode throughput of a LLaMA-2-7B-shaped model, fp16 versus every decoder linear in SpQR.

The model is a transformers `LlamaForCausalLM` with the LLaMA-2-7B shape (hidden 4096, MLP 11008, 32 layers,
32 heads, vocabulary 32000) and random weights (normal, std 0.02), built directly on the device in fp16. It is
measured as is, then every decoder linear (q, k, v, o, gate, up, down) is replaced IN PLACE by an `SpQRLinear`
holding a random well-formed packed layer with 1% outliers (`spqrkit.format.synthetic`), the fp16 weights are
freed, and the same harness measures it again, so the GPU never holds more than one model (about 13 GiB).

The harness, for each batch size: a prompt of `--prompt-len` random tokens is prefilled (eager, timed separately)
into a STATIC KV cache (transformers `StaticCache`) sized prompt + `--new-tokens`; then `--new-tokens` greedy decode
steps are timed. `--mode graph` (the default on CUDA) captures ONE decode step (forward of one token per sequence,
the cache update inside it, argmax written back into the static input) into a `torch.cuda.CUDAGraph` and replays
it; the static cache's length counter is a device tensor, so the positions, the mask and the cache slot advance
inside the graph and a replay needs no host work at all. `--mode eager` runs the same step un-captured.
Decode tokens/s = batch * new_tokens / decode seconds, the median of `--repeats` runs after a warm-up run;
ms/token is the latency of one decode step (one new token for every sequence of the batch).

Correctness guard: in graph mode the logits of the first decode step from the graph replay are compared with the
eager step from the same cache state (max abs diff printed and stored; with `--compile` also against the compiled step
un-captured, and the compiled step against the eager one gets 5% of the largest logit instead of 2%); a mismatch
beyond that tolerance aborts, so a broken capture cannot report a fast but wrong number. Prefill and last-step
logits must be finite. When the capture itself fails (e.g. a host sync inside the forward), the row falls back to
eager with a warning, and the table and the JSON say so (`--strict-graph` fails instead).

    python benchmarks/generate.py --json out.json                       # on a GPU machine, 7B shape
    python benchmarks/generate.py --layers 4 --batch-sizes 1            # a quick GPU run
    python benchmarks/generate.py --tiny --mode graph                   # a seconds-long check of the graph path
    python benchmarks/generate.py --tiny --device cpu --new-tokens 4    # a CPU smoke run (numbers meaningless)
    python benchmarks/generate.py --compile --json out.json             # decode step compiled by torch.compile
    python benchmarks/generate.py --fuse both --json out.json           # also with q/k/v and gate/up fused
    python benchmarks/generate.py --fuse on --profile 20 --json out.json  # + GPU time per kernel of a decode step
    SPQRKIT_MATMUL=reference python benchmarks/generate.py ...           # force one SpQR matmul (kernels/select.py)

`--compile` runs the decode step's forward through torch.compile (inductor, static shapes; prefill stays eager) before
the capture, for both models: the norms, rotary embedding, cache update and activations become a few fused kernels
(eager, about 2.4 ms of the 6.9 ms fp16 token at batch 1 on an H200, the token less its linears' kernel times in
benchmarks/kernel_speed.py: a floor under any linear's speed-up);
the SpQR kernels are custom ops, opaque to it. The outlier bases are computed once per layer before compiling.

`--fuse on` fuses each block's input-sharing linears (q/k/v, gate/up) into one layer (`spqrkit.models.fusion`) for
BOTH models before measuring, `--fuse both` measures each model unfused and then fused; "speed-up vs fp16" compares
rows of the same fusion, "vs fp16 unfused" compares with the transformers model as it comes. The random SpQR layers
of an input-sharing set share one permutation, as the quantizer's do (their Hessian is one).

The SpQR kernels in use (`select_matmul`'s choice for the decode and the prefill input) are printed per row.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

import spqrkit
from spqrkit.config import get_preset
from spqrkit.format.synthetic import random_packed_layer
from spqrkit.models.fusion import fuse_projections
from spqrkit.modules.fused import LinearSlice
from spqrkit.modules.linear import SpQRLinear, select_matmul

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# the linears that read the same input as the one before them (the quantizer gives such sets one permutation)
SHARES_PREVIOUS_INPUT = ("self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj")
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "vocab_size": 32000}
TINY = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 1000}
WARMUP_STEPS = 8  # decode steps of the untimed warm-up run
GRAPH_WARMUP = 3  # eager runs of the step on a side stream before capture (cuBLAS / Triton init outside capture)
GIB = 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- the model
def llama_config(args) -> LlamaConfig:
    dims = dict(TINY if args.tiny else LLAMA2_7B)
    if args.layers:
        dims["num_hidden_layers"] = args.layers
    config = LlamaConfig(**dims, num_key_value_heads=dims["num_attention_heads"], max_position_embeddings=4096,
                         tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return config


def build_model(config: LlamaConfig, dtype: torch.dtype, device: torch.device, seed: int = 0) -> LlamaForCausalLM:
    """Constructed directly on `device` in `dtype` (no fp32 copy, no host copy), then initialised explicitly:
    matrices ~ N(0, 0.02), norm weights 1 (whatever transformers' own init did or skipped)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.fill_(1.0)
    return model


def decoder_linears(model) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute, module) of every decoder linear, layer by layer in LINEARS order."""
    found = []
    for block in model.model.layers:
        for path in LINEARS:
            parent_name, attr = path.split(".")
            parent = getattr(block, parent_name)
            found.append((parent, attr, getattr(parent, attr)))
    return found


def weight_layers(model, blocks: int | None = None) -> list[torch.nn.Module]:
    """The layers holding the decoder linears' weights (of the first `blocks` blocks): each linear, or for fused
    linears (`LinearSlice`) their fused layer, once."""
    layers, seen = [], set()
    for _, _, mod in decoder_linears(model)[:None if blocks is None else blocks * len(LINEARS)]:
        layer = mod.shared.layer if isinstance(mod, LinearSlice) else mod
        if id(layer) not in seen:
            seen.add(id(layer))
            layers.append(layer)
    return layers


def linear_weight_bytes(model) -> tuple[int, int]:
    """(bytes, weights) of the decoder linears: fp16 weights, or every packed buffer of an SpQRLinear."""
    total = numel = 0
    for mod in weight_layers(model):
        tensors = mod.packed_tensors().values() if isinstance(mod, SpQRLinear) else [mod.weight]
        total += sum(t.numel() * t.element_size() for t in tensors)
        numel += mod.in_features * mod.out_features
    return total, numel


def spqr_kernels(model, rows: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """The matmul implementation(s) `select_matmul` picks for the SpQR linears of block 0 for an input of `rows`
    rows (batch x tokens), e.g. "gemv"; None for a dense model. SPQRKIT_MATMUL forces one (docs of choose_kernel)."""
    names = []
    for mod in weight_layers(model, blocks=1):
        if isinstance(mod, SpQRLinear):
            fn = select_matmul(mod, torch.zeros(rows, 1, mod.in_features, dtype=dtype, device=device))
            name = getattr(fn, "__name__", repr(fn)).removesuffix("_matmul")
            if name not in names:
                names.append(name)
    return "+".join(names) or None


def swap_to_spqr(model, preset: str, outlier_share: float, device: torch.device, seed: int = 1) -> int:
    """Replace every decoder linear by an SpQRLinear holding a random packed layer, freeing the fp16 weight as it
    goes. Returns the number of outliers."""
    qconfig = get_preset(preset)
    n_outliers = 0
    gen = torch.Generator().manual_seed(seed)
    perm = None
    for k, (parent, attr, old) in enumerate(decoder_linears(model)):
        if getattr(old, "bias", None) is not None:
            raise ValueError("the decoder linears of this model have biases; the benchmark assumes none")
        if LINEARS[k % len(LINEARS)] not in SHARES_PREVIOUS_INPUT:  # one permutation per input-sharing set
            perm = torch.randperm(old.in_features, generator=gen).to(device)
        tensors = random_packed_layer(old.out_features, old.in_features, qconfig, outlier_share=outlier_share,
                                      seed=seed + k, device=device, perm=perm)
        layer = SpQRLinear(old.in_features, old.out_features, qconfig, tensors["outlier_values"].shape[0],
                           bias=False, device="meta")
        layer.load_packed(tensors)
        n_outliers += layer.n_outliers
        setattr(parent, attr, layer)
        del old, tensors
        if device.type == "cuda" and k % len(LINEARS) == len(LINEARS) - 1:
            torch.cuda.empty_cache()
    return n_outliers


# ---------------------------------------------------------------------------------------------------- the harness
def _cache_kwarg(model) -> str:
    """transformers renamed the forward's cache argument `past_key_values` -> `cache` (5.2x); use what it takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _set_cache_length(cache, n: int) -> None:
    """Rewind (or set) the static cache to `n` tokens in place: later slots are overwritten, and masked until then."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(n)


def compare_logits(eager: torch.Tensor, same: torch.Tensor, graph: torch.Tensor, compiled: bool) -> dict:
    """The graph guard's numbers (`Decoder.check_graph`) from fp32 logits of one step: eager (uncompiled), the same
    step as captured but un-captured, and the graph replay. "ok": the replay is finite, differs from the un-captured
    step by at most 2% of the largest eager logit, and from the eager step by at most 2% of it (5% when compiled)."""
    scale = eager.abs().max().item()
    out = {"max_abs_diff": (eager - graph).abs().max().item(), "max_abs_logit": scale,
           "tolerance": (5e-2 if compiled else 2e-2) * max(1.0, scale),
           "capture_max_abs_diff": (same - graph).abs().max().item(), "capture_tolerance": 2e-2 * max(1.0, scale),
           "argmax_agree": (eager.argmax(-1) == graph.argmax(-1)).float().mean().item(),
           "finite": bool(torch.isfinite(graph).all())}
    out["ok"] = (out["finite"] and out["max_abs_diff"] <= out["tolerance"]
                 and out["capture_max_abs_diff"] <= out["capture_tolerance"])
    return out


class Decoder:
    """Prefill + greedy decode of one batch with a static cache, eager or with one decode step in a CUDA graph."""

    def __init__(self, model, prompt: torch.Tensor, new_tokens: int, compile_step: bool = False):
        self.model = model
        self.prompt = prompt
        self.prompt_len = prompt.shape[1]
        self.new_tokens = new_tokens
        self.kwarg = _cache_kwarg(model)
        self.cache = StaticCache(config=model.config, max_cache_len=self.prompt_len + new_tokens)
        self.ids = torch.zeros(prompt.shape[0], 1, dtype=torch.long, device=prompt.device)  # the step's input
        self.first = None  # first generated token [B, 1], from the prefill
        self.graph = None
        self.graph_logits = None
        # the decode step's forward (one token per sequence: static shapes), compiled or not; prefill stays eager
        self.compiled = compile_step
        self.decode_forward = torch.compile(self.forward, dynamic=False) if compile_step else self.forward

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of the last position [B, vocab]."""
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.kwarg: self.cache})
        return out.logits[:, -1]

    def prefill(self) -> torch.Tensor:
        self.cache.reset()
        logits = self.forward(self.prompt)
        self.first = logits.argmax(-1, keepdim=True)
        self.ids.copy_(self.first)
        return logits

    def step(self) -> torch.Tensor:
        """One decode step from `self.ids`, the greedy token written back into it (the graph body)."""
        logits = self.decode_forward(self.ids)
        self.ids.copy_(logits.argmax(-1, keepdim=True))
        return logits

    def capture(self) -> None:
        """Capture `step` into a CUDA graph. Needs a prefilled cache (it allocates the cache tensors)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP):
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        _set_cache_length(self.cache, self.prompt_len)
        graph = torch.cuda.CUDAGraph()
        # The outer context puts the current stream back even when a failed capture_end() skips the graph
        # context's own restore (it would leave the capture stream current).
        with torch.cuda.stream(torch.cuda.current_stream()), torch.cuda.graph(graph):
            self.graph_logits = self.step()
        self.graph = graph
        self.ids.copy_(self.first)

    def _first_step(self, forward) -> torch.Tensor:
        """fp32 logits of the first decode step from the prefilled cache state, by `forward`."""
        _set_cache_length(self.cache, self.prompt_len)
        self.ids.copy_(self.first)
        return forward(self.ids).float()

    def check_graph(self) -> dict:
        """First decode step from the same cache state: the graph replay against the eager (uncompiled) step, within
        2% of the largest logit (5% when the step is compiled: inductor's fused norms, rotary and activations round
        differently, and 32 layers of random weights amplify it), and against the same step un-captured (the
        compiled forward when compiled), within 2%: the capture itself."""
        eager = self._first_step(self.forward)
        same = self._first_step(self.decode_forward) if self.compiled else eager
        _set_cache_length(self.cache, self.prompt_len)
        self.ids.copy_(self.first)
        self.graph.replay()
        return compare_logits(eager, same, self.graph_logits.float(), self.compiled)

    def run(self, steps: int) -> tuple[float, float, torch.Tensor]:
        """(prefill seconds, decode seconds, last logits) of one generation of `steps` tokens."""
        device = self.prompt.device
        _sync(device)
        t0 = time.perf_counter()
        prefill_logits = self.prefill()
        _sync(device)
        t1 = time.perf_counter()
        if self.graph is not None:
            for _ in range(steps):
                self.graph.replay()
            logits = self.graph_logits
        else:
            for _ in range(steps):
                logits = self.step()
        _sync(device)
        t2 = time.perf_counter()
        if not bool(torch.isfinite(prefill_logits).all()):
            raise FloatingPointError("prefill logits are not finite")
        return t1 - t0, t2 - t1, logits


def profile_step(dec: Decoder, steps: int) -> dict:
    """Where a decode step's GPU time goes: `steps` steps (graph replays when captured) under torch.profiler; the
    kernels' time per step, summed by kernel name (the 15 largest named, the rest as "other"), against the step's
    wall time. The kernels of a graph replay are recorded one by one (CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    dec.prefill()
    _set_cache_length(dec.cache, dec.prompt_len)
    _sync(dec.prompt.device)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            dec.graph.replay() if dec.graph is not None else dec.step()
        _sync(dec.prompt.device)
        wall = time.perf_counter() - t0
    kernels: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0:
            kernels[e.name] = kernels.get(e.name, 0.0) + e.device_time / steps  # us per step
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1])
    top = dict(ranked[:15])
    top["other"] = sum(t for _, t in ranked[15:])
    # host side (an eager step is bound by it when its wall time exceeds its kernels' time): self CPU time per op
    cpu = sorted(((a.key, a.self_cpu_time_total / steps, a.count / steps) for a in prof.key_averages()
                  if a.self_cpu_time_total > 0), key=lambda t: -t[1])
    return {"steps": steps, "wall_us_per_step": 1e6 * wall / steps, "kernel_us_per_step": sum(kernels.values()),
            "kernels_us_per_step": top,
            "cpu_self_us_per_step": {k: {"us": us, "calls": n} for k, us, n in cpu[:15]}}


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB; the process's peak RSS


def measure(model, name: str, batch: int, prompt: torch.Tensor, args, device: torch.device) -> dict:
    """One row: `name` model at batch size `batch`."""
    gc.collect()  # (a previous row's Decoder: its graph pool and cache)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start_gib = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
    weight_bytes, _ = linear_weight_bytes(model)
    dtype = model.model.embed_tokens.weight.dtype
    row = {"config": name, "batch": batch, "mode": args.mode, "compiled": args.compile, "graph_error": None,
           "graph_check": None,
           "spqr_kernel_decode": spqr_kernels(model, batch, dtype, device),
           "spqr_kernel_prefill": spqr_kernels(model, batch * prompt.shape[1], dtype, device)}
    if args.compile:
        torch._dynamo.reset()  # (a fresh compile per row: another model or batch size)
        for mod in model.modules():
            if isinstance(mod, SpQRLinear):
                mod.outlier_bases()  # kept by the layer: a compiled step would otherwise compute them inside
    with torch.no_grad():
        dec = Decoder(model, prompt[:batch], args.new_tokens, compile_step=args.compile)
        dec.prefill()
        if args.mode == "graph":
            try:
                dec.capture()
            except Exception as e:  # reported, and the row is measured eagerly instead
                if args.strict_graph:
                    raise
                dec.graph = dec.graph_logits = None
                torch.cuda.synchronize(device)
                row["mode"] = "eager"
                # capture_end() often raises its own error on top of the one inside the captured step: keep both
                causes = [e] + ([e.__context__] if e.__context__ is not None else [])
                row["graph_error"] = " <- ".join(f"{type(c).__name__}: {str(c).strip().splitlines()[0][:300]}"
                                                 for c in causes if str(c).strip())
                print(f"WARNING: CUDA graph capture failed for {name} batch {batch}, measuring eagerly: "
                      f"{row['graph_error']}", file=sys.stderr)
        if dec.graph is not None:
            check = dec.check_graph()
            row["graph_check"] = check
            print(f"{name} batch {batch}: graph vs eager first-step logits max abs diff {check['max_abs_diff']:.3e} "
                  f"(max |logit| {check['max_abs_logit']:.3f}, argmax agree {100 * check['argmax_agree']:.0f}%)"
                  + (f"; vs the compiled step un-captured {check['capture_max_abs_diff']:.3e}" if args.compile else ""))
            if not check["ok"]:
                raise RuntimeError(f"{name} batch {batch}: the CUDA graph's logits differ from the eager step "
                                   f"({check}); refusing to report its speed")
        dec.run(min(args.new_tokens, WARMUP_STEPS))  # warm-up
        prefill_s, decode_s = [], []
        for _ in range(args.repeats):
            p, d, logits = dec.run(args.new_tokens)
            prefill_s.append(p)
            decode_s.append(d)
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError(f"{name} batch {batch}: decode logits are not finite")
        if args.profile and device.type == "cuda":
            row["profile"] = profile_step(dec, args.profile)
        del dec
    decode = statistics.median(decode_s)
    row.update({
        "decode_tokens_per_s": batch * args.new_tokens / decode,
        "ms_per_token": 1000 * decode / args.new_tokens,
        "prefill_ms": 1000 * statistics.median(prefill_s),
        "peak_gib": _peak_gib(device),
        "allocated_gib_at_start": start_gib,
        "linear_weight_gib": weight_bytes / GIB,
        "decode_s_runs": decode_s,
        "prefill_s_runs": prefill_s,
    })
    return row


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="spqr-w3")
    p.add_argument("--outlier-share", type=float, default=0.01)
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median), after one warm-up run")
    p.add_argument("--mode", choices=("eager", "graph"), default=None,
                   help="graph: one decode step captured in a CUDA graph (default on CUDA); eager otherwise")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 32, or 2 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="2 layers, hidden 256, MLP 688, 4 heads, vocab 1000; eager")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                   help="model dtype (default float16 on CUDA, float32 on CPU)")
    p.add_argument("--strict-graph", action="store_true",
                   help="fail when the CUDA graph capture fails, instead of measuring that row eagerly")
    p.add_argument("--skip-fp16", action="store_true", help="measure the SpQR model only")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile (inductor, static shapes) the decode step's forward, for fp16 and SpQR alike, "
                        "before the CUDA graph capture: norms, rotary embedding and the rest fused")
    p.add_argument("--fuse", choices=("off", "on", "both"), default="off",
                   help="fuse each input-sharing set (q/k/v, gate/up) into one layer per block "
                        "(spqrkit.models.fusion), for fp16 and SpQR alike; both: every model measured unfused, "
                        "then fused")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS decode steps per row (torch.profiler): GPU time per kernel and step")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the capture stream and the graph pool belong to the current device
    if args.mode is None:
        args.mode = "graph" if device.type == "cuda" and not args.tiny else "eager"
    if args.mode == "graph" and device.type != "cuda":
        p.error("--mode graph needs a CUDA device")
    if args.compile and device.type != "cuda":
        p.error("--compile needs a CUDA device (inductor's GPU code)")
    if args.profile and device.type != "cuda":
        p.error("--profile needs a CUDA device (it sums the GPU kernels' times)")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    config = llama_config(args)

    model = build_model(config, dtype, device)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (max(batches), args.prompt_len), generator=gen).to(device)

    rows = []
    fp16_bytes, numel = linear_weight_bytes(model)
    fusions = {"off": (False,), "on": (True,), "both": (False, True)}[args.fuse]

    def measure_all(name: str) -> list[str]:
        """Rows of every batch size, unfused and / or fused (as --fuse says); the fused layers' module names."""
        fused_names = []
        for fused in fusions:
            if fused:
                report = fuse_projections(model)
                print(f"{name}: {report.summary()}")
                if report.skipped:
                    raise RuntimeError(f"{name}: sets left unfused: {report.skipped[:3]}")
                fused_names = report.fused
            for b in batches:
                rows.append(measure(model, name + (" fused" if fused else ""), b, prompt, args, device))
                rows[-1]["fused"] = fused
        return fused_names

    fused_names = []
    if not args.skip_fp16:
        fused_names = measure_all("fp16" if dtype == torch.float16 else str(dtype).replace("torch.", ""))
    baseline = {(r["batch"], r["fused"]): r["decode_tokens_per_s"] for r in rows}

    n_outliers = swap_to_spqr(model, args.preset, args.outlier_share, device)
    for name in fused_names:  # the dense fused layers, now unused: the slices were replaced
        holder, attr = name.rsplit(".", 1)
        delattr(model.get_submodule(holder), attr)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    spqr_bytes, _ = linear_weight_bytes(model)
    measure_all(args.preset)
    for r in rows:
        base = baseline.get((r["batch"], r["fused"]))
        r["speedup_vs_fp16"] = r["decode_tokens_per_s"] / base if base else None
        base = baseline.get((r["batch"], False))
        r["speedup_vs_fp16_unfused"] = r["decode_tokens_per_s"] / base if base else None

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    result = {
        "benchmark": "generate",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "spqrkit": spqrkit.__version__,
        "model": {"hidden": config.hidden_size, "intermediate": config.intermediate_size,
                  "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
                  "kv_heads": config.num_key_value_heads, "vocab": config.vocab_size,
                  "max_positions": config.max_position_embeddings, "dtype": str(dtype).replace("torch.", ""),
                  "attention": "sdpa", "weights": "random normal std 0.02"},
        "preset": args.preset,
        "quant_config": get_preset(args.preset).to_dict(),
        "outlier_share_requested": args.outlier_share,
        "outlier_share": n_outliers / numel,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "mode": args.mode,
        "compiled": args.compile,
        "fuse": args.fuse,
        "kv_cache": "transformers StaticCache",
        "linear_weights": {"numel": numel, "dense_bytes": fp16_bytes, "spqr_bytes": spqr_bytes,
                           "spqr_bits_per_weight": 8 * spqr_bytes / numel},
        "peak_memory": "torch.cuda.max_memory_allocated per row" if device.type == "cuda"
        else "process peak RSS (ru_maxrss)",
        "rows": rows,
    }

    print(f"\nGreedy decode, LLaMA-shaped {config.num_hidden_layers} x {config.hidden_size}/"
          f"{config.intermediate_size}, "
          f"prompt {args.prompt_len} + {args.new_tokens} new tokens, static KV cache, {name}")
    print(f"SpQR {args.preset}: {8 * spqr_bytes / numel:.3f} bits per weight with {100 * n_outliers / numel:.2f}% "
          "outliers")
    print("| config | batch | mode | SpQR kernel decode / prefill | decode tok/s | ms/token | speed-up vs fp16 | "
          "vs fp16 unfused | prefill ms | peak GiB | linear weight GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = f"{r['speedup_vs_fp16']:.2f}x" if r["speedup_vs_fp16"] else "-"
        speedup += f" | {r['speedup_vs_fp16_unfused']:.2f}x" if r["speedup_vs_fp16_unfused"] else " | -"
        mode = r["mode"] + (" + compile" if r["compiled"] else "") + (" (capture failed)" if r["graph_error"] else "")
        kernels = f"{r['spqr_kernel_decode']} / {r['spqr_kernel_prefill']}" if r["spqr_kernel_decode"] else "-"
        print(f"| {r['config']} | {r['batch']} | {mode} | {kernels} | {r['decode_tokens_per_s']:.1f} | "
              f"{r['ms_per_token']:.2f} | "
              f"{speedup} | {r['prefill_ms']:.1f} | {r['peak_gib']:.2f} | {r['linear_weight_gib']:.3f} |")
    for r in rows:
        if "profile" in r:
            prof = r["profile"]
            print(f"\n{r['config']} batch {r['batch']}: {prof['kernel_us_per_step']:.0f} us of kernels per step, "
                  f"{prof['wall_us_per_step']:.0f} us wall (profiled)")
            for kname, us in prof["kernels_us_per_step"].items():
                print(f"  {us:8.1f} us  {100 * us / prof['kernel_us_per_step']:5.1f}%  {kname[:110]}")
            print("  host, self CPU time per step:")
            for op, v in list(prof["cpu_self_us_per_step"].items())[:10]:
                print(f"  {v['us']:8.1f} us  {v['calls']:6.1f} calls  {op[:100]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
