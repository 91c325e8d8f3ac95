"""The one typed, versioned quantization config.

Every setting of a quantization run lives here: the solver reads it, the pipeline reads it, and it is written into
every checkpoint (`to_dict` / `from_dict` round-trip through JSON). Named presets reproduce the paper's settings;
every field of a preset can be overridden.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

CONFIG_VERSION = 1

Algorithm = Literal["gptq", "rtn"]


class ConfigError(ValueError):
    """A quantization config that cannot be honoured."""


@dataclass(frozen=True)
class QuantConfig:
    """Settings of SpQR / GPTQ / RTN quantization.

    wbits: bits per base code (2..8).
    beta1: input columns per first-level group; None = one group per row (per-channel statistics).
    beta2: output rows per second-level group; None = no second level (first-level statistics kept in fp16).
    scale_bits / zero_bits: bits of the second-level-quantized first-level scales / zeros; None = fp16 statistics.
    round_zero: round first-level zeros to integers (only meaningful with fp16 statistics).
    outlier_threshold: SpQR's relative outlier threshold tau; math.inf = no outliers (plain GPTQ / RTN).
    act_order: permute input columns by descending diag(H) before the sweep.
    percdamp: damping, as a fraction of mean(diag H) added to the diagonal of H.
    blocksize: GPTQ's lazy-update block width (rounded up to a multiple of beta1; does not change the result).
    algorithm: "gptq" sweeps the columns with Hessian error feedback; "rtn" rounds to nearest (no Hessian).
    true_sequential: quantize sublayers of a block group by group, each from inputs of the already quantized
        earlier ones.
    skip_modules: names (suffixes) of linear sublayers left unquantized.
    """

    wbits: int = 3
    beta1: int | None = 16
    beta2: int | None = 16
    scale_bits: int | None = 3
    zero_bits: int | None = 3
    round_zero: bool = False
    outlier_threshold: float = 0.2
    act_order: bool = True
    percdamp: float = 1.0
    blocksize: int = 128
    algorithm: Algorithm = "gptq"
    true_sequential: bool = True
    skip_modules: tuple[str, ...] = field(default_factory=tuple)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        # Normalise list-valued input (e.g. from JSON) so the frozen config stays hashable.
        object.__setattr__(self, "skip_modules", tuple(self.skip_modules))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def fail(msg: str) -> None:
            raise ConfigError(msg)

        if self.version != CONFIG_VERSION:
            fail(f"unsupported config version {self.version} (this spqrkit understands version {CONFIG_VERSION})")
        if not isinstance(self.wbits, int) or not 2 <= self.wbits <= 8:
            fail(f"wbits must be an integer in 2..8, got {self.wbits!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                fail(f"{name} must be a positive integer or None, got {v!r}")
        for name in ("scale_bits", "zero_bits"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or not 1 <= v <= 8):
                fail(f"{name} must be an integer in 1..8 or None (fp16 statistics), got {v!r}")
        quantized_stats = self.scale_bits is not None or self.zero_bits is not None
        if quantized_stats and self.beta2 is None:
            fail("scale_bits / zero_bits need second-level groups: set beta2, or set both to None for fp16 statistics")
        if not quantized_stats and self.beta2 is not None:
            fail("beta2 is set but scale_bits and zero_bits are None: there is no second level to group")
        if self.round_zero and self.zero_bits is not None:
            fail("round_zero applies to fp16 zeros only; it cannot be combined with zero_bits")
        if not (self.outlier_threshold > 0) or math.isnan(self.outlier_threshold):
            fail(f"outlier_threshold must be > 0 (math.inf disables outliers), got {self.outlier_threshold!r}")
        if not (0 <= self.percdamp) or not math.isfinite(self.percdamp):
            fail(f"percdamp must be a finite number >= 0, got {self.percdamp!r}")
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            fail(f"blocksize must be a positive integer, got {self.blocksize!r}")
        if self.algorithm not in ("gptq", "rtn"):
            fail(f"algorithm must be 'gptq' or 'rtn', got {self.algorithm!r}")
        if self.algorithm == "rtn" and self.act_order:
            fail("act_order needs a Hessian; RTN has none (set act_order=False)")

    # ------------------------------------------------------------------ derived
    @property
    def has_outliers(self) -> bool:
        return math.isfinite(self.outlier_threshold)

    @property
    def quantized_stats(self) -> bool:
        return self.beta2 is not None

    def group_size(self, in_features: int) -> int:
        return in_features if self.beta1 is None else self.beta1

    def paper_avg_bits(self, in_features: int, outlier_share: float = 0.0) -> float:
        """Average bits per parameter by the paper's Eq. 4 (fp16 statistics cost 16 bits each)."""
        g1 = self.group_size(in_features)
        if self.quantized_stats:
            stat_bits = (self.scale_bits or 16) + (self.zero_bits or 16)
            second = 2 * (16 + 16) / (g1 * self.beta2)
        else:
            stat_bits, second = 32, 0.0
        return self.wbits + stat_bits / g1 + second + 32 * outlier_share

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skip_modules"] = list(self.skip_modules)
        # JSON has no infinity; "inf" is explicit and survives every JSON parser.
        if math.isinf(d["outlier_threshold"]):
            d["outlier_threshold"] = "inf"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        if isinstance(d.get("outlier_threshold"), str):
            d["outlier_threshold"] = float(d["outlier_threshold"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> QuantConfig:
        return cls.from_dict(json.loads(s))

    def replace(self, **overrides: Any) -> QuantConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)


_FP16_STATS = dict(beta2=None, scale_bits=None, zero_bits=None)

PRESETS: dict[str, QuantConfig] = {
    # The paper's near-lossless settings: tiny groups, 3-bit statistics in 16x16 tiles, outliers, act_order.
    "spqr-w3": QuantConfig(wbits=3, beta1=16, beta2=16, scale_bits=3, zero_bits=3, outlier_threshold=0.2),
    "spqr-w4": QuantConfig(wbits=4, beta1=16, beta2=16, scale_bits=3, zero_bits=3, outlier_threshold=0.2),
    # GPTQ: no outliers, fp16 statistics, per-channel or large groups.
    "gptq-w4": QuantConfig(wbits=4, beta1=None, outlier_threshold=math.inf, **_FP16_STATS),
    "gptq-w3": QuantConfig(wbits=3, beta1=None, outlier_threshold=math.inf, **_FP16_STATS),
    "gptq-w4-g128": QuantConfig(wbits=4, beta1=128, outlier_threshold=math.inf, **_FP16_STATS),
    "gptq-w3-g128": QuantConfig(wbits=3, beta1=128, outlier_threshold=math.inf, **_FP16_STATS),
    # Round-to-nearest: no Hessian at all.
    "rtn-w4": QuantConfig(wbits=4, beta1=None, outlier_threshold=math.inf, act_order=False, algorithm="rtn",
                          **_FP16_STATS),
    "rtn-w3": QuantConfig(wbits=3, beta1=None, outlier_threshold=math.inf, act_order=False, algorithm="rtn",
                          **_FP16_STATS),
    "rtn-w4-g128": QuantConfig(wbits=4, beta1=128, outlier_threshold=math.inf, act_order=False, algorithm="rtn",
                               **_FP16_STATS),
}


def get_preset(name: str, **overrides: Any) -> QuantConfig:
    """A named preset with any fields overridden (None-valued overrides are applied: None is meaningful)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
