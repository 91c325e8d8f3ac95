"""Perplexity with the GPTQ / SpQR protocol.

The corpus is one token stream cut into consecutive non-overlapping windows of `seqlen` tokens (the trailing partial
window is dropped). Each window is a separate forward pass with no context carried over, so it predicts its tokens
1..seqlen-1 from the ones before them: seqlen-1 predictions per window. Perplexity is exp of the mean negative
log-likelihood over all predicted tokens of all windows. Because every window predicts the same number of tokens,
this equals the GPTQ code's exp(sum over windows of mean_nll * seqlen / (n_windows * seqlen)).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spqrkit.data.corpora import DEFAULT_EVAL_CORPUS, consecutive_windows, tokenize_corpus


@dataclass(frozen=True)
class PerplexityResult:
    """ppl = exp(mean_nll); n_tokens counts predicted tokens, n_windows * (seqlen - 1)."""

    ppl: float
    mean_nll: float
    n_windows: int
    n_tokens: int
    seqlen: int
    seconds: float


def token_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, chunk_tokens: int = 512) -> torch.Tensor:
    """Sum over the batch of the NLL of tokens 1..T-1 given logits at positions 0..T-2, as a float64 scalar.

    logits: [B, T, V] in any float dtype; input_ids: [B, T]. The loss is computed in fp32 a chunk of positions at a
    time, so only [B, chunk_tokens, V] is ever upcast: a full fp32 copy of 2048 x 49k logits would be 400 MB a row.
    """
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match input_ids {tuple(input_ids.shape)}")
    n_predicted = input_ids.shape[1] - 1
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for start in range(0, n_predicted, chunk_tokens):
        stop = min(start + chunk_tokens, n_predicted)
        chunk_logits = logits[:, start:stop].float()  # [B, c, V]
        targets = input_ids[:, start + 1 : stop + 1]  # [B, c]
        nll = F.cross_entropy(chunk_logits.flatten(0, 1), targets.flatten(), reduction="sum")
        total += nll.double()
    return total


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    *,
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
    chunk_tokens: int = 512,
) -> PerplexityResult:
    """Perplexity of a causal LM on a token stream [1, n_tokens] (see the module docstring for the protocol).

    The model runs where its parameters are; windows go there `batch_size` at a time.
    """
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2 to predict any token, got {seqlen!r}")
    if batch_size < 1 or chunk_tokens < 1:
        raise ValueError(f"batch_size and chunk_tokens must be positive, got {batch_size!r} and {chunk_tokens!r}")
    windows = consecutive_windows(tokens, seqlen, max_windows)  # [n_windows, seqlen]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    nll_sum = 0.0
    try:
        with tqdm(total=windows.shape[0], desc="perplexity", unit="window", disable=not progress) as bar:
            for batch in windows.split(batch_size):
                batch = batch.to(device)  # [b, seqlen]
                logits = model(input_ids=batch, use_cache=False).logits  # [b, seqlen, V]
                batch_nll = token_nll_sum(logits, batch, chunk_tokens).item()
                if not math.isfinite(batch_nll):
                    raise FloatingPointError(
                        "the model produced NaN or Inf logits; check the weights and the dtype "
                        "(fp16 overflow is a common cause)"
                    )
                nll_sum += batch_nll
                bar.update(batch.shape[0])
    finally:
        model.train(was_training)
    n_tokens = windows.shape[0] * (seqlen - 1)
    mean_nll = nll_sum / n_tokens
    return PerplexityResult(
        ppl=math.exp(mean_nll),
        mean_nll=mean_nll,
        n_windows=windows.shape[0],
        n_tokens=n_tokens,
        seqlen=seqlen,
        seconds=time.perf_counter() - started,
    )


def corpus_perplexity(
    model: torch.nn.Module,
    tokenizer,
    corpus: str | os.PathLike = DEFAULT_EVAL_CORPUS,
    **kwargs,
) -> PerplexityResult:
    """Perplexity on a built-in corpus or text file; keyword arguments go to `perplexity`."""
    return perplexity(model, tokenize_corpus(tokenizer, corpus), **kwargs)
