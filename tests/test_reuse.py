"""Replaying a block's finished parts (spqrkit.models.reuse): the same weights and outputs as recomputing them."""

from __future__ import annotations

import pytest
import torch
from test_families import tiny_model
from test_pipeline import SPQR, calib
from torch import nn

from spqrkit.models import pipeline
from spqrkit.models.reuse import FinishedParts


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.calls += 1
        return self.inner(x) * scale


def test_a_finished_part_replays_only_equal_calls() -> None:
    block = nn.Module()
    block.part = _Counting()
    parts = FinishedParts(block, [block.part.inner])
    x = torch.randn(2, 4)
    with parts.pass_([block.part.inner], record=True):  # pending: the part is not finished, nothing is recorded
        block.part(x)
    with parts.pass_([], record=True):
        first = block.part(x)
        block.part(x, scale=2.0)
    calls = block.part.calls
    with parts.pass_([], record=False):
        again = block.part(x.clone())  # equal arguments: replayed
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        assert block.part.calls == calls
        block.part(x, scale=3.0)  # a different argument: computed
        assert block.part.calls == calls + 1
    with parts.pass_([], record=False):
        block.part(x + 1)
        assert block.part.calls == calls + 2
    assert "forward" not in block.part.__dict__ and "forward" not in block.part.inner.__dict__
    assert parts.replayed_calls == 2  # the part's first call, and its linear's when the part ran at scale 3


@pytest.mark.parametrize("kind", ["llama", "gpt_neox", "falcon", "phi"])
def test_replayed_parts_give_the_weights_and_outputs_of_recomputed_ones(kind: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FinishedParts] = []

    class Recording(FinishedParts):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pipeline, "FinishedParts", Recording)
    ids = calib()
    replayed, recomputed = tiny_model(kind), tiny_model(kind)
    a = pipeline.quantize_model(replayed, ids, SPQR, batch_size=3, progress=False, reuse_outputs=True)
    assert sum(parts.replayed_calls for parts in made) > 0
    made.clear()
    b = pipeline.quantize_model(recomputed, ids, SPQR, batch_size=3, progress=False, reuse_outputs=False)
    assert sum(parts.replayed_calls for parts in made) == 0
    for (name, pa), pb in zip(replayed.named_parameters(), recomputed.parameters()):
        assert torch.equal(pa, pb), name
    assert [x.output_error for x in a.blocks] == [x.output_error for x in b.blocks]
    assert not any("forward" in m.__dict__ for m in replayed.modules())
