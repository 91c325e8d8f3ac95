"""Model families as data: where a causal LM keeps its decoder blocks and how a block's linears are grouped.

One generic walk (`spqrkit.models.pipeline`) quantizes every family; what differs between architectures is only
this table, keyed by `config.model_type`:

- `blocks`: the dotted path from the causal LM to its `nn.ModuleList` of decoder blocks. The module holding that
  list is the "decoder body" the pipeline runs (with the list cut to the first block) to capture block inputs.
- `layouts`: the linear sublayers of one block (names relative to the block), as true-sequential stages. A stage is
  a tuple of input-sharing sets; a set is a tuple of linears that read the SAME input tensor (q, k, v), so they share
  one Hessian and are solved together. Stages run in data-flow order: no linear of a stage reads the output of a
  linear of the same or a later stage, and every set sits in the earliest stage it can (each stage costs one pass of
  the block over the calibration data). Sets of one stage read different tensors: GPT-NeoX's parallel attention and
  MLP each have their own layer norm; in parallel blocks the attention output projection and the MLP down
  projection depend on different earlier linears.
  Some architectures change their wiring with a config flag (Falcon's parallel attention, GPT-NeoX's parallel
  residual): each layout carries the config attribute values it applies to, and the first match wins.

Adding a family: `register_family("my_type", Family(blocks=..., layouts=(Layout(stages=...),)))`, then check it
against the real module names the way `tests/test_families.py` does (every linear covered, shared inputs equal,
stages in data-flow order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

SublayerSet = tuple[str, ...]  # linears of one block that read the same input tensor
Stage = tuple[SublayerSet, ...]  # input-sharing sets quantized in one true-sequential step


class UnsupportedModelError(ValueError):
    """A model whose architecture has no entry in the family table (or whose entry does not fit it)."""


@dataclass(frozen=True)
class Layout:
    """The true-sequential stages of one block wiring, and the config attribute values that select it."""

    stages: tuple[Stage, ...]
    when: Mapping[str, Any] = field(default_factory=dict)  # {} matches every config

    def matches(self, config: Any) -> bool:
        return all(getattr(config, attr, None) == value for attr, value in self.when.items())

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for stage in self.stages for group in stage for name in group)


@dataclass(frozen=True)
class Family:
    blocks: str  # dotted path from the causal LM to its nn.ModuleList of decoder blocks
    layouts: tuple[Layout, ...]  # first layout whose `when` matches the config wins

    def layout(self, config: Any) -> Layout:
        for layout in self.layouts:
            if layout.matches(config):
                return layout
        wirings = ", ".join(str(dict(layout.when)) for layout in self.layouts)
        raise UnsupportedModelError(
            f"no block layout of model type {config.model_type!r} fits this config; the table knows {wirings}"
        )


def _stage(*groups: SublayerSet) -> Stage:
    return tuple(groups)


def _sequential(*groups: SublayerSet) -> tuple[Stage, ...]:
    """Stages of a block whose every set reads the output of the set before it: one set per stage."""
    return tuple(_stage(group) for group in groups)


_LLAMA_LIKE = Family(
    blocks="model.layers",
    layouts=(Layout(_sequential(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    )),),
)

# Falcon and GPT-NeoX name their MLP alike.
_UP, _DOWN = "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"
_FALCON_QKV, _FALCON_DENSE = "self_attention.query_key_value", "self_attention.dense"
_NEOX_QKV, _NEOX_DENSE = "attention.query_key_value", "attention.dense"

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "opt": Family(
        blocks="model.decoder.layers",
        layouts=(Layout(_sequential(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.out_proj",),
            ("fc1",),
            ("fc2",),
        )),),
    ),
    "gpt_neox": Family(
        blocks="gpt_neox.layers",
        layouts=(
            # Parallel residual: attention and MLP both read the block input, through two different layer norms.
            Layout((_stage((_NEOX_QKV,), (_UP,)), _stage((_NEOX_DENSE,), (_DOWN,))),
                   when={"use_parallel_residual": True}),
            Layout(_sequential((_NEOX_QKV,), (_NEOX_DENSE,), (_UP,), (_DOWN,))),
        ),
    ),
    "falcon": Family(
        blocks="transformer.h",
        layouts=(
            # New architecture with one layer norm: attention and MLP read the same normalised input.
            Layout((_stage((_FALCON_QKV, _UP)), _stage((_FALCON_DENSE,), (_DOWN,))),
                   when={"new_decoder_architecture": True, "num_ln_in_parallel_attn": 1}),
            # New architecture otherwise (ln_attn and ln_mlp, its default): parallel, but two different inputs.
            Layout((_stage((_FALCON_QKV,), (_UP,)), _stage((_FALCON_DENSE,), (_DOWN,))),
                   when={"new_decoder_architecture": True}),
            # Falcon-7B style parallel attention: one layer norm feeds both attention and MLP.
            Layout((_stage((_FALCON_QKV, _UP)), _stage((_FALCON_DENSE,), (_DOWN,))),
                   when={"parallel_attn": True}),
            Layout(_sequential((_FALCON_QKV,), (_FALCON_DENSE,), (_UP,), (_DOWN,))),
        ),
    ),
    # Phi-1/2: attention and MLP run in parallel on the same layer-normed input.
    "phi": Family(
        blocks="model.layers",
        layouts=(Layout((
            _stage(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1")),
            _stage(("self_attn.dense",), ("mlp.fc2",)),
        )),),
    ),
    # Phi-3 fuses q, k, v into one linear and gate, up into another.
    "phi3": Family(
        blocks="model.layers",
        layouts=(Layout(_sequential(
            ("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",),
        )),),
    ),
}


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(FAMILIES))


def register_family(model_type: str, family: Family, *, overwrite: bool = False) -> None:
    """Teach the pipeline a new architecture (see the module docstring for what to check)."""
    if model_type in FAMILIES and not overwrite:
        raise ValueError(f"model type {model_type!r} is already registered; pass overwrite=True to replace it")
    FAMILIES[model_type] = family


def family_of(model: nn.Module) -> Family:
    """The table entry of a causal LM, by its `config.model_type`."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported model types: "
            f"{', '.join(supported_model_types())}. To add one, describe its decoder blocks with "
            "spqrkit.models.families.register_family (see that module's docstring)"
        )
    return FAMILIES[model_type]


def block_layout(model: nn.Module) -> Layout:
    """The block layout that fits this model's config."""
    return family_of(model).layout(model.config)


def decoder_body(model: nn.Module) -> tuple[nn.Module, str]:
    """(the module that holds the block list, the attribute name of the list)."""
    family = family_of(model)
    *parent_path, attr = family.blocks.split(".")
    parent = model
    for part in parent_path:
        parent = getattr(parent, part, None)
    blocks = getattr(parent, attr, None)
    if not isinstance(blocks, nn.ModuleList):
        raise UnsupportedModelError(
            f"model type {model.config.model_type!r}: expected the decoder blocks as an nn.ModuleList at "
            f"{family.blocks!r}, found {type(blocks).__name__}"
        )
    return parent, attr


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    parent, attr = decoder_body(model)
    return getattr(parent, attr)
