"""Run the SpQR authors' CUDA matvec kernel (PyPI `spqr-quant==0.2.0`) on spqrkit layers, for speed comparisons.

The package
-----------
`spqr_quant` is a pure-Python wheel (Requires-Dist: torch>=2.4, transformers>=4.44, safetensors>=0.4.5; extra `gpu`:
ninja). Only torch and numpy (NOT declared, imported by `spqr_quant/inference.py`) are actually imported; transformers
and safetensors are never imported. Python >= 3.11 (it uses `enum.StrEnum`).
`import spqr_quant` JIT-compiles the kernel at import time: `spqr_quant/inference_kernels/cuda_kernel.py` calls
`torch.utils.cpp_extension.load(name="spqr_cuda", sources=[spqr_cuda.cpp, spqr_cuda_kernel.cu],
extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-arch=native", "-lineinfo"])`, which needs ninja, nvcc (CUDA_HOME)
and a visible GPU (`-arch=native`). The build goes to `$TORCH_EXTENSIONS_DIR/spqr_cuda` (default
`~/.cache/torch_extensions/py3XX_cuXXX/spqr_cuda`); this module sets TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
unless it is already set. It then registers torch ops `torch.ops.spqr_cuda.{spqr_mul, spqr_mul_fused,
dequantize_compressed, tensor_compress_interleaved, spqr_mul_timer, torch_mul_timer}` ("default" = CompositeExplicit
impls). `dequantize_compressed` and `tensor_compress_interleaved` are HOST code (they dereference `data_ptr()` on the
CPU): call them with CPU tensors only.

Only one layout is supported: 3-bit base codes, 16x16 tiles (beta1 = 16 columns per first-level group, beta2 = 16
rows per second-level group), 3-bit scale and zero codes, fp16 second-level statistics. Kernel launch needs
out % 16 == 0 and in % 16 == 0 (smaller tile counts are not handled), and puts the whole input vector in dynamic
shared memory (2 * in bytes) WITHOUT raising the 48 KiB default limit, so in <= ~23.5k (LLaMA-2-70B's down_proj,
in = 28672, cannot launch). Outlier columns are read as a signed `short`: in <= 32768 when there are outliers. Launch
errors are not checked by their code (the output is left unwritten), so `to_spqr_quant` refuses such shapes.

Their storage (class `spqr_quant.QuantizedLinear(rows, cols, bits, beta1, beta2, dense_weights, row_offsets,
col_vals, in_perm)`):

* `dense_weights` int64 [out/16 * in/16 * 16]: one 64-bit word per (row, 16-column tile), ordered
  [row_tile][col_tile][row_in_tile] (word index = (r // 16) * in + (c // 16) * 16 + r % 16). Word bits: 0-2 the row's
  3-bit first-level scale code, 3-5 its zero code, 6+3j .. 8+3j base code of column 16*tile + j (j = 0..15), 54-61
  one byte of the tile's second-level statistics, 62-63 zero. The tile's 64-bit second-level word is
  [bits 0-15 scale-of-scale | 16-31 scale-of-zero | 32-47 zero-of-scale | 48-63 zero-of-zero] (fp16 each); rows
  2k and 2k+1 of the tile both carry byte k (the kernel ORs it back together with warp shuffles).
* `row_offsets` int32: CSR row pointers [out + 1], or "PTCSR" [out/16 + 1] (chosen by length). PTCSR stores the
  outliers of each 16-row block interleaved (entry k of row j of the block at block_start + 16 k + j), padded with zero
  words to the block's longest row; an all-zero word ends a row's list.
* `col_vals` int32 [nnz]: low 16 bits the permuted column, high 16 bits the fp16 outlier value. Outliers are ADDED to
  the base weight (ours replace it).
* `in_perm` int32 [in/2]: the uint16 permutation, two per word (element 2i in the low half); the fused kernel
  gathers x_perm[c] = x[in_perm[c]], i.e. the same meaning as our `perm` (permuted -> original column).

Kernel arithmetic (`spqr_quantized_matvec[_fused]`): s = ss*(sq - sz), z = zs*(zq - zz), w = s*(q - z), each
operation in fp16 (round to nearest); then acc += float(w) * float(x) in fp32 (fmaf), outliers acc += float(v) *
float(x[c]) in fp32; y = fp16(acc). Batch 1 only (their `QuantizedLinear.forward` loops over tokens, one launch each).
Feature flag 0x101 (`FeatureFlags.SPARSE_FUSED_FP32`, what their forward uses) makes every call end with
`cudaDeviceSynchronize()`; 0x111 (`SPARSE_FUSED_FP32_ASYNC`) does not. `spqr_quant_matvec` uses the async flag by
default (the kernel alone; this is also what allows CUDA-graph capture); pass `sync=True` for their forward's
behaviour.

The conversion (`to_spqr_quant`)
--------------------------------
Storage is carried over EXACTLY: base codes, 3-bit scale/zero codes, fp16 second-level statistics (per 16 rows x 16
columns; ours are [out/16, n_groups, 2] with the same meaning), the permutation and the outlier positions are copied
bit for bit. What differs (inherent to their format; measured by benchmarks/check_spqr_quant_adapter.py):

1. Arithmetic: they dequantize in fp16 (5 rounded operations per weight: s, z each sub+mul, w sub+mul), we in fp32.
   Base weights therefore differ by a few fp16 ulps of the weight (~1e-3 relative) - the precision of their format.
2. Outliers: theirs are added to the base weight, ours replace it. We store v' = fp16(v - b) where b is their fp16
   base weight at that position. Because our base code under an outlier is never read, we first RECODE it to the
   3-bit code that makes v - b exactly representable in fp16 if there is one, else the one whose fp16 base weight is
   nearest to v (this changes nothing in our layer's semantics); the effective weight b + v' is then exactly v, or
   off by at most half an fp16 ulp of |v - b| (random spqrkit layers: ~90% of outliers exact, the rest off by
   <= 1.2e-4 for |v| up to ~0.4, i.e. the size of the base weights' own fp16 differences; without recoding ~40% exact).
   A residual of exactly +0.0 is stored as -0.0 so that the word is never the all-zero PTCSR terminator.
3. Output is fp16 (fp32 accumulation), as ours.

So `to_spqr_quant` is an exact-storage, same-semantics conversion; no random substitute layer is needed for the speed
comparison (same shape, same number of outliers, same per-row outlier distribution, same permutation).
`recode_outliers=False` keeps our base codes under outliers (larger outlier residuals, still b + v' ~ v).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from spqrkit.config import QuantConfig
from spqrkit.format.pack import unpack_layer

WHEEL_NAME = "spqr_quant-0.2.0-py3-none-any.whl"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXTENSIONS_DIR = "/tmp/torch_extensions"
DEFAULT_UNPACK_DIR = "/tmp/spqr_quant_site"

FLAG_SYNC = 0x101  # FeatureFlags.SPARSE_FUSED_FP32: ends every call with cudaDeviceSynchronize()
FLAG_ASYNC = 0x111  # FeatureFlags.SPARSE_FUSED_FP32_ASYNC
TILE = 16
BITS = 3
_SMEM_LIMIT = 48 * 1024  # default dynamic + static shared memory per block (their code never opts in to more)


# ------------------------------------------------------------------------------------------------ availability
def _find_wheel() -> Path | None:
    for cand in (os.environ.get("SPQR_QUANT_WHEEL"), REPO_ROOT / ".whl" / WHEEL_NAME):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def _ensure_importable() -> str | None:
    """Make `import spqr_quant` possible without importing it (importing compiles the kernel). Falls back to
    unpacking the wheel from .whl/ (or $SPQR_QUANT_WHEEL) into $SPQR_QUANT_SITE (default /tmp/spqr_quant_site)."""
    if importlib.util.find_spec("spqr_quant") is not None:
        return None
    wheel = _find_wheel()
    if wheel is None:
        return f"spqr_quant is not installed and no wheel at {REPO_ROOT / '.whl' / WHEEL_NAME} ($SPQR_QUANT_WHEEL)"
    site = Path(os.environ.get("SPQR_QUANT_SITE", DEFAULT_UNPACK_DIR))
    if not (site / "spqr_quant" / "__init__.py").is_file():
        site.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    if importlib.util.find_spec("spqr_quant") is None:
        return f"could not import spqr_quant from the unpacked wheel in {site}"
    return None


def _prerequisites() -> str | None:
    """Everything `import spqr_quant` needs, checked without compiling."""
    if sys.version_info < (3, 11):
        return f"spqr_quant needs Python >= 3.11 (enum.StrEnum), this is {sys.version.split()[0]}"
    try:
        import numpy  # noqa: F401  (imported by spqr_quant.inference, not declared in its metadata)
    except ImportError:
        return "numpy is missing (spqr_quant imports it)"
    if not torch.cuda.is_available():
        return "no CUDA GPU (spqr_quant compiles with -arch=native and runs CUDA only)"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit found (nvcc / CUDA_HOME) to JIT-compile spqr_quant's kernel"
    if not cpp_extension.is_ninja_available():
        return "ninja is missing (torch.utils.cpp_extension.load needs it to build spqr_quant's kernel)"
    _add_pip_cuda_headers(cpp_extension.CUDA_HOME)
    return _ensure_importable()


def _add_pip_cuda_headers(cuda_home: str) -> None:
    """spqr_cuda.cpp includes ATen/cuda/CUDAContext.h, which needs cusparse.h / cublas_v2.h / cusolverDn.h. If the
    toolkit at CUDA_HOME lacks them, add the include folders of the pip `nvidia-*` wheels torch depends on to CPATH."""
    if (Path(cuda_home) / "include" / "cusparse.h").is_file():
        return
    found = []
    for base in map(Path, sys.path):
        nv = base / "nvidia"
        if nv.is_dir():
            found += [str(h.parent) for h in nv.glob("**/include/cusparse.h")]
            found += [str(d) for d in nv.glob("*/include") if d.is_dir()] + [str(d) for d in nv.glob("*/*/include")]
    if found:
        old_cpath = os.environ.get("CPATH")
        os.environ["CPATH"] = os.pathsep.join(dict.fromkeys(found + ([old_cpath] if old_cpath else [])))


@functools.lru_cache(maxsize=1)
def _load() -> tuple[object | None, str | None]:
    reason = _prerequisites()
    if reason is not None:
        return None, reason
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR)
    try:
        module = importlib.import_module("spqr_quant")  # compiles spqr_cuda on first import (a minute or two)
    except Exception as exc:
        return None, f"import spqr_quant failed (kernel build?): {type(exc).__name__}: {str(exc).strip()[-2000:]}"
    return module, None


def spqr_quant_available() -> str | None:
    """None if the authors' kernel is usable here (building it on first call), else why not."""
    return _load()[1]


def load_spqr_quant():
    """The imported `spqr_quant` module (kernel built), or RuntimeError with the reason."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    return module


# ------------------------------------------------------------------------------------------------ compatibility
def _block_width(in_features: int) -> int:
    for mult, width in ((256, 16), (128, 8), (64, 4), (32, 2)):
        if in_features % mult == 0:
            return width
    return 1


def incompatibility(shape: tuple[int, int], config: QuantConfig, nnz: int = 0) -> str | None:
    """Why spqr-quant cannot hold / run this layer, or None."""
    out_f, in_f = shape
    want = {"wbits": BITS, "beta1": TILE, "beta2": TILE, "scale_bits": BITS, "zero_bits": BITS}
    got = {k: getattr(config, k) for k in want}
    if got != want:
        return f"spqr-quant supports only {want}, the layer has {got}"
    if out_f % TILE or in_f % TILE:
        return f"spqr-quant needs out and in divisible by 16, got {shape}"
    width = _block_width(in_f)
    static_smem = 64 * -(-width // 2) * 4 + (TILE + 1) * 4
    if 2 * in_f + static_smem > _SMEM_LIMIT:
        return f"in={in_f}: the input vector (2*in bytes) does not fit spqr-quant's 48 KiB shared memory"
    if nnz and in_f > 32768:
        return f"in={in_f}: spqr-quant reads outlier columns as signed 16-bit (in <= 32768)"
    return None


# ------------------------------------------------------------------------------------------------ fp16 emulation
def _round_half(x: torch.Tensor) -> torch.Tensor:
    """float64 -> nearest fp16 (ties to even), correctly rounded (torch rounds double -> half via float: not)."""
    return torch.from_numpy(np.ascontiguousarray(x.detach().cpu().numpy()).astype(np.float16))


def _hsub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _round_half(a.double() - b.double())  # the exact difference of two fp16 fits float64


def _hmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _round_half(a.double() * b.double())


def their_statistics(codes: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """First-level statistic as their kernel computes it: fp16(S * fp16(code - Z)). codes uint8 [out, G],
    stats fp16 [out/16, G, 2] -> fp16 [out, G]."""
    out_f, groups = codes.shape
    s = stats[..., 0].repeat_interleave(TILE, 0)
    z = stats[..., 1].repeat_interleave(TILE, 0)
    return _hmul(s, _hsub(codes.to(torch.float16), z)).reshape(out_f, groups)


def their_base_weights(codes: torch.Tensor, s16: torch.Tensor, z16: torch.Tensor) -> torch.Tensor:
    """fp16 [out, in] (permuted order) = fp16(s * fp16(q - z)), groups of 16 columns."""
    s = s16.repeat_interleave(TILE, 1)[:, : codes.shape[1]]
    z = z16.repeat_interleave(TILE, 1)[:, : codes.shape[1]]
    return _hmul(s, _hsub(codes.to(torch.float16), z))


# ------------------------------------------------------------------------------------------------ conversion
def _to_int32_bits(v: torch.Tensor) -> torch.Tensor:
    v = v.to(torch.int64) & 0xFFFFFFFF
    return torch.where(v >= 1 << 31, v - (1 << 32), v).to(torch.int32)


def _half_bits(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).contiguous().view(torch.int16).to(torch.int64) & 0xFFFF


def pack_spqr_quant_tensors(
    tensors: dict[str, torch.Tensor],
    shape: tuple[int, int],
    config: QuantConfig,
    *,
    sparse_strategy: str = "csr",
    recode_outliers: bool = True,
) -> dict[str, torch.Tensor]:
    """Our packed layer -> spqr-quant's buffers (CPU): dense_weights int64, row_offsets int32, col_vals int32,
    in_perm int32. Pure torch, no spqr_quant needed. Also returns the legacy-format inputs of their own packer
    (`legacy_*`, for tests) and `nnz`."""
    if sparse_strategy not in ("csr", "ptcsr"):
        raise ValueError(f"sparse_strategy must be 'csr' or 'ptcsr', got {sparse_strategy!r}")
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    qw = unpack_layer(tensors, shape, config)
    out_f, in_f = shape
    nnz = int(qw.outlier_values.numel())
    reason = incompatibility(shape, config, nnz)
    if reason is not None:
        raise ValueError(reason)
    rt, ct = out_f // TILE, in_f // TILE

    codes = qw.codes.clone()  # uint8 [out, in], permuted columns
    sc, zc = qw.scale_codes, qw.zero_codes  # uint8 [out, G]
    s16 = their_statistics(sc, qw.scale_stats)
    z16 = their_statistics(zc, qw.zero_stats)

    # Outliers: additive residuals against their fp16 base weight (optionally after recoding the unused base code).
    rows, cols = qw.outlier_coo()
    vals = qw.outlier_values.to(torch.float16)
    if nnz:
        g = cols // TILE
        s_o, z_o = s16[rows, g], z16[rows, g]  # fp16 [nnz]
        if recode_outliers:
            cand = torch.arange(1 << BITS, dtype=torch.float16)[None, :].expand(nnz, -1)
            base = _hmul(s_o[:, None].expand_as(cand), _hsub(cand, z_o[:, None].expand_as(cand)))  # [nnz, 8]
            diff = vals.double()[:, None] - base.double()  # exact
            inexact = (_round_half(diff).double() != diff).double()
            # Prefer a code whose residual is exact in fp16, then the nearest base weight (first minimum: lowest code).
            best = (inexact * 1e9 + diff.abs()).argmin(1)
            codes[rows, cols] = best.to(torch.uint8)
        b = _hmul(s_o, _hsub(codes[rows, cols].to(torch.float16), z_o))
        resid = _round_half(vals.double() - b.double())
        resid = torch.where((resid == 0) & ~torch.signbit(resid), torch.full_like(resid, -0.0), resid)
    else:
        resid = vals

    # Dense words: one per (row, column tile).
    q = codes.to(torch.int64).reshape(out_f, ct, TILE)
    word = sc.to(torch.int64) | (zc.to(torch.int64) << BITS)  # [out, ct]
    for j in range(TILE):
        word |= q[:, :, j] << (2 * BITS + BITS * j)
    second = (
        _half_bits(qw.scale_stats[..., 0])
        | (_half_bits(qw.zero_stats[..., 0]) << 16)
        | (_half_bits(qw.scale_stats[..., 1]) << 32)
        | (_half_bits(qw.zero_stats[..., 1]) << 48)
    )  # [rt, ct] uint64 bit pattern in int64 (may be negative; only shifted/masked below)
    byte_of_row = (torch.arange(TILE) // 2) * 8  # row k of a tile carries byte k // 2
    frag = (second[:, None, :] >> byte_of_row[None, :, None]) & 0xFF  # [rt, 16, ct]
    word = word.reshape(rt, TILE, ct) | (frag << (BITS * (TILE + 2)))
    dense_weights = word.permute(0, 2, 1).contiguous().reshape(-1)  # [rt][ct][row]

    # Outliers: CSR or PTCSR.
    row_ptr = qw.outlier_row_ptr.to(torch.int64)
    col_vals = torch.zeros(0, dtype=torch.int32)
    if nnz:
        col_vals = _to_int32_bits((_half_bits(resid) << 16) | cols.to(torch.int64))
    if sparse_strategy == "csr":
        row_offsets = row_ptr.to(torch.int32)
        col_vals_out = col_vals
    else:
        counts = row_ptr.diff().reshape(rt, TILE)
        block_len = counts.amax(1) * TILE
        block_start = torch.zeros(rt + 1, dtype=torch.int64)
        block_start[1:] = torch.cumsum(block_len, 0)
        row_offsets = block_start.to(torch.int32)
        col_vals_out = torch.zeros(int(block_start[-1]), dtype=torch.int32)
        if nnz:
            k = torch.arange(nnz) - row_ptr[rows]  # index within its row
            col_vals_out[block_start[rows // TILE] + k * TILE + rows % TILE] = col_vals

    perm = qw.perm.to(torch.int64)
    in_perm = _to_int32_bits(perm[0::2] | (perm[1::2] << 16))

    return {
        "dense_weights": dense_weights,
        "row_offsets": row_offsets,
        "col_vals": col_vals_out,
        "in_perm": in_perm,
        "nnz": nnz,
        # Inputs of their own packer (tensor_compress_interleaved), for cross-checks: int8 codes, tile-column-major
        # statistic codes and second-level statistics, CSR outliers.
        "legacy_W": codes.to(torch.int8),
        "legacy_W_s": sc.to(torch.int8).reshape(rt, TILE, ct).permute(2, 0, 1).contiguous().reshape(-1),
        "legacy_W_z": zc.to(torch.int8).reshape(rt, TILE, ct).permute(2, 0, 1).contiguous().reshape(-1),
        "legacy_W_s_s": qw.scale_stats[..., 0].t().contiguous().reshape(-1),
        "legacy_W_s_z": qw.scale_stats[..., 1].t().contiguous().reshape(-1),
        "legacy_W_z_s": qw.zero_stats[..., 0].t().contiguous().reshape(-1),
        "legacy_W_z_z": qw.zero_stats[..., 1].t().contiguous().reshape(-1),
        "legacy_row_offsets": row_ptr.to(torch.int32),
        "legacy_col_vals": col_vals,
    }


def decode_spqr_quant_tensors(
    dense_weights: torch.Tensor, row_offsets: torch.Tensor, col_vals: torch.Tensor, in_perm: torch.Tensor | None,
    shape: tuple[int, int],
) -> torch.Tensor:
    """Effective fp32 weight [out, in] (original column order) of spqr-quant buffers, decoded from the bits with the
    kernel's arithmetic: fp16 base weight + fp16 outlier, summed in fp32 (the kernel adds both products in fp32)."""
    out_f, in_f = shape
    rt, ct = out_f // TILE, in_f // TILE
    w = dense_weights.cpu().to(torch.int64).reshape(rt, ct, TILE).permute(0, 2, 1)  # [rt, 16 rows, ct]
    frag = (w >> (BITS * (TILE + 2))) & 0x3FF
    second = torch.zeros(rt, ct, dtype=torch.int64)
    for k in range(TILE):  # the kernel: partial << (8 * (row // 2)), OR over the tile's rows
        second |= frag[:, k, :] << (8 * (k // 2))

    def half_at(shift):
        return _bits_to_half((second >> shift) & 0xFFFF)

    ss, zs, sz, zz = half_at(0), half_at(16), half_at(32), half_at(48)  # [rt, ct]
    w = w.reshape(out_f, ct)
    sq = (w & 7).to(torch.float16)
    zq = ((w >> 3) & 7).to(torch.float16)

    def rep(t):
        return t.repeat_interleave(TILE, 0)

    s16 = _hmul(rep(ss), _hsub(sq, rep(sz)))
    z16 = _hmul(rep(zs), _hsub(zq, rep(zz)))
    q = torch.stack([(w >> (2 * BITS + BITS * j)) & 7 for j in range(TILE)], dim=-1).reshape(out_f, in_f)
    base = their_base_weights(q.to(torch.uint8), s16, z16).float()

    ro = row_offsets.cpu().to(torch.int64)
    cv = col_vals.cpu().to(torch.int64) & 0xFFFFFFFF
    if cv.numel():
        if ro.numel() == out_f + 1:
            rows = torch.repeat_interleave(torch.arange(out_f), ro.diff())
        else:  # PTCSR: entry e of block b belongs to row 16 b + (e - start_b) % 16
            block = torch.repeat_interleave(torch.arange(ro.numel() - 1), ro.diff())
            rows = block * TILE + (torch.arange(cv.numel()) - ro[block]) % TILE
            keep = cv != 0
            rows, cv = rows[keep], cv[keep]
        cols = (cv & 0xFFFF).to(torch.int16).to(torch.int64)  # signed short, as the kernel reads it
        vals = _bits_to_half(cv >> 16).float()
        base.index_put_((rows, cols), vals, accumulate=True)
    if in_perm is None or in_perm.numel() == 0:
        return base
    p = in_perm.cpu().to(torch.int64) & 0xFFFFFFFF
    perm = torch.stack([p & 0xFFFF, p >> 16], dim=-1).reshape(-1)
    out = torch.empty_like(base)
    out[:, perm] = base
    return out


def _bits_to_half(bits: torch.Tensor) -> torch.Tensor:
    b = bits.to(torch.int64) & 0xFFFF
    return torch.where(b >= 1 << 15, b - (1 << 16), b).to(torch.int16).view(torch.float16)


def to_spqr_quant(
    tensors: dict[str, torch.Tensor],
    shape: tuple[int, int],
    config: QuantConfig,
    *,
    device: str | torch.device = "cuda",
    sparse_strategy: str = "csr",
    recode_outliers: bool = True,
    use_perm: bool = True,
):
    """Our packed layer (docs/format.md) -> `spqr_quant.QuantizedLinear` on `device`. `sparse_strategy`: their
    "csr" or "ptcsr" outlier storage (their converter's `optimize_latency` times both and keeps the faster).
    `use_perm=False` drops the permutation (their non-fused kernel; x must then be given in permuted order)."""
    spqr_quant = load_spqr_quant()
    p = pack_spqr_quant_tensors(tensors, shape, config, sparse_strategy=sparse_strategy,
                                recode_outliers=recode_outliers)
    out_f, in_f = shape
    layer = spqr_quant.QuantizedLinear(
        out_f, in_f, BITS, TILE, TILE, p["dense_weights"], p["row_offsets"], p["col_vals"],
        p["in_perm"] if use_perm else None,
    )
    return layer.to(device)


def spqr_quant_matvec(layer, x: torch.Tensor, out: torch.Tensor | None = None, *, sync: bool = False) -> torch.Tensor:
    """y = W x with their kernel, x fp16 [in] or [1, in] on the layer's device -> fp16 [out]. One kernel launch
    (the fused one, which gathers x through the permutation, when the layer has one). `sync=True` uses the flag of
    their own forward (cudaDeviceSynchronize after the launch)."""
    if x.dim() == 2:
        if x.shape[0] != 1:
            raise ValueError(f"spqr-quant's kernel is matvec only (batch 1); got x {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 1 or x.shape[0] != layer.n:
        raise ValueError(f"x must be [{layer.n}] or [1, {layer.n}], got {tuple(x.shape)}")
    if x.dtype != torch.float16:
        raise ValueError(f"x must be float16, got {x.dtype}")
    dev = layer.dense_weights.device
    x = x.to(dev).contiguous()
    if x.data_ptr() % 16:  # the non-fused kernel loads x in 16-byte vectors
        x = x.clone()
    if out is None:
        out = torch.empty(layer.m, dtype=torch.float16, device=dev)
    flag = FLAG_SYNC if sync else FLAG_ASYNC
    if layer.should_reorder():
        torch.ops.spqr_cuda.spqr_mul_fused(
            layer.m, layer.n, layer.bits, layer.beta1, layer.beta2, layer.in_perm, layer.dense_weights,
            layer.row_offsets, layer.col_vals, layer.nnz, x, flag, out, out,
        )
    else:
        torch.ops.spqr_cuda.spqr_mul(
            layer.m, layer.n, layer.bits, layer.beta1, layer.beta2, layer.dense_weights, layer.row_offsets,
            layer.col_vals, layer.nnz, x, flag, out, out,
        )
    return out
