"""The per-layer graph cache of eager SpQR calls (spqrkit.modules.eager_graphs), on the CPU with a stand-in for the
CUDA graph; the real capture and replay are tested on the GPU (tests/test_cuda.py)."""

import pytest
import torch

from spqrkit.modules import eager_graphs


class FakeGraph:
    """Replays `run` on the captured input into the captured output, as a CUDA graph would."""

    def __init__(self, run, x, y):
        self.run, self.x, self.y = run, x, y

    def replay(self):
        self.y.copy_(self.run(self.x))


@pytest.fixture
def captures(monkeypatch):
    made = []

    def capture(x, run):
        static = x.clone()
        y = run(static)
        made.append(static.shape)
        return eager_graphs._Graph(FakeGraph(run, static, y), static, y)

    monkeypatch.setattr(eager_graphs, "_capture", capture)
    return made


def test_direct_then_captured_then_replayed(captures):
    calls = []

    def run(x):
        calls.append(x.shape)
        return x * 2

    cache = {}
    xs = [torch.randn(1, 4) for _ in range(4)]
    ys = [eager_graphs.call(cache, "k", ("buffers",), x, run) for x in xs]
    assert len(captures) == 1  # on the second call
    for x, y in zip(xs, ys):
        assert torch.equal(y, x * 2)
    assert ys[2].data_ptr() != ys[3].data_ptr()  # each replay's output is copied out
    # another shape or kernel: its own entry; the first graph stays
    eager_graphs.call(cache, "k", ("buffers",), torch.randn(8, 4), run)
    eager_graphs.call(cache, "other", ("buffers",), torch.randn(1, 4), run)
    assert sum(isinstance(v, eager_graphs._Graph) for v in cache.values()) == 1 and len(cache) == 3


def test_changed_buffers_drop_the_old_graphs(captures):
    cache = {}
    for _ in range(3):
        eager_graphs.call(cache, "k", ("old",), torch.randn(1, 4), lambda x: x + 1)
    assert len(cache) == 1
    x = torch.randn(1, 4)
    assert torch.equal(eager_graphs.call(cache, "k", ("new",), x, lambda x: x - 1), x - 1)
    assert list(cache) == [((1, 4), torch.float32, torch.device("cpu"), "k", ("new",))]


def test_a_failed_capture_leaves_the_key_direct(monkeypatch):
    def fail(x, run):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(eager_graphs, "_capture", fail)
    cache = {}
    x = torch.randn(2, 4)
    eager_graphs.call(cache, "k", ("b",), x, lambda x: x * 3)
    with pytest.warns(UserWarning, match="could not be captured"):
        y = eager_graphs.call(cache, "k", ("b",), x, lambda x: x * 3)
    assert torch.equal(y, x * 3)
    assert torch.equal(eager_graphs.call(cache, "k", ("b",), x, lambda x: x * 3), x * 3)  # no second try


def test_wanted_only_small_cuda_inputs(monkeypatch):
    assert not eager_graphs.wanted(torch.randn(1, 4))  # the CPU: no graphs
    if torch.cuda.is_available():
        assert eager_graphs.wanted(torch.randn(1, 4, device="cuda"))
        assert not eager_graphs.wanted(torch.randn(eager_graphs.GRAPH_MAX_ROWS + 1, 4, device="cuda"))
        assert not eager_graphs.wanted(torch.randn(1, 4, device="cuda", requires_grad=True))
        monkeypatch.setenv(eager_graphs.EAGER_GRAPHS_ENV, "0")
        assert not eager_graphs.wanted(torch.randn(1, 4, device="cuda"))
