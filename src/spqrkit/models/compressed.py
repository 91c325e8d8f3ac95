"""A model and its compressed checkpoint folder: `spqrkit.save_checkpoint` and `spqrkit.load`.

Saving packs each quantized linear (a QuantizedWeight from the solver, or an SpQRLinear already) and hands the
packed and dense tensors to the format's writer (format/checkpoint.py). Loading builds the model on the meta device,
swaps each quantized linear for an `SpQRLinear` of the shapes the manifest records, and loads the verified
safetensors tensors with `assign=True`, so the only memory ever allocated is for the stored tensors themselves (plus
the small buffers the constructors compute, such as rotary frequencies, which are not in the checkpoint and are
rebuilt as transformers' from_pretrained rebuilds them). The transformers quantizer (hf_quantizer.py) uses the same
swap and checks.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from ..config import QuantConfig
from ..format.checkpoint import (
    DEFAULT_MAX_SHARD_BYTES,
    CheckpointInfo,
    LayerEntry,
    load_tensors,
    verify_checkpoint,
    write_checkpoint,
)
from ..format.pack import pack_layer
from ..format.spec import FormatError, dtype_from_name
from ..modules.fused import LinearSlice
from ..modules.linear import SpQRLinear
from ..quant.representation import QuantizedWeight


# ---------------------------------------------------------------------------------------------------- saving
def save_checkpoint(
    out: str | os.PathLike,
    model: nn.Module,
    quantized: Mapping[str, QuantizedWeight],
    config: QuantConfig,
    *,
    tokenizer=None,
    dense_dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    extra_files: Mapping[str, str] | None = None,
) -> CheckpointInfo:
    """Write `model` as a compressed checkpoint folder `out` (which must not exist; it appears only when complete).

    quantized: module name -> QuantizedWeight of the nn.Linear modules to store packed (their `weight` is not
        written; their bias is). Modules that already are SpQRLinear are stored from their buffers.
    dense_dtype: dtype of the floating-point tensors that are not quantized (embeddings, norms, head, biases);
        None keeps each as it is in the model.
    extra_files: more text files to write into the folder, by name.
    Tied parameters (e.g. an LM head tied to the embeddings) are written once, under the first name.
    """
    modules = dict(model.named_modules())
    fused = [name for name, module in modules.items() if isinstance(module, LinearSlice)]
    if fused:  # (its state dict names the fused layers, which no model of its architecture has)
        raise FormatError(f"the model holds fused projections ({fused[0]} and {len(fused) - 1} more are slices of a "
                          "fused layer): call spqrkit.unfuse_projections(model) before saving it")
    layers: dict[str, tuple[dict[str, torch.Tensor], LayerEntry]] = {}
    for name, qw in quantized.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise FormatError(f"{name}: no nn.Linear of that name in the model to store as quantized")
        if (module.out_features, module.in_features) != tuple(qw.shape):
            raise FormatError(f"{name}: the model's linear is {tuple(module.weight.shape)}, its QuantizedWeight "
                              f"{tuple(qw.shape)}")
        if qw.config != config:
            raise FormatError(f"{name}: quantized with a config different from the checkpoint's")
        packed = {k: v.detach().cpu() for k, v in pack_layer(qw).items()}
        layers[name] = (packed, LayerEntry(qw.out_features, qw.in_features, qw.n_outliers, module.bias is not None))
    for name, module in modules.items():
        if isinstance(module, SpQRLinear):
            if module.config != config:
                raise FormatError(f"{name}: an SpQRLinear with a config different from the checkpoint's")
            module.check(name)
            packed = {k: v.detach().cpu() for k, v in module.packed_tensors().items()}
            layers[name] = (packed, LayerEntry(module.out_features, module.in_features, module.n_outliers,
                                               module.bias is not None))

    generation_config = getattr(model, "generation_config", None)
    if not getattr(model, "can_generate", lambda: False)():
        generation_config = None
    return write_checkpoint(
        out, _tensors_to_write(model, layers, dense_dtype), {name: entry for name, (_, entry) in layers.items()},
        config, model.config, generation_config=generation_config, tokenizer=tokenizer,
        max_shard_bytes=max_shard_bytes, extra_files=extra_files,
    )


def _tensors_to_write(
    model: nn.Module, layers: Mapping[str, tuple[dict[str, torch.Tensor], LayerEntry]], dense_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """State-dict order, with each quantized linear's weight replaced by its packed tensors; tied duplicates dropped."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    written_layers: set[str] = set()
    for key, value in model.state_dict(keep_vars=False).items():
        module_name, _, suffix = key.rpartition(".")
        if module_name in layers:
            if module_name not in written_layers:
                packed, _ = layers[module_name]
                tensors.update({f"{module_name}.{s}": t.contiguous() for s, t in packed.items()})
                written_layers.add(module_name)
            if suffix != "bias":
                continue  # the weight (or a packed buffer, written above)
        identity = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if value.numel() and identity in seen:
            continue  # tied to an earlier tensor (e.g. lm_head.weight to embed_tokens.weight)
        seen[identity] = key
        value = value.detach().to("cpu")
        if dense_dtype is not None and value.is_floating_point():
            value = value.to(dense_dtype)
        tensors[key] = value.contiguous()
    missing = set(layers) - written_layers
    if missing:
        raise FormatError(f"quantized layers {sorted(missing)} are not in the model's state dict")
    return tensors


# ---------------------------------------------------------------------------------------------------- loading


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
