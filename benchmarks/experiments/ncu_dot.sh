#!/usr/bin/env bash
# Nsight Compute stall profile of the tensor-core dot kernel at 8 rows of x (4096x4096 and 28672x8192) and of gemv_seg
# at batch 1 (28672x8192), spqr-w3, 1% outliers (one device call): occupancy, issue efficiency and the average warp
# stall reasons per issued instruction. Full reports to $1 (default $OUT); key lines printed.
#   bash benchmarks/experiments/ncu_dot.sh [results dir]
set -u
source "$(dirname "$0")/../gpu_env.sh" "$@"
sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section InstructionStats --section SchedulerStats"
metrics="--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,smsp__inst_executed.sum"
keys="Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Warp Cycles Per Issued|No Eligible|Waves Per SM|Grid Size|inst_executed.sum|stalled_.*_per_issue_active"
ncu_profile dot_b8_28672x8192 _dot_kernel --shape 28672x8192 --batch 8 --kernels dot
ncu_profile dot_b8_4096x4096 _dot_kernel --shape 4096x4096 --batch 8 --kernels dot
ncu_profile gemv_seg_b1_28672x8192 _gemv_seg_kernel --shape 28672x8192 --batch 1 --kernels gemv_seg
