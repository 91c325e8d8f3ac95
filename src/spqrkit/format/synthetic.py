"""Random but well-formed packed layers, for kernel tests and for benchmarks of shapes no offline model has.

`random_quantized_weight` draws a `QuantizedWeight` whose every field is valid for its config: uniform base codes,
positive scales, zeros inside the code range, second-level statistics that decode to such values, a random column
permutation and CSR outliers. The outlier share is `outlier_share` on average, with the per-row counts uneven the way
real layers are (a few rows carry many, many carry none); `dense_rows` / `empty_rows` force extreme rows.
`random_packed_layer` packs it (docs/format.md).
"""

from __future__ import annotations

import torch

from ..config import QuantConfig
from ..quant.representation import QuantizedWeight, csr_from_mask
from .pack import pack_layer
from .spec import check_layer_shape, n_groups


def random_quantized_weight(
    out_features: int,
    in_features: int,
    config: QuantConfig,
    *,
    outlier_share: float = 0.01,
    dense_rows: int = 0,
    empty_rows: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    perm: torch.Tensor | None = None,
) -> QuantizedWeight:
    """A random valid representation of an [out, in] layer. `dense_rows` rows (the first ones) get outliers in a
    quarter of their columns, the next `empty_rows` rows none; the others ~`outlier_share` on average, drawn with
    a per-row rate that varies 0x..2x between rows. `perm`: the input permutation (default: a random one), e.g. one
    shared by the layers of an input-sharing set, as the quantizer makes them."""
    check_layer_shape(out_features, in_features, config)
    gen = torch.Generator(device=device).manual_seed(seed)
    dev = torch.device(device)
    ng = n_groups(in_features, config)
    maxq = (1 << config.wbits) - 1

    def uniform(*shape):
        return torch.rand(*shape, generator=gen, device=dev)

    codes = torch.randint(0, maxq + 1, (out_features, in_features), generator=gen, device=dev, dtype=torch.uint8)
    # First-level statistics: scales ~ 1e-2 (weights of a few 1e-2), zeros around the middle of the code range.
    scale = 0.004 + 0.02 * uniform(out_features, ng)
    zero = maxq / 2 + (uniform(out_features, ng) - 0.5) * maxq / 2
    stats = {}
    for name, bits, values in (("scale", config.scale_bits, scale), ("zero", config.zero_bits, zero)):
        if bits is None:
            stats[name] = (values.half(), None, None)
            continue
        beta2 = config.beta2
        qmax2 = (1 << bits) - 1
        stat_codes = torch.randint(0, qmax2 + 1, (out_features, ng), generator=gen, device=dev, dtype=torch.uint8)
        lo = values.reshape(out_features // beta2, beta2, ng).amin(1)
        hi = values.reshape(out_features // beta2, beta2, ng).amax(1)
        s2 = ((hi - lo) / qmax2).clamp_min(1e-4)
        z2 = -lo / s2  # code 0 decodes to about the group's smallest value
        second = torch.stack([s2, z2], dim=-1).half()  # [out / beta2, ng, 2]
        stats[name] = (None, stat_codes, second)

    rate = torch.full((out_features, 1), float(outlier_share), device=dev) * 2 * uniform(out_features, 1)
    rate[:dense_rows] = 0.25
    rate[dense_rows:dense_rows + empty_rows] = 0.0
    mask = uniform(out_features, in_features) < rate
    row_ptr, cols = csr_from_mask(mask)
    values = (torch.randn(cols.numel(), generator=gen, device=dev) * 0.1).half()

    return QuantizedWeight.from_statistics(
        config, (out_features, in_features),
        torch.randperm(in_features, generator=gen, device=dev) if perm is None else perm.to(dev), codes,
        stats["scale"], stats["zero"], row_ptr, cols, values,
    )


def random_packed_layer(out_features: int, in_features: int, config: QuantConfig, **kwargs) -> dict[str, torch.Tensor]:
    """The stored tensors of `random_quantized_weight(...)` (same keyword arguments)."""
    return pack_layer(random_quantized_weight(out_features, in_features, config, **kwargs))
