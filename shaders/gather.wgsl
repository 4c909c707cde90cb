// Act-order gather for the prefill GEMM: out[t, k] = x[t, perm[k]] (0 for padding rows), so the GEMM stages its
// activations with coalesced loads instead of one scattered load per element per column tile (runs 22-24,
// docs/PERF.md: the scattered staging held the prefill GEMM at 5 TFLOP/s on the H100).
// SWIGLU = 1 gathers the down projection's input straight from gate|up: out[t, k] = silu(g) * u with
// g = x[t, perm[k]], u = x[t, half + perm[k]] (one pass instead of silu_mul and a gather).
//
// Defines: WG, SWIGLU.

struct Params {
    kp: u32,       // prepared rows (the row length of out)
    x_stride: u32, // row stride of x
    half: u32,     // SWIGLU: column of up[0] in x (the intermediate size)
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [capacity, x_stride] f32, activations in the model's order (SWIGLU: gate | up, [capacity, 2 half])
@group(0) @binding(2) var<storage, read> x: array<f32>;
// perm: [kp] u32, prepared row -> input index (0xffffffff for padding)
@group(0) @binding(3) var<storage, read> perm: array<u32>;
// out: [capacity, kp] f32, activations in the prepared order
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let t = gid.y;
    if (t >= step.n_tokens || k >= p.kp) { return; }
    let src = perm[k];
    var v = 0.0;
    if (src != 0xffffffffu) {
//#if SWIGLU
        let g = x[t * p.x_stride + src];
        v = g / (1.0 + exp(-g)) * x[t * p.x_stride + p.half + src];
//#else
        v = x[t * p.x_stride + src];
//#endif
    }
    out[t * p.kp + k] = v;
}
