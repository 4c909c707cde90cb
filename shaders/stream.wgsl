// Streaming read used by the benchmark runner to measure the adapter's bandwidth ceiling: every thread sums
// 16-byte words in a grid-stride loop and writes one value, so the bytes read dominate.

struct Params {
    n_vec4: u32,   // vec4<u32> elements in `src`
    threads: u32,  // total threads in the grid
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// src: [n_vec4] vec4<u32>
@group(0) @binding(2) var<storage, read> src: array<vec4<u32>>;
// dst: [threads] u32
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tid = gid.x + gid.y * nwg.x * {{WG}}u;
    var acc = vec4<u32>(0u);
    for (var i = tid; i < p.n_vec4; i += p.threads) { acc ^= src[i]; }
    if (tid < p.threads) { dst[tid] = acc.x ^ acc.y ^ acc.z ^ acc.w; }
}
