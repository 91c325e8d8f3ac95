"""The one generic walk that quantizes a causal LM block by block.

1. Capture (`spqrkit.models.block_inputs`): the inputs of the first decoder block, per calibration batch.
2. For each block, on the compute device, for each true-sequential stage (`spqrkit.models.families`): one pass of the
   block over all batches accumulates one Hessian per input-sharing set of the stage; each set is solved by one
   `quantize_matrices` call and the dequantized weights are written back. During that pass every linear of the stage
   and of the later stages is a stub that records its input and returns zeros: the stage's inputs do not depend on
   those linears (the family table's data-flow order), so the Hessians are those of the full block, without the
   cost of the linears whose outputs nobody needs yet. The first pass of a block runs its first batches unstubbed
   and unquantized: their outputs are the reference for the block's output error.
3. The block's outputs are recomputed with the quantized block and become the next block's inputs.
Parts of the block whose linears are all quantized compute the same outputs in every later pass: those outputs are
recorded once and replayed (`spqrkit.models.reuse`) where the forward is the cost (on the CPU, by default).

Every check that can fail (`spqrkit.models.plan`) runs before the first weight is written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import QuantConfig
from ..format.pack import real_bits
from ..quant.hessian import HessianAccumulator
from ..quant.solver import layer_error, quantize_matrices
from .block_inputs import (
    BlockCall,
    BlockInputs,
    PipelineError,
    call_block,
    capture_block_inputs,
    resolve_device,
    restore_devices,
    run_block,
    tensor_devices,
)
from .families import decoder_blocks
from .forward_swap import ForwardSwap
from .plan import SharedInputSet, StagePlan, check_calibration, plan_model
from .report import BlockReport, LayerReport, QuantizationReport
from .reuse import FinishedParts

__all__ = [
    "BlockCall", "BlockInputs", "BlockReport", "LayerReport", "PipelineError", "QuantizationReport",
    "call_block", "capture_block_inputs", "quantize_model", "run_block",
]

logger = logging.getLogger("spqrkit")

# Leading calibration windows on which each block's output error is measured: a diagnostic, and each window of it
# costs one unstubbed, unquantized block pass.
DEFAULT_ERROR_WINDOWS = 4


def quantize_model(
    model: nn.Module,
    calib_ids: torch.Tensor,
    config: QuantConfig,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1,
    offload_activations: bool = False,
    progress: bool = True,
    error_windows: int | None = DEFAULT_ERROR_WINDOWS,
    autocast_dtype: torch.dtype | None = None,
    reuse_outputs: bool | None = None,
) -> QuantizationReport:
    """Quantize every decoder-block linear of a causal LM in place (weights become their dequantized values).

    calib_ids: LongTensor [n_windows, seqlen] of calibration token windows, run `batch_size` windows at a time.
    device: where each block is quantized (one block at a time; it returns to its own device after);
        None = the device of the model's first parameter.
    offload_activations: keep calibration activations on the CPU between uses, moving one batch at a time.
    error_windows: each block's output error is measured on the batches that hold the first `error_windows`
        calibration windows (None: on all of them). It changes no weight.
    autocast_dtype: run the block passes under `torch.autocast` to this dtype (e.g. torch.bfloat16 on a CPU with
        bf16 dot products: matmuls and attention about twice as fast); None runs them in the model's dtype. The
        Hessians are accumulated in fp32 either way, and the weights are solved and written in fp32.
    reuse_outputs: replay the outputs of a block's finished parts in its later passes instead of recomputing them
        (`spqrkit.models.reuse`: the same values, at the memory of about two more copies of the block's calibration
        activations per finished part); None = on when the block passes run on the CPU.
    Returns the per-layer and per-block report, with every layer's QuantizedWeight (on the CPU) in `.quantized`.
    """
    start = time.perf_counter()
    if error_windows is not None and (not isinstance(error_windows, int) or error_windows < 1):
        raise PipelineError(f"error_windows must be a positive integer or None, got {error_windows!r}")
    floating = isinstance(autocast_dtype, torch.dtype) and autocast_dtype.is_floating_point
    if autocast_dtype is not None and not floating:
        raise PipelineError(f"autocast_dtype must be a floating-point torch.dtype or None, got {autocast_dtype!r}")
    plan = plan_model(model, config)
    check_calibration(model, calib_ids, config, plan, batch_size)
    device = resolve_device(model, device)
    n_batches = math.ceil(calib_ids.shape[0] / batch_size)
    n_reference = n_batches if error_windows is None else min(n_batches, math.ceil(error_windows / batch_size))
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
                passes = _Passes(device, n_reference, autocast_dtype,
                                 device.type == "cpu" if reuse_outputs is None else reuse_outputs)
                block_report = _quantize_block(blocks[index], index, plan[index], inputs, config, passes, report)
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
    stages: list[StagePlan],
    inputs: BlockInputs,
    config: QuantConfig,
    passes: _Passes,
    report: QuantizationReport,
) -> BlockReport:
    start = time.perf_counter()
    first_layer = len(report.layers)
    has_targets = any(stage.sets for stage in stages)
    devices = tensor_devices(block)
    parts = FinishedParts(block, stages[0].downstream if stages and passes.reuse_outputs else ())
    try:
        device = passes.device
        block.to(device)
        reference: list[torch.Tensor] | None = None  # full-precision outputs of the first n_reference batches
        if has_targets and config.algorithm == "rtn":
            tic = time.perf_counter()
            with passes.autocast():
                reference = _reference_outputs(block, index, inputs, device, passes.n_reference)
            report.hessian_seconds += time.perf_counter() - tic
        for stage in stages:
            if not stage.sets:
                continue
            hessians: list[torch.Tensor | None] = [None] * len(stage.sets)
            if config.algorithm == "gptq":
                tic = time.perf_counter()
                hessians, outputs = _stage_pass(block, index, stage, inputs, passes,
                                                passes.n_reference if reference is None else 0, parts)
                reference = outputs if reference is None else reference
                report.hessian_seconds += time.perf_counter() - tic
            for shared, H in zip(stage.sets, hessians):
                _solve(shared, H, config, report)

        tic = time.perf_counter()
        error_sq, reference_sq = 0.0, 0.0
        with parts.pass_((), record=False):
            for b, (hidden, call) in enumerate(zip(inputs.hidden, inputs.calls)):
                with passes.autocast():
                    y = call_block(block, hidden.to(device), call)  # [batch, seqlen, hidden]
                if reference is not None and b < len(reference):
                    y_fp = reference[b].to(device)
                    error_sq += (y.float() - y_fp.float()).pow(2).sum().item()
                    reference_sq += y_fp.float().pow(2).sum().item()
                # Batch b's input is no longer needed: its slot takes the next block's input.
                inputs.hidden[b] = y.to(inputs.store_device)
        if not all(torch.isfinite(h).all() for h in inputs.hidden):
            raise PipelineError(f"the outputs of {'quantized ' if has_targets else ''}block {index} contain NaN or Inf")
        report.recompute_seconds += time.perf_counter() - tic
    finally:
        parts.clear()
        restore_devices(block, devices)

    layers = report.layers[first_layer:]
    n_params = sum(layer.numel for layer in layers)
    return BlockReport(
        index=index,
        seconds=time.perf_counter() - start,
        output_error=(error_sq / reference_sq) ** 0.5 if reference_sq > 0 else 0.0,
        outlier_share=sum(layer.n_outliers for layer in layers) / max(n_params, 1),
    )


@dataclass(frozen=True)
class _Passes:
    """How the walk runs a block over the calibration batches."""

    device: torch.device
    n_reference: int  # leading batches whose full-precision outputs are the reference for the output error
    autocast_dtype: torch.dtype | None  # None: the model's own dtype
    reuse_outputs: bool  # replay the outputs of the block's finished parts (spqrkit.models.reuse)

    def autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)


def _reference_outputs(block: nn.Module, index: int, inputs: BlockInputs, device: torch.device,
                       n_batches: int) -> list[torch.Tensor]:
    outputs = [
        call_block(block, hidden.to(device), call).to(inputs.store_device)
        for hidden, call in zip(inputs.hidden[:n_batches], inputs.calls[:n_batches])
    ]
    _check_finite_outputs(outputs, index)
    return outputs


def _check_finite_outputs(outputs: list[torch.Tensor], index: int) -> None:
    if not all(torch.isfinite(y).all() for y in outputs):
        raise PipelineError(f"calibration activations of block {index} (full precision) contain NaN or Inf")


def _stage_pass(
    block: nn.Module,
    index: int,
    stage: StagePlan,
    inputs: BlockInputs,
    passes: _Passes,
    n_reference: int,
    parts: FinishedParts,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One Hessian per input-sharing set of the stage, from one pass over all batches, with the stage's downstream
    linears stubbed; the first `n_reference` batches run unstubbed and their block outputs are returned too (the
    block is still unquantized when the caller asks for them)."""
    accumulators = [HessianAccumulator(shared.linears[0].in_features) for shared in stage.sets]
    recorders = {id(shared.linears[0]): acc for shared, acc in zip(stage.sets, accumulators)}
    reference = []
    with (_Stubs(stage.downstream, recorders, passes.device.type) as stubs, passes.autocast(),
          parts.pass_(stage.downstream, record=True)):
        for b, (hidden, call) in enumerate(zip(inputs.hidden, inputs.calls)):
            stubs.passthrough = b < n_reference
            y = call_block(block, hidden.to(passes.device), call)
            if stubs.passthrough:
                reference.append(y.to(inputs.store_device))
    _check_finite_outputs(reference, index)
    for shared, acc in zip(stage.sets, accumulators):
        if acc.count != inputs.n_tokens:
            raise PipelineError(
                f"{shared.names[0]} saw {acc.count} input rows for {inputs.n_tokens} calibration tokens: the "
                "family table does not describe how this block calls its linears"
            )
    return [acc.finalize() for acc in accumulators], reference


class _Stubs(ForwardSwap):
    """Within a `with`, the given linears run a stand-in forward: the first linear of each input-sharing set of the
    stage feeds its input to the set's Hessian; every one returns zeros of its output's shape, or its real output
    while `passthrough` is set."""

    def __init__(self, linears: Sequence[nn.Linear], recorders: dict[int, HessianAccumulator],
                 device_type: str) -> None:
        super().__init__(linears)
        self.recorders = recorders
        self.device_type = device_type
        self.passthrough = False

    def wrap(self, linear: nn.Linear, forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        acc = self.recorders.get(id(linear))
        out_features = linear.out_features

        def stand_in(*args: Any, **kwargs: Any) -> torch.Tensor:
            x = args[0] if args else kwargs["input"]  # [..., in]
            if acc is not None:
                with torch.autocast(self.device_type, enabled=False):  # the Gram product stays fp32
                    acc.add(x.detach())
            if self.passthrough:
                return forward(*args, **kwargs)
            return x.new_zeros(*x.shape[:-1], out_features)

        return stand_in


def _solve(shared: SharedInputSet, H: torch.Tensor | None, config: QuantConfig, report: QuantizationReport) -> None:
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


