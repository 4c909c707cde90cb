// RMSNorm as HF computes it in f32: y = x * rsqrt(mean(x^2) + eps) * weight. One workgroup per token row.

struct Params {
    n: u32,   // row length H
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [capacity, H] f32
@group(0) @binding(2) var<storage, read> x: array<f32>;
// weight: [H] f32
@group(0) @binding(3) var<storage, read> weight: array<f32>;
// y: [capacity, H] f32
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    if (t >= step.n_tokens) { return; }
    let base = t * p.n;
    var ss = 0.0;
    for (var i = lid; i < p.n; i += {{WG}}u) {
        let v = x[base + i];
        ss += v * v;
    }
    let total = wg_sum(ss, lid);
    let r = inverseSqrt(total / f32(p.n) + p.eps);
    for (var i = lid; i < p.n; i += {{WG}}u) {
        y[base + i] = x[base + i] * r * weight[i];
    }
}
