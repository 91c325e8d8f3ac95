"""Text generation from a model (a compressed spqrkit checkpoint included), streamed as it is produced.

`generate_text` is the whole job: it wraps the prompt in the tokenizer's chat template when asked, runs
transformers' `generate` (with its KV cache; quantized layers compute through `SpQRLinear.forward`, on any device),
streams the decoded text to a sink as tokens arrive, and returns the text with its token count and timing.
Greedy decoding unless `temperature > 0`; sampling is then seeded and restricted to the `top_p` nucleus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import torch
from transformers import GenerationConfig, TextStreamer

# Where streamed text goes: a callable taking each new piece of text, or a text stream (write + flush).
Sink = Callable[[str], Any] | TextIO


@dataclass(frozen=True)
class GenerationResult:
    prompt: str            # the prompt as given (before any chat template)
    text: str              # the generated text alone, special tokens removed
    new_tokens: int        # generated tokens, the end-of-sequence token included when one ended the text
    prompt_tokens: int     # tokens of the model input (chat template included)
    seconds: float         # wall time of `generate`: prompt prefill plus every decoding step
    chat: bool             # whether the prompt went through the chat template
    finish_reason: str     # "eos" (the model ended the text) or "length" (max_new_tokens reached)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}

    def summary(self) -> str:
        return (f"{self.new_tokens} new tokens in {self.seconds:.2f} s ({self.tokens_per_s:.3g} tokens/s; "
                f"prompt {self.prompt_tokens} tokens, stopped by {self.finish_reason})")


def check_generation_args(prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
                          top_p: float = 1.0) -> None:
    """ValueError with a one-line message for arguments `generate_text` refuses (cheap: run it before loading)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: pass some text with --prompt")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"--temperature must be >= 0 and finite (0 = greedy), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p!r}")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_inputs(tokenizer, prompt: str, chat: bool | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """(tokenizer output for a batch of one, whether the chat template was used). chat=None: use it if it exists."""
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if use_chat and not has_chat_template(tokenizer):
        raise ValueError("--chat asked for, but this tokenizer has no chat template; use --no-chat")
    if use_chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        # The template already holds every special token the model expects.
        encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    else:
        encoded = tokenizer(prompt, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}, use_chat


class _SinkStreamer(TextStreamer):
    """transformers' TextStreamer (word-boundary buffering, prompt skipped) that writes to a sink, with no newline
    added at the end."""

    def __init__(self, tokenizer, sink: Sink, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt=True, **decode_kwargs)
        self._write = sink if callable(sink) else sink.write
        self._flush = getattr(sink, "flush", None)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._write(text)
            if self._flush is not None:
                self._flush()


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate_text(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    chat: bool | None = None,
    stream: Sink | None = None,
    static_cache: bool = False,
) -> GenerationResult:
    """Continue `prompt` (or answer it, through the chat template) with at most `max_new_tokens` tokens.

    temperature: 0 = greedy (deterministic); > 0 samples from softmax(logits / temperature), restricted to the
        smallest set of tokens whose probability reaches `top_p` (no top-k cut).
    seed: seeds the sampling, in a forked RNG (the caller's random state is left as it was); None = unseeded.
    chat: wrap the prompt as a user message with the tokenizer's chat template; None = if the tokenizer has one.
    stream: receives the text as it is decoded (a callable or a text stream such as sys.stdout); the pieces join
        to `result.text`.
    static_cache: a static KV cache (transformers `cache_implementation="static"`); on CUDA transformers then
        compiles the one-token decode step (torch.compile, CUDA graphs: its own `CompileConfig`) on first use,
        which removes the per-kernel host cost of eager decoding; elsewhere the cache alone.
    Decoding uses the model's KV cache; the model runs on the device its parameters are on.
    """
    check_generation_args(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    device = next(model.parameters()).device
    inputs, used_chat = build_inputs(tokenizer, prompt, chat)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    n_prompt = inputs["input_ids"].shape[1]

    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    sampling = temperature > 0
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,
        eos_token_id=eos or None,
        pad_token_id=pad,
        use_cache=True,
        cache_implementation="static" if static_cache else None,
    )
    decode_kwargs = {"skip_special_tokens": True}
    streamer = _SinkStreamer(tokenizer, stream, **decode_kwargs) if stream is not None else None

    cuda_devices = [] if device.type != "cuda" else [
        device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda_devices, enabled=seed is not None), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        output = model.generate(**inputs, generation_config=gen_config, streamer=streamer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start

    new_ids = output[0, n_prompt:].tolist()
    # Padding after an early end only appears in batches; a batch of one stops at its end-of-sequence token.
    finish = "eos" if new_ids and new_ids[-1] in eos else "length"
    text = tokenizer.decode(new_ids, **decode_kwargs)
    return GenerationResult(prompt=prompt, text=text, new_tokens=len(new_ids), prompt_tokens=n_prompt,
                            seconds=seconds, chat=used_chat, finish_reason=finish)
