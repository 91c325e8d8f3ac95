"""`SpQRLinear`: a linear layer that holds its weight in the compressed checkpoint format.

The packed tensors are buffers named as in the checkpoint (`codes`, `scale_codes`, ..., `perm`), so a state dict
loads straight into them, and `bias` is an ordinary parameter in the model dtype. `forward` goes through one hook,
`_matmul`, which asks `select_matmul` for the implementation of this layout on this device; today that is always
the plain-torch reference (dequantize to fp32, cast to the activation dtype, F.linear) and the fast kernels plug in
there, each tested against it. The weight is dequantized on every call and never cached.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantConfig
from ..format.pack import check_layer_tensors, dequantize_packed, pack_layer, unpack_layer
from ..format.spec import layer_tensor_specs
from ..quant.representation import QuantizedWeight

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

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> "SpQRLinear":
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

    def check(self, where: str) -> None:
        """Dtypes, shapes and index contents of the buffers (see `check_layer_tensors`)."""
        check_layer_tensors(self.packed_tensors(), self.out_features, self.in_features, self.config, where=where)

    def quantized_weight(self) -> QuantizedWeight:
        return unpack_layer(self.packed_tensors(), (self.out_features, self.in_features), self.config)

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in], the reference dequantization."""
        return dequantize_packed(self.packed_tensors(), (self.out_features, self.in_features), self.config)

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
        for name, old in before.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"wbits={c.wbits}, beta1={c.beta1}, beta2={c.beta2}, outliers={self.n_outliers}")


def reference_matmul(layer: SpQRLinear, x: torch.Tensor) -> torch.Tensor:
    """Dequantize the whole weight (fp32), cast it to the activation dtype, then F.linear: the plain-torch
    reference every fast kernel is tested against."""
    weight = layer.dequantize().to(x.dtype)  # [out, in]
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, weight, bias)


def select_matmul(layer: SpQRLinear, x: torch.Tensor) -> Matmul:
    """The matmul for this layer's layout on x's device. Only the reference exists so far."""
    return reference_matmul
