"""Zero-shot multiple-choice accuracy as lm-eval-harness computes it (tasks and prompts: `spqrkit.data.tasks`).

Each choice of an item is one (context, continuation) request, scored by the summed log-likelihood of the
continuation's tokens given the context. Tokenisation is lm-eval's (its HF model with default settings):

- trailing whitespace of the context moves to the front of the continuation;
- the continuation's tokens are those of tokenize(context + continuation) past the first len(tokenize(context)),
  so a token that straddles the boundary is counted in the context, exactly as lm-eval does;
- special tokens as the tokenizer adds them by default (SmolLM2's: none; Llama-2's: BOS), as lm-eval 0.4.13 does
  when `add_bos_token` is not set; an empty context becomes the BOS token (EOS when there is none);
- a sequence longer than the model's context is cut on the left to its last max_length + 1 tokens.

Metrics, per item, then averaged over items (lm-eval's `multiple_choice` output type):

- acc: the choice with the largest summed log-likelihood is the gold one (ties go to the first choice, as
  numpy.argmax);
- acc_norm: the same after dividing each choice's log-likelihood by the length of its choice string in characters
  (lm-eval's len(choice) on the str, the choice without the " " target delimiter); reported for the tasks where
  lm-eval reports it (not winogrande);
- acc_stderr: lm-eval's standard error of the mean, sample standard deviation (ddof=1) / sqrt(n).

The average over tasks (`avg_acc`) is the unweighted mean of the tasks' acc: the SpQR paper's zero-shot tables, like
GPTQ's, report lm-eval's acc for every task (LLaMA-7B HellaSwag about 56 there, which is acc; acc_norm is about 76).

Batching: on a CPU, a unique context shared by several requests (piqa, hellaswag, arc: all choices of an item) runs
once, and its choices run together as one batch on top of the context's KV cache, which roughly halves the tokens of
hellaswag and arc. The other requests (winogrande's, whose contexts differ per choice, and all of them on a GPU) run
`batch_size` whole sequences per forward, longest first, padded on the right: with causal attention, padding after a
sequence cannot change its logits, so no attention mask is needed (lm-eval does the same).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from spqrkit.data.tasks import TASK_NAMES, MultipleChoiceItem, load_task, task_spec

_DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither the config nor the tokenizer gives one


def encode_request(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context token ids, continuation token ids) split the way lm-eval splits them (see the module docstring)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        prefix = _prefix_token_id(tokenizer)
        cont = tokenizer(continuation, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
    whole = _encode(tokenizer, context + continuation)
    n_context = len(_encode(tokenizer, context))
    return whole[:n_context], whole[n_context:]


def _prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    # The tokenizer's own special-token default (a Llama-2 tokenizer adds BOS, SmolLM2's adds nothing), except for a
    # text that already starts with the BOS string: what lm-eval's HF model does unless told add_bos_token.
    starts_with_bos = text.startswith(tokenizer.decode([_prefix_token_id(tokenizer)]))
    kwargs = {"add_special_tokens": False} if starts_with_bos else {}
    return tokenizer(text, return_attention_mask=False, **kwargs)["input_ids"]


def model_max_length(model, tokenizer) -> int:
    """The longest input lm-eval would give this model: the config's context size, else the tokenizer's."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value:
            return int(value)
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    # transformers puts a huge sentinel (about 1e30) there when the tokenizer does not know the length.
    return int(tokenizer_max) if tokenizer_max and tokenizer_max < 1_000_000 else _DEFAULT_MAX_LENGTH


def score_requests(
    model: torch.nn.Module,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    share_context: bool | None = None,
    progress: bool = True,
    desc: str = "loglikelihood",
) -> list[float]:
    """Summed log-likelihood of each request's continuation given its context, in request order.

    `share_context` runs each context shared by several requests once (KV cache); `batch_size` is the number of
    requests per forward for the others. Both give the same numbers up to float rounding. None shares contexts on a
    CPU, where time goes with tokens (about 1.5x faster on hellaswag and arc), and not on a GPU, where it goes with
    forward passes and wide batches of whole sequences are faster.
    """
    encoded = [encode_request(tokenizer, ctx, cont) for ctx, cont in requests]
    return score_token_requests(model, encoded, max_length=model_max_length(model, tokenizer), batch_size=batch_size,
                                share_context=share_context, progress=progress, desc=desc)


@torch.inference_mode()
def score_token_requests(
    model: torch.nn.Module,
    encoded: Sequence[tuple[list[int], list[int]]],
    *,
    max_length: int,
    batch_size: int = 16,
    share_context: bool | None = None,
    progress: bool = True,
    desc: str = "loglikelihood",
) -> list[float]:
    """`score_requests` on (context ids, continuation ids) pairs; `max_length` is the longest model input."""
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be positive, got {batch_size!r} and {max_length!r}")
    if any(not ctx or not cont for ctx, cont in encoded):
        raise ValueError("every request needs at least one context token and one continuation token")
    if any(len(cont) > max_length for _, cont in encoded):
        raise ValueError(f"a continuation is longer than the model's {max_length} positions")
    if share_context is None:
        share_context = next(model.parameters()).device.type == "cpu"

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        groups.setdefault(tuple(ctx), []).append(i)
    shared, flat_ids = [], []
    for ctx, members in groups.items():
        fits = all(len(ctx) + len(encoded[i][1]) <= max_length for i in members)
        if share_context and len(members) > 1 and fits:
            shared.append(members)
        else:
            flat_ids += members

    scores: list[float] = [math.nan] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(encoded), desc=desc, unit="req", disable=not progress) as bar:
            for members in shared:
                conts = [list(encoded[i][1]) for i in members]
                for i, s in zip(members, _score_shared_context(model, list(encoded[members[0]][0]), conts)):
                    scores[i] = s
                bar.update(len(members))
            for i, s in _score_flat(model, encoded, flat_ids, batch_size, max_length, bar):
                scores[i] = s
    finally:
        model.train(was_training)
    if not all(math.isfinite(s) for s in scores):
        raise FloatingPointError("a log-likelihood is NaN or infinite; check the weights and the dtype")
    return scores


def _continuation_logprob(logits: torch.Tensor, targets: list[int]) -> float:
    """Sum of log p(targets[t]) under logits[t]; logits: [len(targets), V] in any float dtype."""
    log_probs = logits.float().log_softmax(-1)  # [k, V]
    index = torch.tensor(targets, device=logits.device).unsqueeze(1)  # [k, 1]
    return log_probs.gather(1, index).sum().item()


def _score_flat(model, encoded, ids: list[int], batch_size: int, max_length: int, bar):
    """Yield (request index, log-likelihood), `batch_size` full sequences per forward, right-padded."""
    device = next(model.parameters()).device
    ordered = sorted(ids, key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        # The input drops the last token: position t predicts token t + 1.
        rows = [(list(encoded[i][0]) + list(encoded[i][1]))[-(max_length + 1) :][:-1] for i in chunk]
        inputs = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)  # [b, width]
        for r, row in enumerate(rows):
            inputs[r, : len(row)] = torch.tensor(row)
        logits = model(input_ids=inputs.to(device), use_cache=False).logits  # [b, width, V]
        for r, i in enumerate(chunk):
            cont, n = encoded[i][1], len(rows[r])
            yield i, _continuation_logprob(logits[r, n - len(cont) : n], list(cont))
        bar.update(len(chunk))


def _score_shared_context(model, context: list[int], continuations: list[list[int]]) -> list[float]:
    """Log-likelihoods of several continuations of one context: the context runs once, then all continuations run
    as one right-padded batch on a copy of its KV cache per continuation."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([context], device=device), use_cache=True, logits_to_keep=1)
    first = out.logits[0, -1].float().log_softmax(-1)  # [V]: predicts every continuation's first token
    scores = [first[cont[0]].item() for cont in continuations]
    width = max(map(len, continuations)) - 1
    if width == 0:
        return scores
    cache = out.cache if "cache" in out else out.past_key_values
    cache.batch_repeat_interleave(len(continuations))  # [1, ...] -> [n, ...] in place
    inputs = torch.zeros(len(continuations), width, dtype=torch.long)  # [n, width]: each continuation but its last
    for r, cont in enumerate(continuations):
        inputs[r, : len(cont) - 1] = torch.tensor(cont[:-1])
    logits = model(input_ids=inputs.to(device), use_cache=True, **{_cache_argument(model): cache}).logits
    for r, cont in enumerate(continuations):  # logits: [n, width, V]
        if len(cont) > 1:
            scores[r] += _continuation_logprob(logits[r, : len(cont) - 1], cont[1:])
    return scores


def _cache_argument(model) -> str:
    # transformers 5 renamed the forward argument `past_key_values` to `cache`.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class TaskResult:
    task: str
    split: str
    n: int  # items scored
    n_split: int  # items in the full split
    acc: float
    acc_stderr: float
    acc_norm: float | None  # None where lm-eval does not report it
    acc_norm_stderr: float | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def choice_predictions(item: MultipleChoiceItem, lls: Sequence[float]) -> tuple[int, int]:
    """(argmax of log-likelihoods, argmax of log-likelihood per character of the choice), first index on ties."""
    if len(lls) != len(item.choices):
        raise ValueError(f"{len(lls)} log-likelihoods for {len(item.choices)} choices")
    normalized = [ll / len(choice) for ll, choice in zip(lls, item.choices)]
    return _argmax(lls), _argmax(normalized)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _mean_and_stderr(hits: list[bool]) -> tuple[float, float]:
    n = len(hits)
    mean = sum(hits) / n
    if n < 2:
        return mean, math.nan
    variance = sum((h - mean) ** 2 for h in hits) / (n - 1)
    return mean, math.sqrt(variance / n)


def evaluate_task(
    model: torch.nn.Module,
    tokenizer,
    task: str,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    share_context: bool | None = None,
    progress: bool = True,
) -> TaskResult:
    """acc (and acc_norm where lm-eval reports it) on the first `limit` items of a task's split (all by default)."""
    spec = task_spec(task)
    items = load_task(task, limit)
    started = time.perf_counter()
    requests = [request for item in items for request in item.requests]
    lls = score_requests(model, tokenizer, requests, batch_size=batch_size, share_context=share_context,
                         progress=progress, desc=task)
    hits, hits_norm, pos = [], [], 0
    for item in items:
        pred, pred_norm = choice_predictions(item, lls[pos : pos + len(item.choices)])
        pos += len(item.choices)
        hits.append(pred == item.gold)
        hits_norm.append(pred_norm == item.gold)
    acc, acc_stderr = _mean_and_stderr(hits)
    acc_norm, acc_norm_stderr = _mean_and_stderr(hits_norm) if "acc_norm" in spec.metrics else (None, None)
    return TaskResult(task=task, split=spec.split, n=len(items), n_split=spec.n_items, acc=acc, acc_stderr=acc_stderr,
                      acc_norm=acc_norm, acc_norm_stderr=acc_norm_stderr, seconds=time.perf_counter() - started)


def zero_shot(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[str] = TASK_NAMES,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    share_context: bool | None = None,
    progress: bool = True,
) -> dict:
    """Every task's result as a dict, plus `avg_acc`, the unweighted mean of their acc (see the module docstring)."""
    if not tasks:
        raise ValueError("no tasks given")
    for task in tasks:
        task_spec(task)  # unknown names fail before any work
    results = [evaluate_task(model, tokenizer, task, limit=limit, batch_size=batch_size, share_context=share_context,
                             progress=progress) for task in tasks]
    return {
        "tasks": {r.task: r.to_dict() for r in results},
        "avg_acc": sum(r.acc for r in results) / len(results),
        "limit": limit,
        "seconds": sum(r.seconds for r in results),
    }


def format_zero_shot(result: dict) -> str:
    """A table of a `zero_shot` result: one row per task, then the average."""
    pct = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    err = lambda v: "" if v is None or math.isnan(v) else f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"| {'task':<14} | {'split':<10} | {'items':>13} | {'acc %':>6} | {'± %':>5} | {'acc_norm %':>10} | "
        f"{'± %':>5} | {'s':>6} |",
        f"|{'-' * 16}|{'-' * 12}|{'-' * 15}|{'-' * 8}|{'-' * 7}|{'-' * 12}|{'-' * 7}|{'-' * 8}|",
    ]
    for r in result["tasks"].values():
        lines.append(
            f"| {r['task']:<14} | {r['split']:<10} | {r['n']:>5} / {r['n_split']:<5} | {pct(r['acc']):>6} | "
            f"{err(r['acc_stderr']):>5} | {pct(r['acc_norm']):>10} | {err(r['acc_norm_stderr']):>5} | "
            f"{r['seconds']:>6.1f} |"
        )
    lines.append(f"| {'average (acc)':<14} | {'':<10} | {'':>13} | {pct(result['avg_acc']):>6} | {'':>5} | "
                 f"{'':>10} | {'':>5} | {result['seconds']:>6.1f} |")
    return "\n".join(lines)
