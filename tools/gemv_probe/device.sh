#!/usr/bin/env bash
# One device call (through .devbin/on-device.sh): the CUDA port of the decode GEMV timed and read under Nsight
# Compute, then the Vulkan pipelines' SASS from the driver's shader cache. Results under $OUT.
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
# The Vulkan pipelines, compiled into a fresh shader cache by a short decode run.
export __GL_SHADER_DISK_CACHE=1 __GL_SHADER_DISK_CACHE_PATH=/tmp/glc __GL_SHADER_DISK_CACHE_SKIP_CLEANUP=1
mkdir -p /tmp/glc
.devbin/wgptq bench --synthetic openchat-3.5 --bits 4 --group-size 128 --act-order --contexts 16 --prompt-lens 64 \
  --decode-tokens 16 --runs 1 > "$O/vk_bench.txt" 2>&1
grep -E -A2 "^decode" "$O/vk_bench.txt"
find /tmp/glc -type f | head; du -sh /tmp/glc
python3 $D/glcache_sass.py /tmp/glc /tmp/glsass | tail -40
tar czf "$O/glsass.tgz" -C /tmp glsass glc 2>/dev/null; ls -la "$O"
