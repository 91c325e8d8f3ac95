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

# ncu_profile NAME KERNEL_REGEX [profile_kernels.py args]: one Nsight Compute profile (the $sections and $metrics the
# caller set) of the third call of that kernel, report to $out/ncu_NAME.txt; prints the lines matching $keys (stall
# ratios only above 0.05 cycles per issued instruction)
ncu_profile() {
  local name=$1 regex=$2; shift 2
  timeout 150 ncu --clock-control none --kernel-name "regex:$regex" --launch-skip 2 --launch-count 1 $sections $metrics \
    python3 benchmarks/experiments/profile_kernels.py --calls 3 "$@" > "$out/ncu_$name.txt" 2>&1
  echo "== $name (exit $?)"
  grep -E "$keys" "$out/ncu_$name.txt" | sed 's/  */ /g' \
    | awk '{ if ($0 ~ /stalled/) { if ($NF + 0 > 0.05) print } else print }'
}
