#!/usr/bin/env python3
"""Cuts the machine code out of the NVIDIA Vulkan driver's shader disk cache, for nvdisasm.

The cache file (__GL_SHADER_DISK_CACHE_PATH/GLCache/.../*.bin) holds zstd frames; each pipeline's frame
decompresses to an "NVDANVVMNVuc" container whose entry of type 1 is (size, offset from byte 8) of its SASS.
Seen with driver 580.159.04 (docs/PERF.md, run 35); the layout is undocumented, so this is a measurement tool.
Usage: nvuc_code.py CACHE.bin OUT_DIR  (needs the zstd command); then on the device:
    nvdisasm --binary SM90 OUT_DIR/code_NN.bin
"""
import os
import struct
import subprocess
import sys

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
data = open(src, "rb").read()
magic = b"\x28\xb5\x2f\xfd"
starts = []
i = data.find(magic)
while i >= 0:
    starts.append(i)
    i = data.find(magic, i + 1)
starts.append(len(data))
n = 0
for a, b in zip(starts, starts[1:]):
    blob = subprocess.run(["zstd", "-d", "-c", "-q"], input=data[a:b], capture_output=True).stdout
    if not blob.startswith(b"NVDANVVMNVuc"):
        continue
    # entries of 24 bytes from byte 40: (type u32, size u32, offset u64, ...) as far as seen
    for o in range(16, 400, 8):
        typ, size = struct.unpack_from("<II", blob, o)
        if typ == 1 and size % 16 == 0 and size > 0:
            off, = struct.unpack_from("<Q", blob, o + 8)
            code = blob[8 + off:8 + off + size]
            if len(code) == size and b"\x4d\x79\x00\x00\x00\x00\x00\x00" in code:
                open(os.path.join(out, f"code_{n:02d}.bin"), "wb").write(code)
                print(f"code_{n:02d}.bin: {size} bytes ({size // 16} instructions)")
                n += 1
                break
