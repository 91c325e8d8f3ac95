"""What the walk will quantize: the linears of every block, grouped per true-sequential stage and shared input.

Every check that can fail on the model or the calibration data (family, module names, weights, config vs. shapes,
token ids and counts) runs here, before the first weight is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import QuantConfig
from .block_inputs import PipelineError
from .families import UnsupportedModelError, block_layout, decoder_blocks, family_of

logger = logging.getLogger("spqrkit")


@dataclass
class SharedInputSet:
    """Linears of one block that read the same input: one Hessian, one quantize_matrices call."""

    names: tuple[str, ...]  # full module names
    linears: tuple[nn.Linear, ...]


@dataclass
class StagePlan:
    """One true-sequential stage of one block.

    `sets` are quantized in this stage (skipped linears left out). `downstream` holds every table linear of this
    stage and of the later ones, skipped or not: by the family table's data-flow order none of them feeds an input of
    this stage, so the Hessian pass may replace them by stubs that return zeros without changing the Hessians.
    """

    sets: tuple[SharedInputSet, ...]
    downstream: tuple[nn.Linear, ...]


BlockPlan = list[StagePlan]


def plan_model(model: nn.Module, config: QuantConfig) -> list[BlockPlan]:
    """The linears to quantize, per block and stage; checks the model against the config."""
    family = family_of(model)
    layout = block_layout(model)
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise UnsupportedModelError(
            f"model type {model.config.model_type!r}: its blocks use different attention types "
            f"{sorted(set(layer_types))} and so receive different attention masks; the pipeline replays the "
            "first block's arguments to every block and cannot quantize this model"
        )
    stages = layout.stages if config.true_sequential else (tuple(s for stage in layout.stages for s in stage),)
    module_names = [name for name, _ in model.named_modules()]
    for skip in config.skip_modules:
        if not any(_matches(name, skip) for name in module_names):
            raise PipelineError(
                f"skip_modules entry {skip!r} matches no module of this model (entries match module names by "
                f"suffix, e.g. 'mlp.down_proj' or '{family.blocks}.0.self_attn.q_proj')"
            )

    plan: list[BlockPlan] = []
    for index, block in enumerate(decoder_blocks(model)):
        prefix = f"{family.blocks}.{index}."
        stage_sets: list[tuple[SharedInputSet, ...]] = []
        stage_linears: list[list[nn.Linear]] = []
        for stage in stages:
            sets, every = [], []
            for group in stage:
                names, linears = [], []
                for name in group:
                    linear = _find(block, name)
                    if not isinstance(linear, nn.Linear):
                        raise UnsupportedModelError(
                            f"{prefix}{name} is {type(linear).__name__}, not an nn.Linear: the family table of "
                            f"{model.config.model_type!r} does not fit this model"
                        )
                    every.append(linear)
                    if not any(_matches(prefix + name, skip) for skip in config.skip_modules):
                        names.append(prefix + name)
                        linears.append(linear)
                if linears:
                    sets.append(SharedInputSet(tuple(names), tuple(linears)))
            stage_sets.append(tuple(sets))
            stage_linears.append(every)
        plan.append([
            StagePlan(sets, tuple(linear for later in stage_linears[s:] for linear in later))
            for s, sets in enumerate(stage_sets)
        ])
        if index == 0:
            known = set(layout.linear_names)
            unknown = [n for n, m in block.named_modules() if isinstance(m, nn.Linear) and n not in known]
            if unknown:
                logger.warning("linears not in the family table are left unquantized: %s", ", ".join(unknown))

    targets = [(name, linear) for s in all_sets(plan) for name, linear in zip(s.names, s.linears)]
    if not targets:
        raise PipelineError("nothing to quantize: skip_modules excludes every linear of every block")
    for name, linear in targets:
        if not torch.isfinite(linear.weight).all():
            raise PipelineError(f"the weight of {name} contains NaN or Inf")
        if config.beta2 is not None and linear.out_features % config.beta2:
            raise PipelineError(
                f"{name} has out_features={linear.out_features}, not divisible by beta2={config.beta2}: "
                "choose a beta2 that divides it, or skip this layer with skip_modules"
            )
    return plan


def all_sets(plan: list[BlockPlan]) -> list[SharedInputSet]:
    return [s for block in plan for stage in block for s in stage.sets]


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _find(root: nn.Module, dotted: str) -> Any:
    module: Any = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
    return module


def check_calibration(model: nn.Module, calib_ids: Any, config: QuantConfig, plan: list[BlockPlan],
                      batch_size: int) -> None:
    """Calibration token windows must be integer ids [n >= 1, seqlen >= 1] within the vocabulary.

    GPTQ additionally needs at least as many calibration tokens as the widest quantized layer has input features:
    a Hessian averaged over fewer tokens is rank-deficient and only the damping keeps it invertible.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PipelineError(f"batch_size must be a positive integer, got {batch_size!r}")
    if (not isinstance(calib_ids, torch.Tensor) or calib_ids.dim() != 2 or calib_ids.is_floating_point()
            or calib_ids.is_complex() or calib_ids.dtype == torch.bool):
        raise PipelineError(
            "calibration data must be an integer tensor of token ids [n_windows, seqlen], got "
            + (f"{calib_ids.dtype} {tuple(calib_ids.shape)}" if isinstance(calib_ids, torch.Tensor)
               else type(calib_ids).__name__)
        )
    n_windows, seqlen = calib_ids.shape
    if n_windows < 1 or seqlen < 1:
        raise PipelineError(f"too few calibration tokens: got {n_windows} windows of {seqlen} tokens")
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and (calib_ids.min() < 0 or calib_ids.max() >= vocab_size):
        raise PipelineError(f"calibration token ids must lie in [0, {vocab_size}) (the model's vocab_size)")
    if config.algorithm == "gptq":
        widest = max(all_sets(plan), key=lambda s: s.linears[0].in_features)
        in_features = widest.linears[0].in_features
        if n_windows * seqlen < in_features:
            raise PipelineError(
                f"too few calibration tokens for GPTQ: {n_windows} x {seqlen} = {n_windows * seqlen}, but "
                f"{widest.names[0]} has {in_features} input features and its Hessian needs at least that many tokens"
            )
