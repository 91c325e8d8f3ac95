"""Fusing a model's input-sharing linears for inference (spqrkit.modules.fused), by its family's block layout.

Every set of the layout with two or more linears (LLaMA-like: q/k/v and gate/up) becomes one layer per block,
registered on the module that holds the set as `fused_<names>` (e.g. `self_attn.fused_q_proj_k_proj_v_proj`), and
each linear's place is taken by a `LinearSlice`. A set whose linears cannot be concatenated (different
permutations, a bias on some only, mixed module types) is left as it is, and the report says why.
`unfuse_projections` is the inverse (exact): each slice's place goes back to a layer of its own rows, and the fused
layers leave the model (a checkpoint is written from the unfused model: `save_checkpoint` refuses a fused one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..modules.fused import FusionError, LinearSlice, SharedOutput, concat_linears, split_linear
from .families import block_layout, decoder_blocks


@dataclass
class FusionReport:
    fused: list[str] = field(default_factory=list)  # the fused layers' module names
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (the set, e.g. "model.layers.0.mlp.{..}", reason)

    def summary(self) -> str:
        text = f"fused {len(self.fused)} input-sharing sets into one layer each"
        if self.skipped:
            text += f"; left {len(self.skipped)} unfused (first: {self.skipped[0][0]}: {self.skipped[0][1]})"
        return text


def fusable_sets(model: nn.Module) -> list[tuple[str, ...]]:
    """The input-sharing sets of one block (names relative to the block) with two or more linears."""
    return [group for stage in block_layout(model).stages for group in stage if len(group) > 1]


def _parent(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, attr = dotted.split(".")
    for part in path:
        root = getattr(root, part)
    return root, attr


def fuse_projections(model: nn.Module) -> FusionReport:
    """Fuse every input-sharing set of every decoder block of `model` in place (see the module docstring)."""
    report = FusionReport()
    sets = fusable_sets(model)
    blocks_path = next(name for name, mod in model.named_modules() if mod is decoder_blocks(model))
    for b, block in enumerate(decoder_blocks(model)):
        for names in sets:
            where = f"{blocks_path}.{b}"
            layers = [getattr(*_parent(block, name)) for name in names]
            try:
                fused = concat_linears(layers)
            except FusionError as e:
                report.skipped.append((f"{where}.{{{','.join(names)}}}", str(e)))
                continue
            # the fused layer lives on the deepest module holding every linear of the set
            prefix = names[0].split(".")[:-1]
            for name in names[1:]:
                parts = name.split(".")[:-1]
                n = 0
                while n < min(len(prefix), len(parts)) and prefix[n] == parts[n]:
                    n += 1
                prefix = prefix[:n]
            holder = block
            for part in prefix:
                holder = getattr(holder, part)
            attr = "fused_" + "_".join(name.split(".", len(prefix))[-1].replace(".", "_") for name in names)
            holder.add_module(attr, fused)
            shared = SharedOutput(fused, [layer.out_features for layer in layers])
            for i, (name, layer) in enumerate(zip(names, layers)):
                parent, child = _parent(block, name)
                setattr(parent, child, LinearSlice(shared, i, layer.in_features))
            report.fused.append(".".join([where, *prefix, attr]))
    return report


def unfuse_projections(model: nn.Module) -> list[str]:
    """Undo `fuse_projections` in place: every `LinearSlice` is replaced by a layer of its rows of the fused layer
    (`split_linear`: exact, an SpQRLinear's packed tensors as they were before fusing), and each fused layer is
    removed from the module holding it. Returns the removed fused layers' names (empty for a model never fused)."""
    slices: dict[int, list[tuple[str, LinearSlice]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearSlice):
            slices.setdefault(id(module.shared), []).append((name, module))
    owners = {id(module): name for name, module in model.named_modules()}
    removed = []
    for group in slices.values():
        shared = group[0][1].shared
        fused_name = owners.get(id(shared.layer))
        parts = split_linear(shared.layer, [stop - start for start, stop in shared.ranges])
        for name, module in group:
            parent, child = _parent(model, name)
            setattr(parent, child, parts[module.index])
        shared.clear()
        if fused_name is not None:
            holder, attr = _parent(model, fused_name)
            delattr(holder, attr)
            removed.append(fused_name)
    return removed
