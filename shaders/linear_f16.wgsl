// Dense f16 matmul y[t, row_start + n] = sum_k x[t, k] * W[n, k] (lm_head, and any linear the checkpoint left in
// f16). ROWS output rows per workgroup, LANES threads per row summing K in 8-element (16-byte) steps, BATCH
// steps' weight words loaded together before they are used, so their latencies overlap.
// With LAST_ONLY only the step's logits_row is computed and written to y row 0.
//
// Defines: ROWS, LANES, WG = ROWS * LANES, LAST_ONLY, ADD.

struct Params {
    k: u32,         // K (multiple of 8)
    n: u32,         // rows of this W chunk
    row_start: u32, // first output column written by this chunk
    y_stride: u32,  // row stride of y
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [capacity, K / 4] vec4<f32>
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
// w: [n, K / 8] vec4<u32>, 8 f16 along K per vec4 (nn.Linear row-major layout)
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
// y: [capacity (or 1 with LAST_ONLY), y_stride] f32
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> part: array<f32, {{WG}}>;

const BATCH: u32 = 4u;

fn halves(w: u32, v: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w), unpack2x16float(v));
}

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lane = lid % {{LANES}}u;
    let rl = lid / {{LANES}}u;
    let n = wid.x * {{ROWS}}u + rl;
    let k8 = p.k / 8u;
//#if LAST_ONLY
    let t_begin = step.logits_row;
    let t_end = step.logits_row + 1u;
//#else
    let t_begin = 0u;
    let t_end = step.n_tokens;
//#endif
    for (var t = t_begin; t < t_end; t++) {
        var acc = 0.0;
        if (n < p.n) {
            for (var i0 = lane; i0 < k8; i0 += BATCH * {{LANES}}u) {
                var q: array<vec4<u32>, BATCH>;
                for (var u = 0u; u < BATCH; u++) {
                    let i = i0 + u * {{LANES}}u;
                    if (i < k8) { q[u] = w[n * k8 + i]; }
                }
                for (var u = 0u; u < BATCH; u++) {
                    let i = i0 + u * {{LANES}}u;
                    if (i < k8) {
                        let xb = (t * p.k + 8u * i) / 4u;
                        acc += dot(x[xb], halves(q[u].x, q[u].y)) + dot(x[xb + 1u], halves(q[u].z, q[u].w));
                    }
                }
            }
        }
        part[lid] = acc;
        workgroupBarrier();
        for (var s = {{LANES}}u / 2u; s > 0u; s >>= 1u) {
            if (lane < s) { part[lid] += part[lid + s]; }
            workgroupBarrier();
        }
        if (lane == 0u && n < p.n) {
//#if LAST_ONLY
            let o = p.row_start + n;
//#else
            let o = t * p.y_stride + p.row_start + n;
//#endif
//#if ADD
            y[o] += part[lid];
//#else
            y[o] = part[lid];
//#endif
        }
        workgroupBarrier();
    }
}
