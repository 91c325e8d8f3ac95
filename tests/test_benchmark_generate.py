"""CPU smoke test of benchmarks/generate.py: the whole harness on the tiny model, eager, two batch sizes, unfused
and fused."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "generate.py"


@pytest.fixture(scope="module")
def generate():
    spec = importlib.util.spec_from_file_location("benchmark_generate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_tiny_cpu(generate, one_thread, tmp_path):
    """--fuse both: every model measured unfused (as --fuse off measures it), then with q/k/v and gate/up fused; the
    SpQR sets get one permutation each (so they fuse), and the fp16 fused layers are dropped before the swap."""
    out = tmp_path / "generate.json"
    generate.main(["--tiny", "--device", "cpu", "--new-tokens", "4", "--prompt-len", "8", "--batch-sizes", "1,2",
                   "--mode", "eager", "--repeats", "1", "--fuse", "both", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "generate" and result["torch"] and result["transformers"] and result["date"]
    assert result["fuse"] == "both"
    rows = result["rows"]
    assert [(r["config"], r["batch"], r["fused"]) for r in rows] == [
        ("float32", 1, False), ("float32", 2, False), ("float32 fused", 1, True), ("float32 fused", 2, True),
        ("spqr-w3", 1, False), ("spqr-w3", 2, False), ("spqr-w3 fused", 1, True), ("spqr-w3 fused", 2, True)]
    for r in rows:
        assert r["mode"] == "eager" and r["graph_error"] is None
        for key in ("decode_tokens_per_s", "ms_per_token", "prefill_ms", "peak_gib", "linear_weight_gib",
                    "speedup_vs_fp16", "speedup_vs_fp16_unfused"):
            assert r[key] > 0, (r["config"], r["batch"], key)
    weights = result["linear_weights"]
    assert weights["spqr_bytes"] < weights["dense_bytes"] / 4  # fp32 dense here; ~4.4 bits per weight packed
    assert 0.005 < result["outlier_share"] < 0.015
    # the fused layers hold the same codes, statistics and outliers; one permutation and one row pointer array
    # per set instead of one per linear
    for unfused, fused in zip(rows[4:6], rows[6:8]):
        assert 0.99 * unfused["linear_weight_gib"] < fused["linear_weight_gib"] < unfused["linear_weight_gib"]


def test_static_cache_decode_matches_recompute(generate, one_thread):
    """The decode harness (static cache, rewinds, the graph check) is exact against a cache-free recomputation;
    a stand-in for the CUDA graph (replay = one eager step) exercises the graph-mode bookkeeping on the CPU."""
    class Args:
        tiny, layers = True, None

    model = generate.build_model(generate.llama_config(Args), torch.float32, torch.device("cpu"))
    prompt = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        seq = prompt
        for _ in range(5):
            seq = torch.cat([seq, model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
        dec = generate.Decoder(model, prompt, 4)

        class FakeGraph:
            def replay(self):
                dec.graph_logits = dec.step()

        dec.prefill()
        dec.graph = FakeGraph()
        check = dec.check_graph()
        assert check["max_abs_diff"] == 0 and check["finite"]
        _, _, logits = dec.run(4)
        assert torch.isfinite(logits).all()
        assert torch.equal(dec.ids, seq[:, -1:])  # the fifth generated token: one from the prefill + four steps


def test_graph_guard_tolerances(generate):
    """The graph guard: the replay within 2% of the largest logit of the eager step (5% when the step is
    compiled) and within 2% of the same step un-captured; a non-finite replay fails."""
    eager = torch.tensor([[4.0, -5.0, 1.0]])
    off = eager + torch.tensor([[0.15, 0.0, 0.0]])  # 3% of 5
    assert generate.compare_logits(eager, eager, eager, compiled=False)["ok"]
    assert not generate.compare_logits(eager, off, off, compiled=False)["ok"]  # 3% off eager, uncompiled
    assert generate.compare_logits(eager, off, off, compiled=True)["ok"]  # compiled: 3% off eager, capture exact
    check = generate.compare_logits(eager, eager, off, compiled=True)  # the capture itself 3% off
    assert not check["ok"] and check["capture_max_abs_diff"] == pytest.approx(0.15)
    assert not generate.compare_logits(eager, eager, eager * float("nan"), compiled=True)["ok"]
