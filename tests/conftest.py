"""Shared fixtures. The real default model loads once per test session (about 15 s on 2 CPU cores)."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on the CPU. The variable is read when a kernel is
# defined, so it must be set before any test module imports spqrkit.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from spqrkit.data.corpora import join_documents, load_corpus
from spqrkit.models.source import DEFAULT_MODEL, load_model, load_tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far slower on two when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_model_and_tokenizer():
    """(model, tokenizer) of the default SmolLM2-135M GGUF model, fp32 on CPU, in eval mode.

    Shared by the whole session: tests must not modify the model (copy.deepcopy it first).
    """
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def default_tokenizer(request):
    """Tokenizer of the default model alone (about 3 s), for tests that need no weights; the loaded model's own
    tokenizer (the same `load_tokenizer` result) when a test of this session loads the model anyway."""
    if any("default_model_and_tokenizer" in item.fixturenames for item in request.session.items):
        return request.getfixturevalue("default_model_and_tokenizer")[1]
    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory):
    """A short calibration text file (the first LAMBADA documents, a few thousand tokens), for `--calib` in tests
    whose subject is not the calibration corpus: tokenizing the whole built-in corpus costs seconds per call."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(join_documents(load_corpus("lambada")[:12]), encoding="utf-8")
    return path


def pytest_collection_modifyitems(config, items):
    """`gpu_sweep` tests (exhaustive layout sweeps and large shapes of the kernels) run where the kernels are
    compiled, on CUDA (benchmarks/gpu_tests.sh); on the CPU the smallest cases that reach every code path run in
    Triton's interpreter instead. `-m gpu_sweep` runs them anyway."""
    if torch.cuda.is_available() or "gpu_sweep" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="gpu_sweep: an exhaustive kernel sweep, run compiled on the GPU")
    for item in items:
        if "gpu_sweep" in item.keywords:
            item.add_marker(skip)
