"""The one generic walk that quantizes a causal LM block by block.

1. Capture: run the model's decoder body with its block list cut to the first block; a forward pre-hook on that
   block records, per calibration batch, the hidden states and every other argument the block receives (attention
   mask, position ids, rotary embeddings, ...), exactly as the model built them. Nothing past the first block runs.
2. For each block, on the compute device: for each true-sequential stage (`spqrkit.models.families`), forward
   pre-hooks on the first linear of every input-sharing set accumulate one Hessian per set while the block runs over
   all batches; each set is solved by one `quantize_matrices` call and the dequantized weights are written back.
   The first pass of a block runs the unquantized block: its outputs are the reference for the block's output error.
3. The block's outputs are recomputed with the quantized block and become the next block's inputs.

Every check that can fail (model family, module names, weights, calibration data, config vs. shapes) runs before
the first weight is written.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import QuantConfig
from ..format.pack import real_bits
from ..quant.hessian import HessianAccumulator
from ..quant.representation import QuantizedWeight
from ..quant.solver import layer_error, quantize_matrices
from .families import UnsupportedModelError, block_layout, decoder_blocks, decoder_body, family_of

logger = logging.getLogger("spqrkit")


class PipelineError(ValueError):
    """A model or calibration set the pipeline cannot quantize as asked."""


# ---------------------------------------------------------------------------------------------------- reports
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
    output_error: float  # ||y_quantized - y_fp|| / ||y_fp|| over all calibration tokens
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


# ---------------------------------------------------------------------------------------------------- block inputs
@dataclass(eq=False)
class BlockCall:
    """How the decoder body called the first block for one batch, without the hidden states."""

    args: tuple[Any, ...]  # positional arguments after the hidden states
    kwargs: dict[str, Any]  # every keyword argument: attention_mask, position_embeddings, use_cache=False, ...
    hidden_key: str | None  # the keyword that carried the hidden states; None when passed positionally


@dataclass
class BlockInputs:
    """Calibration inputs of one block: per batch, the hidden states and the rest of the call."""

    hidden: list[torch.Tensor]  # per batch [batch, seqlen, hidden] on store_device
    calls: list[BlockCall]  # per batch; equal calls are one shared object, kept on the compute device
    store_device: torch.device

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def call_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """The block's output hidden states for one batch (blocks return a tensor or a tuple that starts with it)."""
    if call.hidden_key is None:
        out = block(hidden, *call.args, **call.kwargs)
    else:
        out = block(*call.args, **{**call.kwargs, call.hidden_key: hidden})
    return out if isinstance(out, torch.Tensor) else out[0]


def run_block(block: nn.Module, inputs: BlockInputs, device: torch.device | str) -> list[torch.Tensor]:
    """Outputs of `block` (already on `device`) for every batch, stored like the inputs."""
    return [
        call_block(block, hidden.to(device), call).to(inputs.store_device)
        for hidden, call in zip(inputs.hidden, inputs.calls)
    ]


def capture_block_inputs(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1,
    offload_activations: bool = False,
) -> BlockInputs:
    """Inputs of the first decoder block for token windows calib_ids [n, seqlen], batch by batch.

    Runs only the modules before the first block, the first block and the final norm: the block list is cut to
    its first block for the duration (restored in a `finally`), and the decoder body runs instead of the causal LM,
    so the LM head never runs.
    """
    device = _resolve_device(model, device)
    store_device = torch.device("cpu") if offload_activations else device
    body, attr = decoder_body(model)
    blocks = getattr(body, attr)
    records: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        records.append((args, dict(kwargs)))

    hidden: list[torch.Tensor] = []
    calls: list[BlockCall] = []
    distinct_calls: list[BlockCall] = []
    setattr(body, attr, nn.ModuleList([blocks[0]]))
    devices = _tensor_devices(body)
    handle = blocks[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        body.to(device)
        with torch.no_grad():
            for batch in calib_ids.split(batch_size):
                records.clear()
                body(input_ids=batch.to(device), use_cache=False)
                if len(records) != 1:
                    raise PipelineError(f"the first decoder block ran {len(records)} times for one batch")
                h, call = _split_call(*records[0])
                # Batches of one shape usually get equal arguments: keep one copy.
                seen = next((seen for seen in distinct_calls if _same(seen, call)), None)
                if seen is None:
                    distinct_calls.append(call)
                calls.append(call if seen is None else seen)
                hidden.append(h.to(store_device, copy=True))
    finally:
        handle.remove()
        try:
            _restore_devices(body, devices)
        finally:
            setattr(body, attr, blocks)
    return BlockInputs(hidden=hidden, calls=calls, store_device=store_device)


def _split_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, BlockCall]:
    if args:
        hidden, call = args[0], BlockCall(args=tuple(args[1:]), kwargs=kwargs, hidden_key=None)
    elif "hidden_states" in kwargs:
        hidden = kwargs.pop("hidden_states")
        call = BlockCall(args=(), kwargs=kwargs, hidden_key="hidden_states")
    else:
        raise PipelineError(f"cannot find the hidden states among the first block's arguments {sorted(kwargs)}")
    if not isinstance(hidden, torch.Tensor):
        raise PipelineError(f"the first block's hidden states are a {type(hidden).__name__}, not a tensor")
    return hidden, call


def _same(a: Any, b: Any) -> bool:
    """Structural equality of recorded block arguments (tensors compared by value)."""
    if isinstance(a, BlockCall) and isinstance(b, BlockCall):
        return a.hidden_key == b.hidden_key and _same(a.args, b.args) and _same(a.kwargs, b.kwargs)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)) and type(a) is type(b):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (bool, int, float, str, type(None))):
        return type(a) is type(b) and a == b
    return a is b


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass
class _SharedInputSet:
    """Linears of one block that read the same input: one Hessian, one quantize_matrices call."""

    names: tuple[str, ...]  # full module names
    linears: tuple[nn.Linear, ...]


_Plan = list[list[list[_SharedInputSet]]]  # [block][stage][set]


def _plan(model: nn.Module, config: QuantConfig) -> _Plan:
    """The linears to quantize, grouped per block, stage and shared input; checks the model against the config."""
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

    plan: _Plan = []
    for index, block in enumerate(decoder_blocks(model)):
        prefix = f"{family.blocks}.{index}."
        block_plan = []
        for stage in stages:
            stage_plan = []
            for group in stage:
                names, linears = [], []
                for name in group:
                    linear = _find(block, name)
                    if not isinstance(linear, nn.Linear):
                        raise UnsupportedModelError(
                            f"{prefix}{name} is {type(linear).__name__}, not an nn.Linear: the family table of "
                            f"{model.config.model_type!r} does not fit this model"
                        )
                    if not any(_matches(prefix + name, skip) for skip in config.skip_modules):
                        names.append(prefix + name)
                        linears.append(linear)
                if linears:
                    stage_plan.append(_SharedInputSet(tuple(names), tuple(linears)))
            block_plan.append(stage_plan)
        plan.append(block_plan)
        if index == 0:
            known = set(layout.linear_names)
            unknown = [n for n, m in block.named_modules() if isinstance(m, nn.Linear) and n not in known]
            if unknown:
                logger.warning("linears not in the family table are left unquantized: %s", ", ".join(unknown))

    targets = [(name, linear) for s in _sets(plan) for name, linear in zip(s.names, s.linears)]
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


def _sets(plan: _Plan) -> list[_SharedInputSet]:
    return [s for block in plan for stage in block for s in stage]


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _find(root: nn.Module, dotted: str) -> Any:
    module: Any = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
    return module


def _check_calibration(model: nn.Module, calib_ids: Any, config: QuantConfig, plan: _Plan, batch_size: int) -> None:
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
        widest = max(_sets(plan), key=lambda s: s.linears[0].in_features)
        in_features = widest.linears[0].in_features
        if n_windows * seqlen < in_features:
            raise PipelineError(
                f"too few calibration tokens for GPTQ: {n_windows} x {seqlen} = {n_windows * seqlen}, but "
                f"{widest.names[0]} has {in_features} input features and its Hessian needs at least that many tokens"
            )


# ---------------------------------------------------------------------------------------------------- the walk
def quantize_model(
    model: nn.Module,
    calib_ids: torch.Tensor,
    config: QuantConfig,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1,
    offload_activations: bool = False,
    progress: bool = True,
) -> QuantizationReport:
    """Quantize every decoder-block linear of a causal LM in place (weights become their dequantized values).

    calib_ids: LongTensor [n_windows, seqlen] of calibration token windows, run `batch_size` windows at a time.
    device: where each block is quantized (one block at a time; it returns to its own device after);
        None = the device of the model's first parameter.
    offload_activations: keep calibration activations on the CPU between uses, moving one batch at a time.
    Returns the per-layer and per-block report, with every layer's QuantizedWeight (on the CPU) in `.quantized`.
    """
    start = time.perf_counter()
    plan = _plan(model, config)
    _check_calibration(model, calib_ids, config, plan, batch_size)
    device = _resolve_device(model, device)
    report = QuantizationReport(config=config, model_type=model.config.model_type,
                                n_calib_tokens=calib_ids.numel())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            tic = time.perf_counter()
            inputs = capture_block_inputs(model, calib_ids, device=device, batch_size=batch_size,
                                          offload_activations=offload_activations)
            if not all(torch.isfinite(h).all() for h in inputs.hidden):
                raise PipelineError("calibration activations at the first block contain NaN or Inf")
            report.capture_seconds = time.perf_counter() - tic
            blocks = decoder_blocks(model)
            for index in tqdm(range(len(blocks)), desc="quantizing", unit="block", disable=not progress):
                block_report = _quantize_block(blocks[index], index, plan[index], inputs, config, device, report)
                report.blocks.append(block_report)
                logger.info(
                    "block %d/%d: %.2f s, relative output error %.4g, outliers %.3f%%", index + 1, len(blocks),
                    block_report.seconds, block_report.output_error, 100 * block_report.outlier_share,
                )
    finally:
        model.train(was_training)
    report.total_seconds = time.perf_counter() - start
    logger.info("%s", report.summary())
    return report


def _quantize_block(
    block: nn.Module,
    index: int,
    stages: list[list[_SharedInputSet]],
    inputs: BlockInputs,
    config: QuantConfig,
    device: torch.device,
    report: QuantizationReport,
) -> BlockReport:
    start = time.perf_counter()
    first_layer = len(report.layers)
    has_targets = any(stages)
    devices = _tensor_devices(block)
    try:
        block.to(device)
        fp_outputs: list[torch.Tensor | None] | None = None
        if config.algorithm == "rtn" or not has_targets:
            tic = time.perf_counter()
            fp_outputs = _reference_outputs(block, index, inputs, device)
            report.hessian_seconds += time.perf_counter() - tic
        for stage in stages:
            if not stage:
                continue
            hessians: list[torch.Tensor | None] = [None] * len(stage)
            if config.algorithm == "gptq":
                tic = time.perf_counter()
                hessians, outputs = _collect_hessians(block, index, stage, inputs, device,
                                                      keep_outputs=fp_outputs is None)
                fp_outputs = outputs if fp_outputs is None else fp_outputs
                report.hessian_seconds += time.perf_counter() - tic
            for shared, H in zip(stage, hessians):
                _solve(shared, H, config, report)

        tic = time.perf_counter()
        error_sq, reference_sq = 0.0, 0.0
        for b, (hidden, call) in enumerate(zip(inputs.hidden, inputs.calls)):
            y_fp = fp_outputs[b].to(device)  # [batch, seqlen, hidden]
            y = call_block(block, hidden.to(device), call) if has_targets else y_fp
            error_sq += (y.float() - y_fp.float()).pow(2).sum().item()
            reference_sq += y_fp.float().pow(2).sum().item()
            # Batch b's input is no longer needed: its slot takes the next block's input.
            inputs.hidden[b] = y.to(inputs.store_device)
            fp_outputs[b] = None
        if not all(torch.isfinite(h).all() for h in inputs.hidden):
            raise PipelineError(f"the outputs of quantized block {index} contain NaN or Inf")
        report.recompute_seconds += time.perf_counter() - tic
    finally:
        _restore_devices(block, devices)

    layers = report.layers[first_layer:]
    n_params = sum(layer.numel for layer in layers)
    return BlockReport(
        index=index,
        seconds=time.perf_counter() - start,
        output_error=(error_sq / reference_sq) ** 0.5 if reference_sq > 0 else 0.0,
        outlier_share=sum(layer.n_outliers for layer in layers) / max(n_params, 1),
    )


def _reference_outputs(block: nn.Module, index: int, inputs: BlockInputs, device: torch.device) -> list:
    outputs = run_block(block, inputs, device)
    _check_finite_outputs(outputs, index)
    return outputs


def _check_finite_outputs(outputs: list[torch.Tensor], index: int) -> None:
    if not all(torch.isfinite(y).all() for y in outputs):
        raise PipelineError(f"calibration activations of block {index} (full precision) contain NaN or Inf")


def _collect_hessians(
    block: nn.Module,
    index: int,
    stage: list[_SharedInputSet],
    inputs: BlockInputs,
    device: torch.device,
    keep_outputs: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One Hessian per input-sharing set of the stage (hooked on its first linear), from one pass over all batches;
    also the block outputs when `keep_outputs` (the first pass of a block runs unquantized)."""
    accumulators = [HessianAccumulator(shared.linears[0].in_features) for shared in stage]
    handles = [
        shared.linears[0].register_forward_pre_hook(_accumulate_into(acc), with_kwargs=True)
        for shared, acc in zip(stage, accumulators)
    ]
    try:
        outputs = None
        if keep_outputs:
            outputs = run_block(block, inputs, device)
            _check_finite_outputs(outputs, index)
        else:
            for hidden, call in zip(inputs.hidden, inputs.calls):
                call_block(block, hidden.to(device), call)
    finally:
        for handle in handles:
            handle.remove()
    for shared, acc in zip(stage, accumulators):
        if acc.count != inputs.n_tokens:
            raise PipelineError(
                f"{shared.names[0]} saw {acc.count} input rows for {inputs.n_tokens} calibration tokens: the "
                "family table does not describe how this block calls its linears"
            )
    return [acc.finalize() for acc in accumulators], outputs


def _accumulate_into(acc: HessianAccumulator) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        acc.add((args[0] if args else kwargs["input"]).detach())

    return hook


def _solve(shared: _SharedInputSet, H: torch.Tensor | None, config: QuantConfig, report: QuantizationReport) -> None:
    """Quantize the linears of one input-sharing set jointly and write their dequantized weights back."""
    tic = time.perf_counter()
    # A copy: the original weights are needed for the layer error after the write-back.
    weights = [linear.weight.detach().to(torch.float32, copy=True) for linear in shared.linears]  # [out_i, in]
    qweights = quantize_matrices(weights, H, config)
    results = []
    for name, linear, W, qw in zip(shared.names, shared.linears, weights, qweights):
        W_hat = qw.dequantize()  # [out, in] fp32
        linear.weight.copy_(W_hat)
        results.append((name, W, qw, _relative_error(W, W_hat, H)))
        report.quantized[name] = qw.to("cpu")
    seconds = time.perf_counter() - tic
    report.solve_seconds += seconds
    total = sum(W.numel() for W in weights)
    for name, W, qw, error in results:
        report.layers.append(LayerReport(
            name=name,
            shape=(W.shape[0], W.shape[1]),
            n_outliers=qw.n_outliers,
            outlier_share=qw.outlier_share,
            paper_bits=qw.paper_bits,
            real_bits=real_bits(qw),
            layer_error=error,
            seconds=seconds * W.numel() / total,
        ))


def _relative_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> float:
    if H is not None:
        return float(layer_error(W, W_hat, H))
    return ((W - W_hat).pow(2).sum() / W.pow(2).sum().clamp_min(torch.finfo(torch.float32).tiny)).item()


# ---------------------------------------------------------------------------------------------------- devices
def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _tensor_devices(module: nn.Module) -> dict[str, torch.device]:
    named = itertools.chain(module.named_parameters(), module.named_buffers())
    return {name: tensor.device for name, tensor in named}


def _restore_devices(module: nn.Module, devices: dict[str, torch.device]) -> None:
    """Move every parameter and buffer back to the device recorded by `_tensor_devices`."""
    if len(set(devices.values())) == 1:
        module.to(next(iter(devices.values())))
        return
    for name, device in devices.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if attr in owner._parameters:
            owner._parameters[attr].data = owner._parameters[attr].data.to(device)
        else:
            owner._buffers[attr] = owner._buffers[attr].to(device)
