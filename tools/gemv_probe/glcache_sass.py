#!/usr/bin/env python3
"""Disassemble what the NVIDIA Vulkan driver compiled for wgptq's pipelines.

The driver keeps compiled pipelines in its shader disk cache (__GL_SHADER_DISK_CACHE_PATH). Where those entries
hold CUDA ELF images, cuobjdump can print their SASS: the disassembly the Vulkan API does not expose
(docs/PERF.md, run 32). Usage: glcache_sass.py CACHE_DIR OUT_DIR. Prints what it found.
"""
import os
import struct
import subprocess
import sys

cache, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
found = 0
for root, _, files in os.walk(cache):
    for f in files:
        data = open(os.path.join(root, f), "rb").read()
        print(f"{f}: {len(data)} bytes")
        i = data.find(b"\x7fELF")
        while i >= 0:
            hdr = data[i:i + 64]
            if len(hdr) == 64 and hdr[4] == 2:
                shoff, = struct.unpack_from("<Q", hdr, 0x28)
                shentsize, shnum = struct.unpack_from("<HH", hdr, 0x3A)
                end = shoff + shentsize * shnum
                # sections may lie past the header table
                for s in range(shnum):
                    o = i + shoff + s * shentsize
                    if o + 64 <= len(data):
                        _, _, _, _, off, size = struct.unpack_from("<IIQQQQ", data, o)
                        end = max(end, off + size)
                if 0 < end <= len(data) - i:
                    path = os.path.join(out, f"elf_{found:03d}.cubin")
                    open(path, "wb").write(data[i:i + end])
                    r = subprocess.run(["cuobjdump", "-sass", path], capture_output=True, text=True)
                    txt = r.stdout if r.returncode == 0 else ""
                    if not txt:
                        r = subprocess.run(["nvdisasm", "-c", path], capture_output=True, text=True)
                        txt = r.stdout + r.stderr
                    open(path + ".sass", "w").write(txt)
                    print(f"  ELF at {i}, {end} bytes -> {path}: {len(txt.splitlines())} lines of SASS")
                    found += 1
            i = data.find(b"\x7fELF", i + 4)
print(f"{found} ELF images")
