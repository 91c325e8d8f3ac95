"""`SpQRLinear`: a linear layer that holds its weight in the compressed checkpoint format.

The packed tensors are buffers named as in the checkpoint (`codes`, `scale_codes`, ..., `perm`), so a state dict
loads straight into them, and `bias` is an ordinary parameter in the model dtype. `forward` goes through one hook,
`_matmul`, which runs the implementation the kernel selector (`spqrkit.kernels.select`) picks for this layout,
input and device: a Triton kernel on CUDA (called directly in eager code, through the torch custom ops of
`spqrkit.kernels.ops` when traced), else the plain-torch reference (dequantize to fp32, cast to the activation dtype,
F.linear), which is also the oracle the kernels are tested against. No path caches a dequantized weight; the fused
kernels take one derived tensor, the outliers' base weights (4 bytes per outlier, `outlier_bases`), computed once
per layer and device and recomputed when a packed buffer changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantConfig
from ..format.pack import (
    check_layer_tensors,
    dequantize_packed,
    pack_layer,
    unpack_layer,
)
from ..format.packed_layer import PackedLayer
from ..format.spec import layer_tensor_specs
from ..kernels import select
from ..quant.representation import QuantizedWeight
from . import eager_graphs

Matmul = Callable[["SpQRLinear", torch.Tensor], torch.Tensor]


class SpQRLinear(nn.Module):
    """y = x W^T + b with W stored as SpQR codes, statistics, CSR outliers and a permutation (docs/format.md)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: QuantConfig,
        n_outliers: int,
        bias: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Buffers of the right dtypes and shapes, uninitialised (on `device`; "meta" for a skeleton to load into).
        `dtype` is the bias dtype (default: torch's default dtype)."""
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        for name, spec in layer_tensor_specs(out_features, in_features, config, n_outliers).items():
            self.register_buffer(name, torch.empty(spec.shape, dtype=spec.dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._bases: tuple[tuple, torch.Tensor] | None = None  # (key, tensor): see outlier_bases
        self._graphs: dict = {}  # eager calls' CUDA graphs (spqrkit.modules.eager_graphs)
        self._choices: dict = {}  # (rows, dtype, device type, SPQRKIT_MATMUL) -> choose_kernel's pick (select_matmul)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> SpQRLinear:
        """A layer holding `qw` packed (on qw's device); `bias` [out] is kept as given (its dtype included)."""
        out, n_in = qw.shape
        layer = cls(n_in, out, qw.config, qw.n_outliers, bias is not None, device="meta")
        layer.load_packed(pack_layer(qw))
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return layer

    # ------------------------------------------------------------------ the packed form
    @property
    def n_outliers(self) -> int:
        return self.outlier_values.shape[0]

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name suffix (the buffers themselves, not copies)."""
        return {name: buf for name, buf in self._buffers.items() if buf is not None}

    def load_packed(self, tensors: dict[str, torch.Tensor]) -> None:
        """Adopt stored tensors (no copy) after checking them against the specification."""
        check_layer_tensors(tensors, self.out_features, self.in_features, self.config, where=type(self).__name__)
        for name, t in tensors.items():
            self._buffers[name] = t
        self._bases = None

    def check(self, where: str) -> None:
        """Dtypes, shapes and index contents of the buffers (see `check_layer_tensors`)."""
        check_layer_tensors(self.packed_tensors(), self.out_features, self.in_features, self.config, where=where)

    def quantized_weight(self) -> QuantizedWeight:
        return unpack_layer(self.packed_tensors(), (self.out_features, self.in_features), self.config)

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in], the reference dequantization."""
        return dequantize_packed(self.packed_tensors(), (self.out_features, self.in_features), self.config)

    def packed_layer(self, bases: torch.Tensor | None = None) -> PackedLayer:
        """The buffers as the kernels take them (no copies), carrying `bases` (see `outlier_bases`)."""
        return PackedLayer.from_tensors(self._buffers, self.out_features, self.in_features, self.config, bases)

    def outlier_bases(self, key: tuple | None = None) -> torch.Tensor:
        """fp32 [nnz]: the base weight at each outlier (`kernels.dequantize.outlier_bases`), for the fused kernels'
        outlier steps. Computed on first use and kept, keyed by the buffers' identities and in-place versions (so a
        moved, reloaded or copied-into buffer recomputes it); under torch.compile the kept tensor is used as it is,
        or computed inside the graph when there is none. `key`: `tensors_key(self.packed_layer().stored_tensors())`,
        when the caller has it already (an eager call)."""
        from ..kernels import ops

        p = None
        if key is None:
            p = self.packed_layer()
            if torch.compiler.is_compiling():
                if self._bases is not None:
                    return self._bases[1]
                return ops.outlier_bases(p)
            key = tensors_key(p.stored_tensors())
        if self._bases is None or self._bases[0] != key:  # (gathered once: the caller's key, or ours above)
            self._bases = (key, ops.outlier_bases(self.packed_layer() if p is None else p))
        return self._bases[1]

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The hook the kernels use: the implementation `select_matmul` picks for this layer and input."""
        return select_matmul(self, x)(self, x)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() would cast the fp16 statistics and outlier values like weights (and to bf16,
        # lossily): the packed buffers follow the device only, and keep their storage dtypes.
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        self._bases = None
        for name, old in before.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self

    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        state["_graphs"] = {}  # (CUDA graphs neither copy nor pickle; a copy captures its own)
        return state

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"wbits={c.wbits}, beta1={c.beta1}, beta2={c.beta2}, outliers={self.n_outliers}")


def tensors_key(tensors) -> tuple:
    """Identity, address and in-place version of each tensor (None skipped): a key that changes when a buffer is
    replaced, moved (a new tensor at a new address: device addresses are unique across devices) or written in place
    (inference tensors keep no version: theirs counts as 0)."""
    return tuple((id(t), t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors if t is not None)


def dequantize_layers(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Replace every SpQRLinear in `model` by an ordinary nn.Linear holding its reference-dequantized weight, in
    place; returns how many were replaced. For devices without fused kernels (the CPU), where dequantizing on every
    forward dominates the time: the model then needs the memory of an unquantized one. `dtype`: the weights' dtype
    (default: each layer's bias dtype, else torch's default). The outputs equal the reference path's."""
    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, SpQRLinear):
                continue
            w_dtype = dtype or (child.bias.dtype if child.bias is not None else torch.get_default_dtype())
            dense = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                              device=child.codes.device, dtype=w_dtype)
            with torch.no_grad():
                dense.weight.copy_(child.dequantize().to(w_dtype))
                if child.bias is not None:
                    dense.bias.copy_(child.bias.to(w_dtype))
            dense.requires_grad_(False)
            setattr(module, child_name, dense)
            replaced += 1
    return replaced


def reference_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """Dequantize the whole weight (fp32), cast it to the activation dtype, then F.linear: the plain-torch
    reference every fast kernel is tested against."""
    weight = layer.dequantize().to(x.dtype)  # [out, in]
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, weight, bias)


def _fused(layer: SpQRLinear, x: torch.Tensor, kernel: str) -> torch.Tensor:
    from ..kernels import ops  # (also registers torch.ops.spqrkit.*)

    takes_bases = kernel in ("gemv_seg", "gemv_pairs", "dot", "dot_pairs")
    p = layer.packed_layer()
    if not ops.eager(x):  # traced (torch.compile, export, fake tensors): the custom op
        return ops.fused_matmul(x, p.with_bases(layer.outlier_bases()) if takes_bases else p, layer.bias, kernel)
    graphs = eager_graphs.wanted(x)
    key = tensors_key(p.stored_tensors()) if graphs else None  # (once: the bases' key and the graphs')
    if takes_bases:
        p.bases = layer.outlier_bases(key)  # (p is this call's own: set in place, no second structure)

    def run(x):  # the op's implementation directly: no custom-op dispatch on the host
        return ops.fused_matmul_impl(x, p, layer.bias, kernel)

    if graphs:  # small inputs: replayed from a CUDA graph of the call (eager_graphs)
        buffers = key + tensors_key((p.perm, layer.bias, p.bases))
        return eager_graphs.call(layer._graphs, kernel, buffers, x, run)
    return run(x)


def gemv_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """Fused decode kernel: one pass over the packed weight, CUDA cores (few rows of x)."""
    return _fused(layer, x, "gemv")


def gemv_seg_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """The gemv reading x gathered once, pre-scaled per code position, statistics applied per segment."""
    return _fused(layer, x, "gemv_seg")


def gemv_pairs_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """Batch-1 decode in packed fp16 pairs (two weights per instruction), fp16 / bf16 x, one row per launch."""
    return _fused(layer, x, "gemv_pairs")


def gemv_xc_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """The decode kernel after one small kernel gathers x (fp32) into tiles of its chunks, code-major."""
    return _fused(layer, x, "gemv_xc")


def dot_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """Fused kernel that dequantizes weight tiles in registers into tensor-core products (small batches)."""
    return _fused(layer, x, "dot")


def dot_pairs_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """dot with its weight operand decoded in packed fp16 pairs (fp16 x)."""
    return _fused(layer, x, "dot_pairs")


def dequantize_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """Large batches: the weight dequantized once to x's dtype by a kernel (columns in chunk-major order), then
    cuBLAS on x's columns gathered in the same order."""
    from ..kernels import dequantize as dq
    from ..kernels import ops

    eager = ops.eager(x)  # (the ops' implementations directly when nothing traces, as in `_fused`)
    dequantize = dq.dequantize_chunked if eager else ops.dequantize_chunked
    gather = ops.gather_x_chunked_impl if eager else ops.gather_x_chunked
    w = dequantize(layer.packed_layer(), x.dtype)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(gather(x, layer.perm), w, bias)


MATMULS: dict[str, Matmul] = {
    "reference": reference_matmul, "gemv": gemv_matmul, "gemv_xc": gemv_xc_matmul, "gemv_seg": gemv_seg_matmul,
    "gemv_pairs": gemv_pairs_matmul, "dot": dot_matmul, "dot_pairs": dot_pairs_matmul,
    "dequantize": dequantize_matmul,
}


def choose_kernel(layer: SpQRLinear, x: torch.Tensor) -> str:
    """The name (a key of MATMULS) of the implementation for this layer and input: the kernel selector's
    (`spqrkit.kernels.select`: its table, SPQRKIT_MATMUL forcing, the reference as the fallback)."""
    return select.choose_kernel(x, layer.in_features, layer.config.wbits, layer.config.beta1 or 0)


def select_matmul(layer: SpQRLinear, x: torch.Tensor) -> Matmul:
    """The matmul for this layer's layout and this input (see `choose_kernel`). The pick depends on the layer's
    layout (fixed), x's rows, dtype and device type and SPQRKIT_MATMUL only, so eager calls keep it per layer under
    those (`layer._choices`, at most 64: prefill row counts vary): an eager decode step asks at every linear, and
    choose_kernel's checks cost the host microseconds a call. Traced calls
    (torch.compile) ask each time: no dict side effects in traced code, and a compiled graph asks once anyway."""
    if torch.compiler.is_compiling():
        return MATMULS[choose_kernel(layer, x)]
    key = (x.numel() // max(x.shape[-1], 1), x.dtype, x.device.type, select.forced())
    kernel = layer._choices.get(key)
    if kernel is None:
        if len(layer._choices) >= 64:
            layer._choices.clear()
        kernel = layer._choices[key] = choose_kernel(layer, x)
    return MATMULS[kernel]
