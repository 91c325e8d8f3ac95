"""The calibration inputs of a decoder block: capture them at the first block, replay them through any block.

Capture runs the model's decoder body with its block list cut to the first block; a forward pre-hook on that block
records, per calibration batch, the hidden states and every other argument the block receives (attention mask,
position ids, rotary embeddings, ...), exactly as the model built them. Nothing past the first block runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .families import decoder_body


class PipelineError(ValueError):
    """A model or calibration set the pipeline cannot quantize as asked."""


@dataclass(eq=False)
class BlockCall:
    """How the decoder body called the first block for one batch, without the hidden states."""

    args: tuple[Any, ...]  # positional arguments after the hidden states
    kwargs: dict[str, Any]  # every keyword argument: attention_mask, position_embeddings, use_cache=False, ...
    hidden_key: str | None  # the keyword that carried the hidden states; None when passed positionally


@dataclass
class BlockInputs:
    """Calibration inputs of one block: per batch, the hidden states and the rest of the call."""

    hidden: list[torch.Tensor]  # per batch [batch, seqlen, hidden] on store_device
    calls: list[BlockCall]  # per batch; equal calls are one shared object, kept on the compute device
    store_device: torch.device

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def call_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """The block's output hidden states for one batch (blocks return a tensor or a tuple that starts with it)."""
    if call.hidden_key is None:
        out = block(hidden, *call.args, **call.kwargs)
    else:
        out = block(*call.args, **{**call.kwargs, call.hidden_key: hidden})
    return out if isinstance(out, torch.Tensor) else out[0]


def run_block(block: nn.Module, inputs: BlockInputs, device: torch.device | str) -> list[torch.Tensor]:
    """Outputs of `block` (already on `device`) for every batch, stored like the inputs."""
    return [
        call_block(block, hidden.to(device), call).to(inputs.store_device)
        for hidden, call in zip(inputs.hidden, inputs.calls)
    ]


def capture_block_inputs(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1,
    offload_activations: bool = False,
) -> BlockInputs:
    """Inputs of the first decoder block for token windows calib_ids [n, seqlen], batch by batch.

    Runs only the modules before the first block, the first block and the final norm: the block list is cut to
    its first block for the duration (restored in a `finally`), and the decoder body runs instead of the causal LM,
    so the LM head never runs.
    """
    device = resolve_device(model, device)
    store_device = torch.device("cpu") if offload_activations else device
    body, attr = decoder_body(model)
    blocks = getattr(body, attr)
    records: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        records.append((args, dict(kwargs)))

    hidden: list[torch.Tensor] = []
    calls: list[BlockCall] = []
    distinct_calls: list[BlockCall] = []
    setattr(body, attr, nn.ModuleList([blocks[0]]))
    devices = tensor_devices(body)
    handle = blocks[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        body.to(device)
        with torch.no_grad():
            for batch in calib_ids.split(batch_size):
                records.clear()
                body(input_ids=batch.to(device), use_cache=False)
                if len(records) != 1:
                    raise PipelineError(f"the first decoder block ran {len(records)} times for one batch")
                h, call = _split_call(*records[0])
                # Batches of one shape usually get equal arguments: keep one copy.
                seen = next((seen for seen in distinct_calls if _same(seen, call)), None)
                if seen is None:
                    distinct_calls.append(call)
                calls.append(call if seen is None else seen)
                hidden.append(h.to(store_device, copy=True))
    finally:
        handle.remove()
        try:
            restore_devices(body, devices)
        finally:
            setattr(body, attr, blocks)
    return BlockInputs(hidden=hidden, calls=calls, store_device=store_device)


def _split_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, BlockCall]:
    if args:
        hidden, call = args[0], BlockCall(args=tuple(args[1:]), kwargs=kwargs, hidden_key=None)
    elif "hidden_states" in kwargs:
        hidden = kwargs.pop("hidden_states")
        call = BlockCall(args=(), kwargs=kwargs, hidden_key="hidden_states")
    else:
        raise PipelineError(f"cannot find the hidden states among the first block's arguments {sorted(kwargs)}")
    if not isinstance(hidden, torch.Tensor):
        raise PipelineError(f"the first block's hidden states are a {type(hidden).__name__}, not a tensor")
    return hidden, call


def _same(a: Any, b: Any) -> bool:
    """Structural equality of recorded block arguments (tensors compared by value)."""
    if isinstance(a, BlockCall) and isinstance(b, BlockCall):
        return a.hidden_key == b.hidden_key and _same(a.args, b.args) and _same(a.kwargs, b.kwargs)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)) and type(a) is type(b):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (bool, int, float, str, type(None))):
        return type(a) is type(b) and a == b
    return a is b


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def tensor_devices(module: nn.Module) -> dict[str, torch.device]:
    named = itertools.chain(module.named_parameters(), module.named_buffers())
    return {name: tensor.device for name, tensor in named}


def restore_devices(module: nn.Module, devices: dict[str, torch.device]) -> None:
    """Move every parameter and buffer back to the device recorded by `tensor_devices`."""
    if len(set(devices.values())) == 1:
        module.to(next(iter(devices.values())))
        return
    for name, device in devices.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if attr in owner._parameters:
            owner._parameters[attr].data = owner._parameters[attr].data.to(device)
        else:
            owner._buffers[attr] = owner._buffers[attr].to(device)
