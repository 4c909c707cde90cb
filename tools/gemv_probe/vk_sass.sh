#!/usr/bin/env bash
# Device side of the Vulkan disassembly (docs/PERF.md, run 35): nvdisasm over code cut from the driver's shader
# cache by nvuc_code.py (CODE_DIR), and a fresh cache from a short decode run copied to $OUT for the next cut.
set -uo pipefail
O=${OUT:-/tmp/out}
mkdir -p "$O/sass"
for f in ${CODE_DIR:?the folder nvuc_code.py wrote}/*.bin; do
  nvdisasm --binary SM90 "$f" > "$O/sass/$(basename "$f" .bin).sass" 2>&1
done
# (at most 8 files come back from a device call: one archive)
tar czf "$O/sass.tgz" -C "$O" sass && rm -rf "$O/sass"
export __GL_SHADER_DISK_CACHE=1 __GL_SHADER_DISK_CACHE_PATH=/tmp/glc __GL_SHADER_DISK_CACHE_SKIP_CLEANUP=1
mkdir -p /tmp/glc
.devbin/wgptq bench --synthetic openchat-3.5 --bits 4 --group-size 128 --act-order --contexts 16 --prompt-lens 64 \
  --decode-tokens 16 --runs 1 > "$O/vk_bench.txt" 2>&1
cp $(find /tmp/glc -name "*.bin") "$O/glcache_idot.bin"
