"""Eager calls of the SpQR kernels replayed from per-layer CUDA graphs, to spare the host their launch work.

An eager forward (no torch.compile, no CUDA graph of its own: transformers' default `generate`, most user code) pays
the host's Python and Triton launch work at every SpQR linear, several times what the kernels themselves take at
decode sizes, so eager decoding is bound by the host (docs/kernels.md has the numbers). Here the second eager call
of a layer with the same input shape, dtype and device (and the same packed buffers, bias and outlier bases)
captures the call into a CUDA graph; later calls copy x into the graph's input, replay it and return a copy of its
output: three cheap host operations instead of two Triton launches and the launchers' argument work.

Only small inputs (up to GRAPH_MAX_ROWS rows: decode steps) are captured; prefill-sized inputs, calls made while
some stream is capturing (a caller's own CUDA graph), traced calls (torch.compile, fake tensors) and
`SPQRKIT_EAGER_GRAPHS=0` run the kernels directly. All captures on a device share one memory pool (a
`torch.cuda.MemPool` kept for the process): they are captured one at a time and replayed on the caller's stream,
and each replay's output is copied out at once, so a later replay reusing a temporary's memory cannot touch a
result. A layer's graphs are dropped when its buffers change (moved, reloaded, written in place), and a capture
that fails leaves that key to the direct path with a warning. Not for several threads driving one layer at once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

GRAPH_MAX_ROWS = 32  # rows of x (batch x tokens) up to which eager calls are captured
EAGER_GRAPHS_ENV = "SPQRKIT_EAGER_GRAPHS"  # "0": never capture
_SEEN, _FAILED = 1, -1  # cache states of a key before (or instead of) a graph

_pools: dict = {}  # device index -> (the torch.cuda.MemPool every layer's graphs there share, its anchor graph)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # the captured input (x is copied in before each replay)
    y: torch.Tensor  # the captured output (copied out after each replay)


def wanted(x: torch.Tensor) -> bool:
    """Whether an eager call with this input goes through a graph (see the module docstring)."""
    if x.device.type != "cuda" or os.environ.get(EAGER_GRAPHS_ENV, "1") == "0" or not hasattr(torch.cuda, "MemPool"):
        return False  # (torch.cuda.MemPool: torch >= 2.5)
    rows = x.numel() // max(x.shape[-1], 1)
    return (0 < rows <= GRAPH_MAX_ROWS and not x.requires_grad
            and x.device.index in (None, torch.cuda.current_device())  # (a replay runs on the current device)
            and not torch.cuda.is_current_stream_capturing())


def call(cache: dict, kernel: str, buffers: tuple, x: torch.Tensor,
         run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """run(x) through a graph in `cache` (a layer's own dict), keyed by x's shape, dtype and device, the kernel
    and `buffers` (the key of the tensors the call reads: `linear.tensors_key`): direct on a key's first call (which
    also compiles the kernels: a capture cannot), captured on the second, replayed from then on."""
    full_key = (tuple(x.shape), x.dtype, x.device, kernel, buffers)
    entry = cache.get(full_key)
    if entry is None or entry == _FAILED:
        if entry is None:
            _forget_stale(cache, buffers)
            cache[full_key] = _SEEN
        return run(x)
    if entry == _SEEN:
        try:
            entry = _capture(x, run)
        except RuntimeError as e:  # (CUDA errors included, e.g. a host synchronisation inside run)
            warnings.warn(f"spqrkit: an eager SpQR call could not be captured into a CUDA graph; it runs its kernels "
                          f"directly ({type(e).__name__}: {str(e).strip()[:200]})", stacklevel=3)
            cache[full_key] = _FAILED
            return run(x)
        cache[full_key] = entry
    entry.x.copy_(x)
    entry.graph.replay()
    return entry.y.clone()


def _forget_stale(cache: dict, buffers: tuple) -> None:
    """Drop the graphs of other buffer keys (the layer's buffers changed: their graphs read the old ones)."""
    for k in [k for k in cache if k[4] != buffers]:
        del cache[k]


def _pool(device: torch.device):
    """The shared pool's id. A MemPool object, kept here, holds the device allocator's pool: a pool known only by a
    handle is released when its last graph is freed, and capturing into its handle again then fails inside the
    allocator. torch's pinned-host allocator keeps a pool of the same id, held only by graphs (torch 2.11): a kept
    one-op anchor graph holds that one (without it, dropping a device's last graph and capturing again fails an
    internal assert in CachingHostAllocator and leaves the CUDA generator mid-capture)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _pools:
        with torch.cuda.device(index):
            pool = torch.cuda.MemPool()
            _pools[index] = (pool, _anchor(pool.id, torch.device("cuda", index)))
    return _pools[index][0].id


def _anchor(pool_id, device: torch.device) -> tuple:
    """(graph, its tensor): one tiny op captured into the pool, never replayed, kept for the process."""
    t = torch.zeros(1, device=device)
    return _captured(device, pool_id, t.add_, 1)[0], t


def _capture(x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> _Graph:
    static_x = x.clone()
    graph, y = _captured(x.device, _pool(x.device), run, static_x)
    return _Graph(graph, static_x, y)


def _captured(device: torch.device, pool_id, fn: Callable, arg) -> tuple:
    """(graph, fn(arg)): fn captured into a new CUDA graph allocating from pool `pool_id`, on a side stream that
    follows (and is then followed by) the current one."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        graph.capture_begin(pool=pool_id)
        try:
            out = fn(arg)
        finally:
            graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph, out
