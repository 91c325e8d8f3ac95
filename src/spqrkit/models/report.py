"""What `quantize_model` reports: per linear, per block and for the whole model, JSON-ready."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import QuantConfig
from ..quant.representation import QuantizedWeight


@dataclass
class LayerReport:
    name: str  # full module name, e.g. "model.layers.3.self_attn.q_proj"
    shape: tuple[int, int]  # (out, in)
    n_outliers: int
    outlier_share: float
    paper_bits: float  # total bits by the paper's Eq. 4
    real_bits: int  # total bits including CSR row pointers, permutation and padding
    layer_error: float  # tr(dW H dW^T) / tr(W H W^T); plain relative Frobenius error for RTN (no Hessian)
    seconds: float  # this layer's share (by parameter count) of its input-sharing set's solve

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def avg_paper_bits(self) -> float:
        return self.paper_bits / self.numel

    @property
    def avg_real_bits(self) -> float:
        return self.real_bits / self.numel


@dataclass
class BlockReport:
    index: int
    seconds: float
    output_error: float  # ||y_quantized - y_fp|| / ||y_fp|| over the leading calibration windows (error_windows)
    outlier_share: float


@dataclass
class QuantizationReport:
    config: QuantConfig
    model_type: str
    n_calib_tokens: int
    layers: list[LayerReport] = field(default_factory=list)
    blocks: list[BlockReport] = field(default_factory=list)
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict, repr=False)  # by module name, on CPU
    capture_seconds: float = 0.0  # running the model up to the first block
    hessian_seconds: float = 0.0  # block passes that collect Hessians (and the full-precision reference outputs)
    solve_seconds: float = 0.0  # quantize_matrices, layer errors, writing weights back
    recompute_seconds: float = 0.0  # block outputs with quantized weights
    total_seconds: float = 0.0

    @property
    def n_params(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def n_outliers(self) -> int:
        return sum(layer.n_outliers for layer in self.layers)

    @property
    def outlier_share(self) -> float:
        return self.n_outliers / max(self.n_params, 1)

    @property
    def avg_paper_bits(self) -> float:
        return sum(layer.paper_bits for layer in self.layers) / max(self.n_params, 1)

    @property
    def avg_real_bits(self) -> float:
        return sum(layer.real_bits for layer in self.layers) / max(self.n_params, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the quantized weights)."""
        return {
            "config": self.config.to_dict(),
            "model_type": self.model_type,
            "n_calib_tokens": self.n_calib_tokens,
            "n_params": self.n_params,
            "n_outliers": self.n_outliers,
            "avg_paper_bits": self.avg_paper_bits,
            "avg_real_bits": self.avg_real_bits,
            "seconds": {
                "capture": self.capture_seconds,
                "hessian": self.hessian_seconds,
                "solve": self.solve_seconds,
                "recompute": self.recompute_seconds,
                "total": self.total_seconds,
            },
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "blocks": [dataclasses.asdict(block) for block in self.blocks],
        }

    def summary(self) -> str:
        return (
            f"{len(self.layers)} linears, {self.n_params:,} params: {self.avg_paper_bits:.3f} bits/param (Eq. 4), "
            f"{self.avg_real_bits:.3f} bits/param on disk, outliers {100 * self.outlier_share:.3f}%; "
            f"{self.total_seconds:.1f} s (capture {self.capture_seconds:.1f}, Hessians {self.hessian_seconds:.1f}, "
            f"solve {self.solve_seconds:.1f}, recompute {self.recompute_seconds:.1f})"
        )

