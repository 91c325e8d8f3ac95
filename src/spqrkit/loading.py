"""`spqrkit.load(DIR)`: a compressed checkpoint as a runnable model, without full-precision quantized weights.

The model is built on the meta device, each quantized linear is swapped for an `SpQRLinear` of the shapes the
manifest records, and the verified safetensors tensors are loaded with `assign=True`, so the only memory ever
allocated is for the stored tensors themselves (plus the small buffers the constructors compute, such as rotary
frequencies, which are not in the checkpoint and are rebuilt as transformers' from_pretrained rebuilds them).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Mapping

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .config import QuantConfig
from .format.checkpoint import LayerEntry, load_tensors, verify_checkpoint
from .format.spec import FormatError, dtype_from_name
from .modules.linear import SpQRLinear


def replace_with_spqr_linears(
    model: nn.Module, layers: Mapping[str, LayerEntry], config: QuantConfig, *, device: torch.device | str = "meta"
) -> None:
    """Swap the nn.Linear modules named in `layers` for uninitialised SpQRLinear modules of the recorded shapes."""
    for name, layer in layers.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise FormatError(f"quantized layer {name} of the checkpoint is not a module of this model") from None
        if not isinstance(linear, nn.Linear):
            raise FormatError(f"quantized layer {name} is a {type(linear).__name__} in this model, not an nn.Linear")
        if (linear.out_features, linear.in_features) != (layer.out_features, layer.in_features):
            raise FormatError(
                f"quantized layer {name} is [{layer.out_features}, {layer.in_features}] in the checkpoint but "
                f"[{linear.out_features}, {linear.in_features}] in the model its config.json builds"
            )
        if (linear.bias is not None) != layer.bias:
            raise FormatError(f"quantized layer {name}: the checkpoint {'has' if layer.bias else 'has no'} bias, "
                              "the model's linear disagrees")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bias_dtype = linear.bias.dtype if linear.bias is not None else None
        setattr(parent, attr, SpQRLinear(layer.in_features, layer.out_features, config, layer.n_outliers,
                                         bias=layer.bias, device=device, dtype=bias_dtype))


def check_loaded(model: nn.Module) -> None:
    """Every SpQRLinear holds real tensors of the right dtypes, shapes and index contents."""
    for name, module in model.named_modules():
        if isinstance(module, SpQRLinear):
            unloaded = [k for k, t in module.packed_tensors().items() if t.device.type == "meta"]
            if unloaded:
                raise FormatError(f"{name}: tensors {unloaded} were not loaded from the checkpoint")
            module.check(name)


def load(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> PreTrainedModel:
    """The causal LM of a compressed spqrkit checkpoint folder, in eval mode on `device`.

    dtype: dtype of the floating-point tensors that are not quantized (embeddings, norms, head, biases); None keeps
        them as stored. The packed tensors always keep their stored dtypes; SpQRLinear computes in the activation
        dtype. verify: check SHA-256 checksums (headers, shapes and the format version are always checked).
    """
    info = verify_checkpoint(path, checksums=verify)
    stored = Counter(dtype_from_name(info.tensors[key].dtype) for key in info.dense_keys)
    stored_floats = [d for d, _ in stored.most_common() if d.is_floating_point]
    dense_dtype = dtype or (stored_floats[0] if stored_floats else torch.get_default_dtype())

    hf_config = AutoConfig.from_pretrained(info.folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dense_dtype)
    replace_with_spqr_linears(model, info.layers, info.config, device="meta")

    state = load_tensors(info, device)
    if dtype is not None:
        for key in info.dense_keys:
            if state[key].is_floating_point():
                state[key] = state[key].to(dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise FormatError(f"{info.folder}: tensors {sorted(result.unexpected_keys)} are not part of the model "
                          "that config.json builds")
    model.tie_weights()
    still_meta = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    still_meta += [name for name, b in _persistent_buffers(model) if b.device.type == "meta"]
    if still_meta:
        raise FormatError(f"{info.folder}: the checkpoint lacks tensors {still_meta}")
    _rebuild_non_persistent_buffers(model, device)
    check_loaded(model)
    model.eval()
    return model


def _persistent_buffers(model: nn.Module):
    for module_name, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                yield f"{module_name}.{name}".lstrip("."), buf


def _rebuild_non_persistent_buffers(model: PreTrainedModel, device: torch.device | str) -> None:
    """Buffers the constructors compute (rotary frequencies, ...) are not in the checkpoint and were built on the
    meta device. transformers 5 rebuilds them the same way from_pretrained does: every loaded tensor is marked
    initialised, then `initialize_weights` re-runs the model's own init, which only touches unmarked tensors."""
    rebuilt = []
    for module_name, module in model.named_modules():
        for name in list(module._non_persistent_buffers_set):
            buf = module._buffers.get(name)
            if buf is not None and buf.device.type == "meta":
                fill = float("nan") if buf.is_floating_point() else 0
                module._buffers[name] = torch.full_like(buf, fill, device=device)
                rebuilt.append((f"{module_name}.{name}".lstrip("."), module._buffers[name]))
    if not rebuilt:
        return
    for t in (*model.parameters(), *_persistent_tensors(model)):
        t._is_hf_initialized = True
    model.initialize_weights()
    unset = [name for name, buf in rebuilt if buf.is_floating_point() and torch.isnan(buf).any()]
    if unset:
        raise RuntimeError(f"this transformers version does not rebuild the buffers {unset} of "
                          f"{type(model).__name__}; load the checkpoint with AutoModelForCausalLM.from_pretrained")


def _persistent_tensors(model: nn.Module):
    return (buf for _, buf in _persistent_buffers(model))
