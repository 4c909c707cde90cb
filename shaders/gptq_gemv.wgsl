// GPTQ dequant-matmul for few tokens (decode): y[t, n] (+)= sum_k x[t, perm[k]] * scale[g(k), n] * (q[k, n] - zero[g(k), n]).
//
// Weights are in the prepared layout (src/prep.rs): K rows sorted by group (act-order resolved at load), so
// group g owns rows [g * group_rows, (g + 1) * group_rows); padding rows have perm = 0xffffffff and read x = 0.
// A thread owns 4 adjacent output columns (one 16-byte load per packed row) and a contiguous slice of the packed
// rows; the K slices of a workgroup are summed in workgroup memory. Group scale and zero are applied once per
// group: s * (sum(x q) - z * sum(x)).
//
// Defines: BITS (4 | 8), COLS4 (column quads per workgroup), KSPLIT (K slices per workgroup), WG = COLS4 * KSPLIT,
// PERM (1: gather x through perm), ZERO_BUF (1: per-group zeros buffer; 0: the constant p.zero_const),
// ADD (1: y += result, the residual epilogue; 0: y = result).

struct Params {
    k: u32,          // logical K: row stride of x
    n: u32,          // output columns N (multiple of 4)
    kp: u32,         // prepared K (rows of the packed weight, multiple of 32 / BITS)
    group_rows: u32, // prepared rows per group
    zero_const: f32, // zero point when ZERO_BUF = 0 (symmetric checkpoints)
    y_stride: u32,   // row stride of y
    y_col0: u32,     // first column of y written (projections sharing one output buffer)
    _pad1: u32,
}

const PF: u32 = 32u / {{BITS}}u;
const MASK: u32 = (1u << {{BITS}}u) - 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [capacity, K] f32, activations in the model's (unpermuted) order
@group(0) @binding(2) var<storage, read> x: array<f32>;
// perm: [kp] u32, prepared row -> original input index (0xffffffff for padding); unused when PERM = 0
@group(0) @binding(3) var<storage, read> perm: array<u32>;
// qweight: [kp / PF, N / 4] vec4<u32>, PF codes per u32 along K (LSB first), 4 adjacent columns per vec4
@group(0) @binding(4) var<storage, read> qweight: array<vec4<u32>>;
// scales: [groups, N / 4] vec2<u32>, 4 f16 scales per vec2 (columns 4c .. 4c + 3)
@group(0) @binding(5) var<storage, read> scales: array<vec2<u32>>;
// zeros: [groups, N / 4] vec2<u32>, 4 f16 zero points (v1 +1 already applied); unused when ZERO_BUF = 0
@group(0) @binding(6) var<storage, read> zeros: array<vec2<u32>>;
// y: [capacity, y_stride] f32
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<vec4<f32>, {{WG}}>;

fn load_x(t: u32, k: u32) -> f32 {
//#if PERM
    let src = perm[k];
    if (src == 0xffffffffu) { return 0.0; }
    return x[t * p.k + src];
//#else
    return x[t * p.k + k];
//#endif
}

fn group_scale(g: u32, c4: u32, n4: u32) -> vec4<f32> {
    let s = scales[g * n4 + c4];
    return vec4<f32>(unpack2x16float(s.x), unpack2x16float(s.y));
}

fn group_zero(g: u32, c4: u32, n4: u32) -> vec4<f32> {
//#if ZERO_BUF
    let z = zeros[g * n4 + c4];
    return vec4<f32>(unpack2x16float(z.x), unpack2x16float(z.y));
//#else
    return vec4<f32>(p.zero_const);
//#endif
}

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let c4l = lid % {{COLS4}}u;
    let ks = lid / {{COLS4}}u;
    let n4 = p.n / 4u;
    let c4 = wid.x * {{COLS4}}u + c4l;
    let t = wid.y;
    let n_words = p.kp / PF;
    let wpg = p.group_rows / PF;
    var acc = vec4<f32>(0.0);
    if (c4 < n4 && t < step.n_tokens) {
        let chunk = (n_words + {{KSPLIT}}u - 1u) / {{KSPLIT}}u;
        let wb = ks * chunk;
        let we = min(wb + chunk, n_words);
        var g_cur = wb / wpg;
        var g_end = (g_cur + 1u) * wpg;
        var aq = vec4<f32>(0.0);
        var xs = 0.0;
        for (var w = wb; w < we; w++) {
            if (w >= g_end) {
                acc += group_scale(g_cur, c4, n4) * (aq - group_zero(g_cur, c4, n4) * xs);
                aq = vec4<f32>(0.0);
                xs = 0.0;
                g_cur = w / wpg;
                g_end = (g_cur + 1u) * wpg;
            }
            let q = qweight[w * n4 + c4];
            for (var j = 0u; j < PF; j++) {
                let xv = load_x(t, w * PF + j);
                let qv = vec4<f32>((q >> vec4<u32>(j * {{BITS}}u)) & vec4<u32>(MASK));
                aq += xv * qv;
                xs += xv;
            }
        }
        if (wb < we) {
            acc += group_scale(g_cur, c4, n4) * (aq - group_zero(g_cur, c4, n4) * xs);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = {{KSPLIT}}u / 2u; s > 0u; s >>= 1u) {
        if (ks < s) { partial[lid] += partial[lid + s * {{COLS4}}u]; }
        workgroupBarrier();
    }
    if (ks == 0u && c4 < n4 && t < step.n_tokens) {
        let r = partial[lid];
        let o = t * p.y_stride + p.y_col0 + 4u * c4;
//#if ADD
        y[o] += r.x; y[o + 1u] += r.y; y[o + 2u] += r.z; y[o + 3u] += r.w;
//#else
        y[o] = r.x; y[o + 1u] = r.y; y[o + 2u] = r.z; y[o + 3u] = r.w;
//#endif
    }
}
