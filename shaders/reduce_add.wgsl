// Residual add of split-K partial slabs: x[t, :] += sum_s part[s, t, :], then row_scale[t] = 1 / rms(x[t, :]), the
// RMSNorm factor the next GEMV's fused prologue applies (so no workgroup recomputes it). With splits = 0 it only
// computes row_scale (after the embedding). One workgroup per token.

struct Params {
    n: u32,       // row length H
    splits: u32,  // partial slabs to add
    cap: u32,     // capacity rows per slab
    eps: f32,     // RMSNorm epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// part: [splits, capacity, H] f32
@group(0) @binding(2) var<storage, read> part: array<f32>;
// x: [capacity, H] f32, residual stream (updated in place)
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
// row_scale: [capacity] f32
@group(0) @binding(4) var<storage, read_write> row_scale: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    if (t >= step.n_tokens) { return; }
    var ss = 0.0;
    for (var i = lid; i < p.n; i += {{WG}}u) {
        var v = x[t * p.n + i];
        for (var s = 0u; s < p.splits; s++) {
            v += part[(s * p.cap + t) * p.n + i];
        }
        if (p.splits > 0u) { x[t * p.n + i] = v; }
        ss += v * v;
    }
    let total = wg_sum(ss, lid);
    if (lid == 0u) { row_scale[t] = inverseSqrt(total / f32(p.n) + p.eps); }
}
