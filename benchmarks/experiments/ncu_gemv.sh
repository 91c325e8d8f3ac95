#!/usr/bin/env bash
# Nsight Compute profiles of the decode kernels at 4096x4096 spqr-w3, batch 1 (one device call): our gemv,
# gemv_xc, gemv_seg, gemv without outliers, the dequantize kernel and spqr-quant's kernel. Full reports to $1
# (default $OUT); key lines printed.
set -u
source "$(dirname "$0")/../gpu_env.sh" "$@"
sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis --section SchedulerStats"
metrics="--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,smsp__inst_executed.sum,sm__sass_inst_executed_op_global_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"
keys="Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Executed Ipc A|DRAM Throughput|L1/TEX Hit|L2 Hit|Memory Throughput|Waves Per SM|Block Size|Grid Size|inst_executed.sum|global_ld.sum|requests_pipe|sectors_pipe|wavefronts_mem_shared|stalled_.*_per"
ncu_profile gemv _gemv_kernel --kernels gemv
ncu_profile gemv_xc _gemv_kernel --kernels gemv_xc
ncu_profile gemv_seg _gemv_seg_kernel --kernels gemv_seg
ncu_profile gemv_no_outliers _gemv_kernel --kernels gemv --outlier-share 0
ncu_profile dequantize _dequantize_kernel --kernels dequantize
ncu_profile spqr_quant spqr_quantized_matvec --kernels spqr-quant
