"""Check benchmarks/spqr_quant_adapter.py: our packed layer -> spqr-quant's layout -> the same weights.

    python benchmarks/check_spqr_quant_adapter.py                 # CPU: pure-torch checks (+ their host C++ if nvcc)
    python benchmarks/check_spqr_quant_adapter.py --gpu-shapes 4096x4096,11008x4096,4096x11008   # on a GPU machine

Always (CPU): our random `spqr-w3` layer is converted; the pure-torch decoder of their bits (kernel arithmetic:
fp16 dequantization, outliers added) is compared with `dequantize_packed`; CSR and PTCSR must decode identically.

Their own reference code, when it can be built: on a GPU machine the real `spqr_quant` extension, elsewhere (no GPU,
but nvcc / CUDA headers present) a CPU-only build of the host functions `dequantize_compressed` and
`tensor_compress_interleaved` cut verbatim from the wheel's spqr_cuda.cpp. Then their packer, fed the legacy-format
inputs, must produce bit for bit our `dense_weights` (and PTCSR buffers), and their host dequantization must equal our
decoder rounded to fp16, bit for bit.

With CUDA: their kernel's y = W x (fused, permuted; CSR and PTCSR; async and sync flags; their QuantizedLinear.forward)
against x @ W.T from our reference dequantization (fp32) and from their effective weights. Prints max abs / rel errors.
Exit status 1 if a bit-exact check fails or an error exceeds its bound.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spqr_quant_adapter as A

from spqrkit.config import get_preset
from spqrkit.format.pack import dequantize_packed, unpack_layer
from spqrkit.format.synthetic import random_packed_layer

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        FAILURES.append(what)


def errors(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """max |a - ref| and that over max |ref|."""
    d = (a.float() - ref.float()).abs().max().item()
    return d, d / max(ref.float().abs().max().item(), 1e-30)


# ------------------------------------------------------------------------------------------------ their host code
_HOST_FUNCS = (
    "__half int2half_rd(",
    "template<class Bit_t, class Scalar_t> Scalar_t host_dequantize(",
    "void dequantize_compressed(",
    "void tensor_compress_interleaved(",
)


def _package_dir() -> Path | None:
    reason = A._ensure_importable()
    if reason is not None:
        return None
    spec = importlib.util.find_spec("spqr_quant")
    return Path(spec.origin).parent if spec and spec.origin else None


def _load_sparse_util(pkg: Path):
    """Their pure-Python sparse_util.py, loaded from its file (importing the package would build the kernel)."""
    spec = importlib.util.spec_from_file_location("_spqr_quant_sparse_util", pkg / "sparse_util.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_host_reference(pkg: Path):
    """CPU-only extension made of their host functions, cut verbatim from spqr_cuda.cpp (needs CUDA headers for
    cuda_fp16.h, not a GPU)."""
    from torch.utils import cpp_extension

    cuda_home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if Path("/usr/local/cuda").is_dir() else None)
    if cuda_home is None or not (Path(cuda_home) / "include" / "cuda_fp16.h").is_file():
        return None, "no CUDA headers (cuda_fp16.h) to compile their host code"
    kdir = pkg / "inference_kernels"
    src = (kdir / "spqr_cuda.cpp").read_text()
    parts = []
    for sig in _HOST_FUNCS:
        start = src.index(sig)
        parts.append(src[start: src.index("\n}\n", start) + 3])
    code = "\n".join(
        ["#include <torch/extension.h>", "#include <cuda_fp16.h>", '#include "common.cuh"',
         "#define UPDIV(X, Y) (((X) + (Y)-1) / (Y))", *parts,
         "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {",
         '  m.def("dequantize_compressed", &dequantize_compressed);',
         '  m.def("tensor_compress_interleaved", &tensor_compress_interleaved);', "}"]
    )
    build = Path(os.environ.get("TORCH_EXTENSIONS_DIR", A.DEFAULT_EXTENSIONS_DIR)) / "spqr_quant_host_ref"
    build.mkdir(parents=True, exist_ok=True)
    (build / "spqr_host_ref.cpp").write_text(code)
    try:
        mod = cpp_extension.load(
            name="spqr_quant_host_ref", sources=[str(build / "spqr_host_ref.cpp")], extra_cflags=["-O1"],
            extra_include_paths=[str(kdir), str(Path(cuda_home) / "include")], build_directory=str(build),
            verbose=False,
        )
    except Exception as exc:
        return None, f"host reference build failed: {type(exc).__name__}: {str(exc)[-800:]}"
    return mod, None


def check_against_their_host_code(ref, sparse_util, tensors, shape, cfg, w_ours) -> None:
    out_f, in_f = shape
    for strategy in ("csr", "ptcsr"):
        p = A.pack_spqr_quant_tensors(tensors, shape, cfg, sparse_strategy=strategy)
        # Their packer on the legacy inputs.
        dense = torch.zeros_like(p["dense_weights"])
        if strategy == "csr":
            ro_out, cv_out = p["legacy_row_offsets"], p["legacy_col_vals"]
        else:
            ro_out, cv_out = sparse_util.init_ptcsr(p["legacy_row_offsets"])
        ref.tensor_compress_interleaved(
            out_f, in_f, A.BITS, p["legacy_W"], A.TILE, A.TILE, p["legacy_W_s"], p["legacy_W_z"],
            p["legacy_W_s_s"], p["legacy_W_s_z"], p["legacy_W_z_s"], p["legacy_W_z_z"], p["legacy_row_offsets"],
            ro_out, p["legacy_col_vals"], cv_out, 0 if strategy == "csr" else 1, dense,
        )
        check(torch.equal(dense, p["dense_weights"]), f"[{strategy}] their packer's dense_weights == ours, bit for bit")
        check(torch.equal(ro_out.to(torch.int32), p["row_offsets"]) and torch.equal(cv_out.to(torch.int32),
              p["col_vals"]), f"[{strategy}] their row_offsets / col_vals == ours")
        # Their host dequantization (permuted column order, fp16, outliers added in fp32 then rounded).
        deq = torch.zeros(out_f, in_f, dtype=torch.float16)
        ref.dequantize_compressed(out_f, in_f, A.BITS, A.TILE, A.TILE, p["dense_weights"], p["row_offsets"],
                                  p["col_vals"], p["col_vals"].numel(), deq)
        mine_perm = A.decode_spqr_quant_tensors(p["dense_weights"], p["row_offsets"], p["col_vals"], None, shape)
        same = torch.equal(deq.view(torch.int16), mine_perm.half().view(torch.int16))
        check(same, f"[{strategy}] their dequantize_compressed == our decoder (fp16), bit for bit")
        if not same:
            print("        max |diff| =", (deq.float() - mine_perm.half().float()).abs().max().item())
        perm = unpack_layer(tensors, shape, cfg).perm
        theirs = torch.empty(out_f, in_f)
        theirs[:, perm] = deq.float()
        abs_e, rel_e = errors(theirs, w_ours)
        print(f"        their dequantize_compressed vs our dequantize_packed: max abs {abs_e:.3e}, rel {rel_e:.3e}")


# ------------------------------------------------------------------------------------------------ checks
def check_conversion(shape, cfg, seed: int, **layer_kwargs):
    tensors = random_packed_layer(*shape, cfg, seed=seed, **layer_kwargs)
    w_ours = dequantize_packed(tensors, shape, cfg)
    nnz = tensors["outlier_values"].numel()
    print(f"layer {shape}, {nnz} outliers ({nnz / (shape[0] * shape[1]):.2%})")
    decoded = {}
    for strategy in ("csr", "ptcsr"):
        for recode in (True, False):
            p = A.pack_spqr_quant_tensors(tensors, shape, cfg, sparse_strategy=strategy, recode_outliers=recode)
            w = A.decode_spqr_quant_tensors(p["dense_weights"], p["row_offsets"], p["col_vals"], p["in_perm"], shape)
            decoded[strategy, recode] = w
            abs_e, rel_e = errors(w, w_ours)
            print(f"  [{strategy}, recode_outliers={recode}] their effective W vs ours: max abs {abs_e:.3e}, "
                  f"rel {rel_e:.3e}")
            # fp16 dequantization: 5 rounded ops, each <= 2^-11 relative; bound generously at 2^-8 of max |W|.
            check(rel_e < 2**-8, f"[{strategy}, recode={recode}] error within fp16-arithmetic bound")
    check(torch.equal(decoded["csr", True], decoded["ptcsr", True]), "CSR and PTCSR decode to the same weights")

    # Outliers alone: effective b + v' against v (one fp16 rounding of v - b: <= half an fp16 ulp of |v - b|).
    qw = unpack_layer(tensors, shape, cfg)
    rows, cols = qw.outlier_coo()
    if nnz:
        orig_cols = qw.perm[cols]
        v = qw.outlier_values.float()
        for recode in (True, False):
            d = (decoded["csr", recode][rows, orig_cols] - v).abs()
            print(f"  outliers, recode={recode}: max |eff - v| {d.max().item():.3e}, "
                  f"exact {int((d == 0).sum())}/{nnz}")
            d = (decoded["csr", recode][rows, orig_cols].double() - v.double()).abs()
            p = A.pack_spqr_quant_tensors(tensors, shape, cfg, recode_outliers=recode)
            b = A.decode_spqr_quant_tensors(p["dense_weights"], p["row_offsets"], torch.zeros(0, dtype=torch.int32),
                                            p["in_perm"], shape)[rows, orig_cols].double()
            r = (v.double() - b).abs()  # exact |v - b|; its fp16 ulp:
            ulp = torch.exp2(torch.floor(torch.log2(r.clamp_min(2**-14))) - 10)
            check(bool((d <= ulp / 2).all()), f"recode={recode}: outliers within half an fp16 ulp of |v - b|")
    return tensors, w_ours


def check_gpu(shape, cfg, seed: int, iters: int) -> None:
    tensors = random_packed_layer(*shape, cfg, seed=seed, dense_rows=2, empty_rows=2)
    reason = A.incompatibility(shape, cfg, tensors["outlier_values"].numel())
    if reason:
        print(f"layer {shape}: skipped on GPU ({reason})")
        return
    w_ours = dequantize_packed(tensors, shape, cfg).cuda()
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape[1], generator=gen, device="cuda").half()
    ref = w_ours @ x.float()
    print(f"GPU layer {shape}, {tensors['outlier_values'].numel()} outliers")
    p = A.pack_spqr_quant_tensors(tensors, shape, cfg)  # CSR and PTCSR decode identically (checked on CPU)
    w_theirs = A.decode_spqr_quant_tensors(p["dense_weights"], p["row_offsets"], p["col_vals"], p["in_perm"], shape)
    ref_theirs = w_theirs.cuda() @ x.float()
    del p, w_theirs
    for strategy in ("csr", "ptcsr"):
        layer = A.to_spqr_quant(tensors, shape, cfg, sparse_strategy=strategy)
        for sync in (False, True):
            y = A.spqr_quant_matvec(layer, x, sync=sync)
            torch.cuda.synchronize()
            abs_e, rel_e = errors(y, ref)
            abs_t, rel_t = errors(y, ref_theirs)
            print(f"  [{strategy}, sync={sync}] kernel vs x@W_ours.T: max abs {abs_e:.3e}, rel {rel_e:.3e}; "
                  f"vs x@W_theirs.T: max abs {abs_t:.3e}, rel {rel_t:.3e}")
            check(bool(torch.isfinite(y).all()) and rel_t < 2e-3, f"[{strategy}, sync={sync}] kernel == their "
                  "effective weights within fp16 output rounding")
            check(rel_e < 1e-2, f"[{strategy}, sync={sync}] kernel close to our reference")
        y_fwd = layer(x.view(1, 1, -1)).reshape(-1)  # their QuantizedLinear.forward
        check(torch.equal(y_fwd, A.spqr_quant_matvec(layer, x)), f"[{strategy}] their forward() == adapter matvec")
        if iters:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            out = torch.empty(shape[0], dtype=torch.float16, device="cuda")
            for _ in range(10):
                A.spqr_quant_matvec(layer, x, out)
            start.record()
            for _ in range(iters):
                A.spqr_quant_matvec(layer, x, out)
            end.record()
            torch.cuda.synchronize()
            print(f"  [{strategy}] {start.elapsed_time(end) / iters * 1e3:.1f} us per call (eager loop, async flag, "
                  "incl. dispatcher overhead; rough)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="256x512", help="OUTxIN of the CPU check layer")
    ap.add_argument("--gpu-shapes", default="32x96,48x208,256x512,4096x4096,4096x11008",
                    help="OUTxIN,... (32x96 and 48x208 exercise their narrow-block launch paths)")
    ap.add_argument("--no-host-build", action="store_true", help="skip building their host C++ on a CPU machine")
    ap.add_argument("--iters", type=int, default=200, help="rough timing iterations on GPU (0: none)")
    args = ap.parse_args()
    cfg = get_preset("spqr-w3")
    shape = tuple(int(v) for v in args.shape.split("x"))

    tensors, w_ours = check_conversion(shape, cfg, seed=0)
    t2, w2 = check_conversion(shape, cfg, seed=1, outlier_share=0.05, dense_rows=3, empty_rows=3)

    reason = A.spqr_quant_available()  # builds their extension when a GPU is present
    print(f"spqr_quant kernel: {'available' if reason is None else 'unavailable: ' + reason}")
    pkg = _package_dir()
    ref = None
    if reason is None:
        ref = torch.ops.spqr_cuda  # host functions; CPU tensors
        print("their host reference: the real spqr_cuda extension")
    elif pkg is not None and not args.no_host_build:
        ref, why = build_host_reference(pkg)
        print("their host reference: " + ("CPU build of their host functions" if ref else f"unavailable ({why})"))
    if ref is not None:
        sparse_util = _load_sparse_util(pkg)
        check_against_their_host_code(ref, sparse_util, tensors, shape, cfg, w_ours)
        check_against_their_host_code(ref, sparse_util, t2, shape, cfg, w2)

    if reason is None:
        for s in args.gpu_shapes.split(","):
            check_gpu(tuple(int(v) for v in s.split("x")), cfg, seed=2, iters=args.iters)

    print("FAILED: " + "; ".join(FAILURES) if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
