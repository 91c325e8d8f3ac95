"""`AutoModelForCausalLM.from_pretrained(DIR)` for compressed spqrkit checkpoints.

transformers picks a quantizer by `config.json`'s `quantization_config.quant_method`. `register()` (run by
`import spqrkit`) adds ours under "spqrkit" through transformers' public hooks `register_quantization_config` and
`register_quantizer` (transformers 5.x; "spqr" is transformers' own, for another layout). During from_pretrained
transformers builds the model on the meta device and calls the quantizer's `_process_model_before_weight_loading`
with the resolved checkpoint files: we verify the whole folder (manifest, headers, checksums) and swap the quantized
linears for SpQRLinear skeletons; transformers then loads every tensor into them, keeping each packed tensor's dtype
(the skeleton's dtype wins over `dtype=` for floating tensors, integer tensors are never cast); afterwards
`_process_model_after_weight_loading` checks the loaded contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..config import ConfigError, QuantConfig
from ..format.checkpoint import check_format_version, verify_checkpoint
from ..format.spec import FORMAT_VERSION, QUANT_METHOD, FormatError
from ..modules.linear import SpQRLinear
from .compressed import check_loaded, replace_with_spqr_linears


class SpqrkitQuantizationConfig(QuantizationConfigMixin):
    """config.json's `quantization_config` of a spqrkit checkpoint: the format version and the QuantConfig."""

    def __init__(self, format_version: int = FORMAT_VERSION, quant_config: dict[str, Any] | None = None,
                 quant_method: str = QUANT_METHOD, **unknown: Any) -> None:
        if quant_method != QUANT_METHOD:
            raise FormatError(f"quantization_config.quant_method is {quant_method!r}, expected {QUANT_METHOD!r}")
        if unknown:
            raise FormatError(f"quantization_config has unknown fields {sorted(unknown)}")
        self.quant_method = QUANT_METHOD
        self.format_version = check_format_version(format_version, "config.json quantization_config")
        try:
            self.quant_config = QuantConfig.from_dict(quant_config or {}).to_dict()
        except (ConfigError, TypeError) as exc:
            raise FormatError(f"config.json quantization_config.quant_config: {exc}") from None

    @property
    def config(self) -> QuantConfig:
        return QuantConfig.from_dict(self.quant_config)


class SpqrkitHfQuantizer(HfQuantizer):
    """Loads pre-quantized spqrkit checkpoints (it cannot quantize a model while loading it)."""

    requires_calibration = True
    quantization_config: SpqrkitQuantizationConfig

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("spqrkit checkpoints cannot be offloaded to disk; they are small enough to keep in memory")

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype

    def _process_model_before_weight_loading(self, model: nn.Module, checkpoint_files=None, **kwargs: Any) -> None:
        if not checkpoint_files:
            raise FormatError("a spqrkit checkpoint loads from a folder of safetensors shards; none was found")
        info = verify_checkpoint(Path(checkpoint_files[0]).parent)
        if info.config != self.quantization_config.config:
            raise FormatError(f"{info.folder}: the manifest's config differs from config.json's quantization_config")
        replace_with_spqr_linears(model, info.layers, info.config, device="meta")

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        check_loaded(model)
        return model

    def _dequantize(self, model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
        for name, module in list(model.named_modules()):
            if isinstance(module, SpQRLinear):
                weight = module.dequantize().to(dtype or torch.get_default_dtype())
                linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                   device=weight.device, dtype=weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(weight)
                    if module.bias is not None:
                        linear.bias.copy_(module.bias)
                parent_name, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, attr, linear)
        return model

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        # The kernels are torch custom ops with fake implementations: torch.compile and CUDA graphs take them, so
        # generate() with a static cache may compile the decode step.
        return True

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        # The checkpoint's manifest and checksums are spqrkit's to write (spqrkit.save_checkpoint).
        return False


def register() -> None:
    """Make transformers' from_pretrained load spqrkit checkpoints (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(SpqrkitQuantizationConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(SpqrkitHfQuantizer)
