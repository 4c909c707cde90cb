// Act-order gather for the prefill GEMM: out[t, k] = x[t, perm[k]] (0 for padding rows), so the GEMM stages its
// activations with coalesced loads instead of one scattered load per element per column tile (runs 22-24,
// docs/PERF.md: the scattered staging held the prefill GEMM at 5 TFLOP/s on the H100).
// A workgroup takes `span` prepared rows of one token (one thread each, in turns): the whole row for a plain
// gather, so its scattered reads come from the SM's L1 after the first touch of each sector (a grid of one
// element per thread spread every row over all SMs: 0.95 -> 0.51 ms per 32 calls of a 512-token chunk on the
// H100, docs/PERF.md run 58); WG rows for SWIGLU, whose 14336-wide rows then took 6.9 ms instead of 3.7 (a
// thread's loop of dependent loads and exp per element, one workgroup per row, was latency-bound).
// SWIGLU = 1 gathers the down projection's input straight from gate|up: out[t, k] = silu(g) * u with
// g = x[t, perm[k]], u = x[t, half + perm[k]] (one pass instead of silu_mul and a gather); it is left for
// down projections whose act-order has padding rows: otherwise gate|up's columns come in down's order
// (prep::input_order) and a plain silu_mul suffices.
// NORM = 1 (plain gathers of whole rows) applies RMSNorm as rmsnorm.wgsl does, x * rsqrt(mean(x^2) + eps) *
// weight, the workgroup summing its row's squares first: one pass instead of rmsnorm and a gather.
//
// Defines: WG, SWIGLU, NORM.

struct Params {
    kp: u32,       // prepared rows (the row length of out)
    x_stride: u32, // row stride of x (NORM: also the row length normalised)
    half: u32,     // SWIGLU: column of up[0] in x (the intermediate size)
    span: u32,     // prepared rows per workgroup
    eps: f32,      // NORM: RMSNorm epsilon
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [capacity, x_stride] f32, activations in the model's order (SWIGLU: gate | up, [capacity, 2 half])
@group(0) @binding(2) var<storage, read> x: array<f32>;
// perm: [kp] u32, prepared row -> input index (0xffffffff for padding)
@group(0) @binding(3) var<storage, read> perm: array<u32>;
// out: [capacity, kp] f32, activations in the prepared order
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// norm_w: [x_stride] f32 RMSNorm weight in the model's order; unused unless NORM = 1
@group(0) @binding(5) var<storage, read> norm_w: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let end = min(wid.x * p.span + p.span, p.kp);
//#if NORM
    var ss = 0.0;
    for (var i = lid; i < p.x_stride; i += {{WG}}u) {
        let v = x[t * p.x_stride + i];
        ss += v * v;
    }
    let r = inverseSqrt(wg_sum(ss, lid) / f32(p.x_stride) + p.eps);
//#endif
    for (var k = wid.x * p.span + lid; k < end; k += {{WG}}u) {
        let src = perm[k];
        var v = 0.0;
        if (src != 0xffffffffu) {
//#if SWIGLU
            let g = x[t * p.x_stride + src];
            v = g / (1.0 + exp(-g)) * x[t * p.x_stride + p.half + src];
//#else
//#if NORM
            v = x[t * p.x_stride + src] * r * norm_w[src];
//#else
            v = x[t * p.x_stride + src];
//#endif
//#endif
        }
        out[t * p.kp + k] = v;
    }
}
