#!/usr/bin/env bash
# Everything the GPU side of spqrkit needs timed and checked, in one go (one device call, <= 9 minutes):
#   1. benchmarks/kernel_speed.py (the selector's kernels vs fp16 vs spqr-quant on the LLaMA-2 shapes at 1-32 rows
#      of x; TUNE_ARGS="--tune ..." adds sweeps of the kernels' tiles and tuning flags),
#   2. benchmarks/generate.py (7B-shaped decode tokens/s at batch 1 and 8, fp16 vs spqr-w3, CUDA graphs, unfused
#      and with q/k/v, gate/up fused),
#   3. the kernel and CUDA tests (compiled kernels against the plain-torch reference) in parallel shards
#      (benchmarks/gpu_tests.sh) with the time that is left: they need minutes of Triton compilation.
# Results go to $1 (default: $OUT when set, else ./gpu_results): kernel_speed.json, generate.json, tests_*.log + logs.
# Wheels in .whl/ are installed first when present (benchmarks/gpu_env.sh).
#
#   bash benchmarks/gpu_all.sh            # on the GPU machine (limits: KERNELS_TIMEOUT, GENERATE_TIMEOUT, TESTS_TIMEOUT;
#                                         # TUNE_ARGS: extra kernel_speed arguments)
set -u
source "$(dirname "$0")/gpu_env.sh" "$@"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"

timeout "${KERNELS_TIMEOUT:-300}" python3 benchmarks/kernel_speed.py --kernels gemv_seg,gemv_pairs,dot,dot_pairs,dequantize \
  --batches 1,4,8,16,32 ${TUNE_ARGS:-} --repeats 10 --json "$out/kernel_speed.json" > "$out/kernel_speed.log" 2>&1
echo "kernel_speed: exit $?"
grep -v "^\s*$" "$out/kernel_speed.log" | tail -70

timeout "${GENERATE_TIMEOUT:-200}" python3 benchmarks/generate.py --fuse both --new-tokens 64 --repeats 3 \
  --json "$out/generate.json" > "$out/generate.log" 2>&1
echo "generate: exit $?"
tail -11 "$out/generate.log"

timeout "${TESTS_TIMEOUT:-200}" bash "$(dirname "$0")/gpu_tests.sh" 14 "$out"
