#!/usr/bin/env bash
# Nsight Compute profiles of the decode kernels at 4096x4096 spqr-w3, batch 1 (one device call): our gemv,
# gemv_xc, gemv_seg, gemv without outliers, the dequantize kernel and spqr-quant's kernel. Full reports to $1
# (default $OUT); key lines printed.
set -u
source "$(dirname "$0")/gpu_env.sh" "$@"
sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis --section SchedulerStats"
metrics="--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,smsp__inst_executed.sum,sm__sass_inst_executed_op_global_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"
run() {  # name, kernel regex, profile_kernels args
  local name=$1 regex=$2; shift 2
  timeout 150 ncu --clock-control none --kernel-name "regex:$regex" --launch-skip 2 --launch-count 1 $sections $metrics \
    python3 benchmarks/profile_kernels.py --calls 3 "$@" > "$out/ncu_$name.txt" 2>&1
  echo "== $name (exit $?)"
  grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Executed Ipc A|DRAM Throughput|L1/TEX Hit|L2 Hit|Memory Throughput|Waves Per SM|Block Size|Grid Size|inst_executed.sum|global_ld.sum|requests_pipe|sectors_pipe|wavefronts_mem_shared|stalled_(long_scoreboard|short_scoreboard|lg_throttle|mio_throttle|wait|barrier|not_selected|math_pipe|dispatch|no_instruction|branch|drain|tex|membar|selected)_per" "$out/ncu_$name.txt" | sed 's/  */ /g'
}
run gemv _gemv_kernel --kernels gemv
run gemv_xc _gemv_kernel --kernels gemv_xc
run gemv_seg _gemv_seg_kernel --kernels gemv_seg
run gemv_no_outliers _gemv_kernel --kernels gemv --outlier-share 0
run dequantize _dequantize_kernel --kernels dequantize
run spqr_quant spqr_quantized_matvec --kernels spqr-quant
