"""Fused projections: the linears of one input-sharing set (q, k, v; gate, up) run as ONE layer at inference.

At decode every linear is a small matvec whose launch and ramp cost a fixed few microseconds (the SpQR kernels' x
gather and split-K set-up included), so three 4096x4096 projections cost more than one 12288x4096 matmul. Layers
that read the same input tensor can be concatenated along their output rows: `concat_linears` builds that layer
(an `SpQRLinear` through the format's exact row concatenation, or an `nn.Linear` with the weights stacked), and
`SharedOutput` runs it once per input and hands each original linear its slice.

The model keeps its module names and its forward code: each fused linear is replaced by a `LinearSlice` standing
where it stood. The first slice called with a new input tensor runs the fused layer and keeps the output; the
other slices called with the SAME tensor object (the model's forward passes one `hidden_states` to q, k and v)
return their rows of it, and once every slice has taken its rows the kept output is dropped (so a prefill does not
hold one output per layer). A slice called with another tensor, or twice with one, recomputes: a model that calls
its projections in any other way still gets correct outputs, only without the saving.

Which sets exist is the model family's data (`spqrkit.models.families`); `spqrkit.models.fusion.fuse_projections`
walks a model. A fused model is for inference: its state dict names the fused layers, not the checkpoint's;
`split_linear` (the exact inverse of `concat_linears`) lets `spqrkit.models.fusion.unfuse_projections` restore the
original layers, e.g. before saving.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..format.pack import concat_packed_rows, split_packed_rows
from .linear import SpQRLinear


class FusionError(ValueError):
    """Linears that cannot be concatenated into one layer (the reason says why)."""


def concat_linears(layers: list[nn.Module]) -> nn.Module:
    """One layer computing the row concatenation of `layers`' outputs: y = cat([l(x) for l in layers], -1).

    All `SpQRLinear` with one config, `in_features` and permutation (as the quantizer makes the linears of an
    input-sharing set: they share one Hessian and so one act-order permutation), or all `nn.Linear` with one
    `in_features`, dtype and device; biases all present or all absent. The layers' storage is copied, not shared:
    drop the originals to free it."""
    if len(layers) < 2:
        raise FusionError(f"need at least two linears to fuse, got {len(layers)}")
    kinds = {type(layer) for layer in layers}
    kind = kinds.pop() if len(kinds) == 1 else None
    # (exactly nn.Linear: its subclasses, e.g. bitsandbytes' 8-bit linears, hold weights a concatenation would break)
    if kind is None or not (kind is nn.Linear or issubclass(kind, SpQRLinear)):
        names = [type(m).__name__ for m in layers]
        raise FusionError(f"linears of one type (SpQRLinear or nn.Linear) only, got {names}")
    first = layers[0]
    if any(layer.in_features != first.in_features for layer in layers):
        raise FusionError(f"in_features differ: {[layer.in_features for layer in layers]}")
    has_bias = [layer.bias is not None for layer in layers]
    if any(has_bias) and not all(has_bias):
        raise FusionError(f"some linears have a bias and some not: {has_bias}")
    outs = [layer.out_features for layer in layers]
    if isinstance(first, SpQRLinear):
        if any(layer.config != first.config for layer in layers):
            raise FusionError("quantization configs differ")
        try:
            tensors = concat_packed_rows([layer.packed_tensors() for layer in layers], outs, first.in_features,
                                         first.config, where="fused linears")
        except ValueError as e:  # FormatError: e.g. permutations that differ
            raise FusionError(str(e)) from e
        fused = SpQRLinear(first.in_features, sum(outs), first.config, tensors["outlier_values"].shape[0],
                           bias=False, device="meta")
        fused.load_packed(tensors)
    else:
        weights = [layer.weight for layer in layers]
        if len({(w.dtype, w.device) for w in weights}) != 1:
            raise FusionError(f"weights of different dtypes or devices: {[(w.dtype, w.device) for w in weights]}")
        fused = nn.Linear(first.in_features, sum(outs), bias=False, device="meta")
        fused.weight = nn.Parameter(torch.cat([w.detach() for w in weights]), requires_grad=False)
    if all(has_bias):
        fused.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]), requires_grad=False)
    return fused


def split_linear(layer: nn.Module, out_features: list[int]) -> list[nn.Module]:
    """The inverse of `concat_linears`: layers of `out_features[i]` consecutive rows of `layer` each, in order (an
    SpQRLinear by the format's exact row split, `split_packed_rows`; an nn.Linear by its weight's rows), each with
    its rows of the bias. Copies: the parts share no storage with `layer`."""
    if sum(out_features) != layer.out_features:
        raise FusionError(f"row counts {out_features} do not add up to the layer's {layer.out_features}")
    if isinstance(layer, SpQRLinear):
        packed = split_packed_rows(layer.packed_tensors(), out_features, layer.in_features, layer.config,
                                   where="fused linear")
        parts = []
        for tensors, out in zip(packed, out_features):
            part = SpQRLinear(layer.in_features, out, layer.config, tensors["outlier_values"].shape[0], bias=False,
                              device="meta")
            part.load_packed(tensors)
            parts.append(part)
    elif type(layer) is nn.Linear:
        parts = []
        for w in layer.weight.detach().split(out_features):
            part = nn.Linear(layer.in_features, w.shape[0], bias=False, device="meta")
            part.weight = nn.Parameter(w.clone(), requires_grad=False)
            parts.append(part)
    else:
        raise FusionError(f"an SpQRLinear or nn.Linear to split, got {type(layer).__name__}")
    if layer.bias is not None:
        for part, b in zip(parts, layer.bias.detach().split(out_features)):
            part.bias = nn.Parameter(b.clone(), requires_grad=False)
    return parts


class SharedOutput:
    """A fused layer and the row ranges of the linears it replaced; computes once per input, serves each slice.

    Not an nn.Module (the fused layer is registered once, by `spqrkit.models.fusion.fuse_projections`, on the
    module that holds the set); the slices reach it through this object. The kept output is trusted for the same
    tensor object only: a forward that changed x in place between two slices' calls would get stale rows (the
    attention and MLP forwards of transformers read their input unchanged)."""

    def __init__(self, layer: nn.Module, out_features: list[int]) -> None:
        self.layer = layer
        bounds = list(itertools.accumulate(out_features, initial=0))
        self.ranges = list(itertools.pairwise(bounds))
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._waiting: list[bool] = []

    def rows(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Output rows of linear `index` for input x (a view of the fused output)."""
        if self._x is not x or not self._waiting[index]:
            self._x, self._y = x, self.layer(x)
            self._waiting = [True] * len(self.ranges)
        y = self._y
        self._waiting[index] = False
        if not any(self._waiting):
            self._x = self._y = None
        start, stop = self.ranges[index]
        return y[..., start:stop]

    def clear(self) -> None:
        """Drop a kept output (a slice left uncalled keeps it until the next input)."""
        self._x = self._y = None
        self._waiting = []


class LinearSlice(nn.Module):
    """Stands where one fused linear stood: its rows of a `SharedOutput`."""

    def __init__(self, shared: SharedOutput, index: int, in_features: int) -> None:
        super().__init__()
        self.shared = shared  # (a plain attribute: the fused layer is registered on the module holding the set)
        self.index = index
        self.in_features = in_features
        start, stop = shared.ranges[index]
        self.out_features = stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.rows(x, self.index)

    def extra_repr(self) -> str:
        start, stop = self.shared.ranges[self.index]
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rows={start}:{stop} of the fused layer")

