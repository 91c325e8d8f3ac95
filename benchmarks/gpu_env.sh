# Sourced by the GPU scripts (gpu_all.sh, ncu_gemv.sh) on the device machine: results folder, environment, and the
# wheels in .whl/ (spqr-quant, pytest, ...) installed to /tmp/site when present (that machine has no network).
#   source benchmarks/gpu_env.sh "$@"     # sets $out (first argument, else $OUT, else ./gpu_results)
out="${1:-${OUT:-gpu_results}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > /dev/null 2>&1
  export PYTHONPATH="/tmp/site:$PWD/src:${PYTHONPATH:-}"
else
  export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
fi
