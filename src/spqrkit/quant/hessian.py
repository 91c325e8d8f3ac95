"""Hessian of the layer-wise reconstruction objective: H = (2/N) * sum over calibration inputs of x x^T."""

from __future__ import annotations

import itertools

import torch


class HessianAccumulator:
    """Running mean of 2 x x^T over the rows of every batch it is fed (fp32, on the device of the first batch).

    A running mean (rather than a sum) keeps the magnitude independent of the token count, as in GPTQ.
    """

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self.device = device
        self.H: torch.Tensor | None = None  # [in, in]
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """x: [..., in] inputs of the layer (any float dtype)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.in_features)
        n = x.shape[0]
        if n == 0:
            return
        if self.H is None:
            device = self.device if self.device is not None else x.device
            self.H = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=device)
        x = x.to(device=self.H.device)
        if not torch.isfinite(x).all():
            raise ValueError("calibration activations contain NaN or Inf")
        total = self.count + n
        self.H.mul_(self.count / total).add_(gram_fp32(x), alpha=2.0 / total)
        self.count = total

    def finalize(self) -> torch.Tensor:
        if self.H is None:
            raise ValueError("no calibration inputs reached this layer")
        return self.H


def gram_fp32(x: torch.Tensor) -> torch.Tensor:
    """x^T x in fp32, [in, in], for x [n, in].

    Half-precision inputs on CUDA go through the tensor cores with fp32 accumulation: a product of two fp16 (or bf16)
    numbers is exact in fp32, so this is the fp32 Gram matrix up to summation order, several times faster.
    """
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(x.t(), x, out_dtype=torch.float32)
    x = x.float()
    if x.is_cuda or x.shape[1] < SYMMETRIC_GRAM_MIN_FEATURES:
        return x.t() @ x
    return _symmetric_gram(x)


# From this many features on, the CPU Gram product multiplies only the column blocks on and above the diagonal.
SYMMETRIC_GRAM_MIN_FEATURES = 1024
_GRAM_BLOCKS = 4


def _symmetric_gram(x: torch.Tensor) -> torch.Tensor:
    """x^T x for fp32 x [n, in] from the blocks on and above the diagonal of a 4 x 4 block grid, the others being
    their transposes: 10 of the 16 block products (a BLAS matmul does not exploit the symmetry)."""
    n_features = x.shape[1]
    G = torch.empty(n_features, n_features, dtype=x.dtype, device=x.device)  # [in, in]
    bounds = [n_features * k // _GRAM_BLOCKS for k in range(_GRAM_BLOCKS + 1)]
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        G[a:b, a:] = x[:, a:b].t() @ x[:, a:]  # [in / 4, in - a]
        for j in range(i + 1, _GRAM_BLOCKS):
            c, d = bounds[j], bounds[j + 1]
            G[c:d, a:b] = G[a:b, c:d].t()
    return G
