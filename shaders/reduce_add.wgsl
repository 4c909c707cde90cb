// Residual add of split-K partial slabs: x[t, i] += sum_s part[s, t, i], and for each block of 32 columns its sum
// of squares ss[t, block], from which the next GEMV's fused RMSNorm prologue gets 1 / rms (deterministically, no
// atomics). With splits = 0 it only computes ss (after the embedding). Many workgroups, one column per thread:
// single-workgroup reductions are latency-bound on large GPUs.

struct Params {
    n: u32,       // row length H
    splits: u32,  // partial slabs to add (at most MAX_SLABS)
    cap: u32,     // capacity rows per slab
    blocks: u32,  // 32-column blocks per row = ceil(n / 32): the stride of ss
}

const MAX_SLABS: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// part: [splits, capacity, H] f32
@group(0) @binding(2) var<storage, read> part: array<f32>;
// x: [capacity, H] f32, residual stream (updated in place)
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
// ss: [capacity, blocks] f32, sum of x^2 over each block of WG columns
@group(0) @binding(4) var<storage, read_write> ss: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let i = wid.x * {{WG}}u + lid;
    var v = 0.0;
    if (i < p.n) {
        v = x[t * p.n + i];
        // A constant trip count lets the compiler issue the slab loads together.
        for (var s = 0u; s < MAX_SLABS; s++) {
            if (s < p.splits) { v += part[(s * p.cap + t) * p.n + i]; }
        }
        if (p.splits > 0u) { x[t * p.n + i] = v; }
    }
    // Sums of squares per 32 columns (SS_COLS in src/gpu/kernels.rs).
    red_f32[lid] = v * v;
    workgroupBarrier();
    if (lid < {{WG}}u / 32u) {
        var total = 0.0;
        for (var c = 0u; c < 32u; c++) { total += red_f32[32u * lid + c]; }
        let b = wid.x * ({{WG}}u / 32u) + lid;
        if (b < p.blocks) { ss[t * p.blocks + b] = total; }
    }
}
