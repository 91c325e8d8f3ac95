#!/usr/bin/env bash
# The kernel, solver-kernel and CUDA tests on the GPU machine, compiled, in N parallel pytest processes (Triton's compilation is
# CPU-bound and single-threaded per process). On CUDA the gpu_sweep tests (every layout, larger shapes; skipped on
# the CPU, see tests/conftest.py) run with the rest.
#   bash benchmarks/gpu_tests.sh [N=14] [results dir]      # logs: $out/tests_shard.*.log
# TESTS_K: a pytest -k expression selecting the tests (default all); TESTS_M: a -m marker expression (e.g.
# "gpu_sweep" or "not gpu_sweep", to split the run over two calls). SHARD_TIMEOUT (seconds, default none): each
# shard is stopped after it, and the summary still printed (a shard cut short is named, with the end of its log).
set -u
n="${1:-14}"
source "$(dirname "$0")/gpu_env.sh" "${2:-${OUT:-gpu_results}}"
ids=$(mktemp)
python3 -m pytest -q -p no:cacheprovider --collect-only ${TESTS_K:+-k "$TESTS_K"} ${TESTS_M:+-m "$TESTS_M"} tests/test_kernels_matmul.py \
  tests/test_gemv_pairs.py tests/test_dot_pairs.py tests/test_cuda.py tests/test_fusion.py tests/test_eager_graphs.py \
  tests/test_sass_report.py tests/test_solver_triton.py 2>/dev/null \
  | grep "::" > "$ids"
echo "collected $(wc -l < "$ids") tests, $n shards"
split -n "r/$n" "$ids" "$ids.shard."
for f in "$ids".shard.*; do
  timeout "${SHARD_TIMEOUT:-0}" python3 -m pytest -q -p no:cacheprovider --tb=short $(cat "$f") \
    > "$out/tests_${f##*.}.log" 2>&1 || echo "shard ${f##*.}: exit $?, log ends: $(tail -c 150 "$out/tests_${f##*.}.log" | tr '\n' ' ')" &
done
wait
passed=$(grep -ho "[0-9]* passed" "$out"/tests_*.log | awk '{s += $1} END {print s + 0}')
failed=$(grep -ho "[0-9]* failed" "$out"/tests_*.log | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed over $(ls "$out"/tests_*.log | wc -l) shards"
grep -h "^FAILED\|^ERROR" "$out"/tests_*.log | head -20
