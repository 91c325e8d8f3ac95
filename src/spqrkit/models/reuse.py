"""Outputs of a block's finished parts, computed once and replayed in the block's later passes.

A block runs once per true-sequential stage and once more to recompute its outputs. Once every table linear inside
a part of the block is quantized (the part is "finished"), that part computes the same function in every later pass;
and since its inputs come from parts that finished before it, it usually receives the same inputs too. So a finished
part's output, recorded in the first pass that runs it, is replayed in the later passes whenever the call's
arguments are equal to the recorded ones (every tensor `torch.equal`, every other value the same object or equal):
attention after its q/k/v/o are quantized, gate/up after theirs, and so on. Nothing is assumed of the block's code:
a call whose arguments differ runs the part itself, and the replayed values are exactly what it would compute.

The parts are the block's direct children that hold table linears (e.g. self_attn, mlp) and the table linears
themselves; calls are matched by their order within a pass, which is the same in every pass (same batches, same
code). The records cost memory: each recorded call keeps a copy of its tensor arguments and of its output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from .forward_swap import ForwardSwap

_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device)


@dataclass
class _Record:
    leaves: list[Any]  # the call's flattened arguments (tensors copied)
    spec: Any  # their structure
    output: Any  # the part's output (tensors copied)


def _copy(value: Any) -> Any:
    return tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, _PLAIN) and isinstance(b, _PLAIN):
        return type(a) is type(b) and a == b
    return a is b


class FinishedParts:
    """Replays the outputs of a block's finished parts across its passes (see the module docstring).

    Use: `parts = FinishedParts(block, table_linears)`; for each pass, `with parts.pass_(pending, record=...):`
    where `pending` are the table linears not yet quantized (stubbed or still to be solved) and `record` says whether
    outputs computed in this pass may be replayed later (False for the block's last pass). `clear()` frees the
    records.
    """

    def __init__(self, block: nn.Module, table_linears: Iterable[nn.Linear]) -> None:
        linears = list({id(linear): linear for linear in table_linears}.values())
        linear_ids = {id(linear) for linear in linears}
        children = [child for child in block.children()
                    if any(id(m) in linear_ids for m in child.modules()) and id(child) not in linear_ids]
        self._parts: list[tuple[nn.Module, set[int]]] = [
            (child, {id(m) for m in child.modules() if id(m) in linear_ids}) for child in children
        ] + [(linear, {id(linear)}) for linear in linears]
        self._records: dict[int, list[_Record]] = {}
        self.replayed_calls = 0  # calls answered from a record, over all passes

    def pass_(self, pending: Sequence[nn.Linear], *, record: bool) -> _Pass:
        pending_ids = {id(linear) for linear in pending}
        finished = [part for part, inner in self._parts if not inner & pending_ids]
        return _Pass(self, finished, record)

    def clear(self) -> None:
        self._records.clear()


class _Pass(ForwardSwap):
    def __init__(self, owner: FinishedParts, parts: list[nn.Module], record: bool) -> None:
        super().__init__(parts)
        self.owner = owner
        self.record = record

    def wrap(self, part: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        records = self.owner._records.setdefault(id(part), [])
        recorded = len(records)  # records from earlier passes; this pass's calls are matched against them in order
        calls = 0

        def replaying(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            index, calls = calls, calls + 1
            leaves, spec = tree_flatten((args, kwargs))
            if index < recorded:
                rec = records[index]
                if rec.spec == spec and len(rec.leaves) == len(leaves) and all(map(_same, rec.leaves, leaves)):
                    self.owner.replayed_calls += 1
                    return _copy(rec.output)
            output = forward(*args, **kwargs)
            if self.record and index >= recorded:
                records.append(_Record([_copy(v) for v in leaves], spec, _copy(output)))
            return output

        return replaying
