#!/usr/bin/env bash
# One device call (through .devbin/on-device.sh): the CUDA port of the decode GEMV timed and read under Nsight
# Compute (docs/PERF.md, run 32). Results under $OUT. The Vulkan side's disassembly: vk_sass.sh.
set -uo pipefail
D=tools/gemv_probe
O=${OUT:-/tmp/out}
mkdir -p "$O"
nvcc --version | tail -1
nvcc -O3 -arch=sm_90 -lineinfo -Xptxas -v -o /tmp/gemv_probe $D/gemv_probe.cu > "$O/ptxas.txt" 2>&1 || { tail -30 "$O/ptxas.txt"; }
grep -E "registers|spill" "$O/ptxas.txt" | head -24
/tmp/gemv_probe | tee "$O/probe.txt"
M=smsp__average_warps_issue_stalled
ncu --clock-control none -k regex:gemv --metrics gpu__time_duration.sum,launch__registers_per_thread,\
sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,\
dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum,\
${M}_long_scoreboard_per_issue_active.ratio,${M}_short_scoreboard_per_issue_active.ratio,\
${M}_barrier_per_issue_active.ratio,${M}_wait_per_issue_active.ratio,${M}_math_pipe_throttle_per_issue_active.ratio,\
${M}_mio_throttle_per_issue_active.ratio,${M}_lg_throttle_per_issue_active.ratio,${M}_not_selected_per_issue_active.ratio,\
${M}_selected_per_issue_active.ratio,${M}_no_instruction_per_issue_active.ratio,${M}_dispatch_stall_per_issue_active.ratio,\
${M}_branch_resolving_per_issue_active.ratio,${M}_drain_per_issue_active.ratio,${M}_membar_per_issue_active.ratio \
  /tmp/gemv_probe 1 > "$O/ncu.txt" 2>&1
grep -E "gemv<|duration|issue_active|warps_active|dram__|long_score|short_score|barrier|_wait|math_pipe|mio|lg_thr|not_sel|no_instr|inst_executed" "$O/ncu.txt" | head -120
cuobjdump -sass /tmp/gemv_probe > "$O/probe.sass" 2>&1
ls -la "$O"
