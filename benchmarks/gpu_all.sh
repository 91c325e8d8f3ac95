#!/usr/bin/env bash
# Everything the GPU side of spqrkit needs timed and checked, in one go (one device call, <= 9 minutes):
#   1. benchmarks/kernel_speed.py --tune (the selector's kernels vs fp16 vs spqr-quant on the LLaMA-2 shapes, and a
#      sweep of the decode kernels' tiles and tuning flags at 4096x4096, one and four rows),
#   2. benchmarks/generate.py (7B-shaped decode tokens/s, fp16 vs spqr-w3, CUDA graphs),
#   3. the kernel and CUDA tests (compiled kernels against the plain-torch reference) with the time that is left:
#      they need more than 200 s of Triton compilation on an H100 machine, so they run last.
# Results go to $1 (default: $OUT when set, else ./gpu_results): kernel_speed.json, generate.json, tests.log + logs.
# Wheels in .whl/ are installed first when present (benchmarks/gpu_env.sh).
#
#   bash benchmarks/gpu_all.sh            # on the GPU machine (limits: KERNELS_TIMEOUT, GENERATE_TIMEOUT, TESTS_TIMEOUT;
#                                         # TUNE_ARGS= skips the sweeps)
set -u
source "$(dirname "$0")/gpu_env.sh" "$@"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"

timeout "${KERNELS_TIMEOUT:-300}" python3 benchmarks/kernel_speed.py --kernels gemv_xc,gemv_seg,dequantize \
  ${TUNE_ARGS---tune --tune-batches 1,4} --repeats 10 --json "$out/kernel_speed.json" > "$out/kernel_speed.log" 2>&1
echo "kernel_speed: exit $?"
grep -v "^\s*$" "$out/kernel_speed.log" | tail -70

timeout "${GENERATE_TIMEOUT:-100}" python3 benchmarks/generate.py --new-tokens 64 --repeats 3 \
  --json "$out/generate.json" > "$out/generate.log" 2>&1
echo "generate: exit $?"
tail -7 "$out/generate.log"

timeout "${TESTS_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/test_kernels_matmul.py tests/test_cuda.py > "$out/tests.log" 2>&1
echo "tests: exit $? ($(tail -1 "$out/tests.log"))"
