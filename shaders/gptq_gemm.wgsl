// GPTQ dequant-matmul for many tokens (prefill), same math and prepared layout as gptq_gemv.wgsl.
// A workgroup computes a TM x (4 * COLS4) tile of y. Per K step of KT rows it dequantizes the weight tile into
// workgroup memory once and reuses it for all TM tokens; x is gathered (through perm) into workgroup memory.
// Thread layout: TM rows x COLS4 quads, one token row and 4 columns per thread (WG = TM * COLS4).
//
// Defines: BITS, TM, COLS4, KT (multiple of 32 / BITS), WG, PERM, ZERO_BUF, ADD (as gptq_gemv.wgsl).

struct Params {
    k: u32,
    n: u32,
    kp: u32,
    group_rows: u32,
    zero_const: f32,
    y_stride: u32,
    y_col0: u32,
    x_stride: u32, // row stride of x
    eps: f32,      // unused here (no fused prologue in the prefill GEMM)
    splits: u32,   // unused (the GEMM covers all of K)
    split_rows: u32,
    cap: u32,
    x_splits: u32,
    ss_blocks: u32,
    _pad1: u32,
    _pad2: u32,
}

const PF: u32 = 32u / {{BITS}}u;
const MASK: u32 = (1u << {{BITS}}u) - 1u;
const TN: u32 = 4u * {{COLS4}}u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [capacity, K] f32
@group(0) @binding(2) var<storage, read> x: array<f32>;
// perm: [kp] u32 (see gptq_gemv.wgsl)
@group(0) @binding(3) var<storage, read> perm: array<u32>;
// qweight: [kp / PF, N / 4] vec4<u32>
@group(0) @binding(4) var<storage, read> qweight: array<vec4<u32>>;
// scales: [groups, N / 4] vec2<u32> (4 f16)
@group(0) @binding(5) var<storage, read> scales: array<vec2<u32>>;
// zeros: [groups, N / 4] vec2<u32> (4 f16)
@group(0) @binding(6) var<storage, read> zeros: array<vec2<u32>>;
// y: [capacity, y_stride] f32
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
// norm_w, ss: unused by the GEMM (same binding list as gptq_gemv.wgsl)
@group(0) @binding(8) var<storage, read> norm_w: array<f32>;
@group(0) @binding(9) var<storage, read> ss: array<f32>;

var<workgroup> xs: array<f32, {{TM}} * {{KT}}>;   // [TM, KT]
var<workgroup> ws: array<vec4<f32>, {{KT}} * {{COLS4}}>; // [KT, COLS4] dequantized weights

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n4 = p.n / 4u;
    let cl = lid % {{COLS4}}u;
    let r = lid / {{COLS4}}u;
    let c4 = wid.x * {{COLS4}}u + cl;
    let t0 = wid.y * {{TM}}u;
    let n_tok = step.n_tokens;
    if (t0 >= n_tok) { return; }
    var acc = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.kp; k0 += {{KT}}u) {
        // Stage x[t0 .. t0 + TM, k0 .. k0 + KT] (gathered).
        for (var i = lid; i < {{TM}}u * {{KT}}u; i += {{WG}}u) {
            let tr = i / {{KT}}u;
            let kk = k0 + i % {{KT}}u;
            var v = 0.0;
            if (t0 + tr < n_tok && kk < p.kp) {
//#if PERM
                let src = perm[kk];
                if (src != 0xffffffffu) { v = x[(t0 + tr) * p.x_stride + src]; }
//#else
                v = x[(t0 + tr) * p.x_stride + kk];
//#endif
            }
            xs[i] = v;
        }
        // Dequantize the weight tile: KT / PF packed rows x COLS4 quads.
        for (var i = lid; i < ({{KT}}u / PF) * {{COLS4}}u; i += {{WG}}u) {
            let wl = i / {{COLS4}}u;
            let ql = i % {{COLS4}}u;
            let qc = wid.x * {{COLS4}}u + ql;
            let w = k0 / PF + wl;
            if (qc < n4 && w * PF < p.kp) {
                let g = (w * PF) / p.group_rows;
                let sp = scales[g * n4 + qc];
                let s = vec4<f32>(unpack2x16float(sp.x), unpack2x16float(sp.y));
//#if ZERO_BUF
                let zp = zeros[g * n4 + qc];
                let z = vec4<f32>(unpack2x16float(zp.x), unpack2x16float(zp.y));
//#else
                let z = vec4<f32>(p.zero_const);
//#endif
                let q = qweight[w * n4 + qc];
                for (var j = 0u; j < PF; j++) {
                    let qv = vec4<f32>((q >> vec4<u32>(j * {{BITS}}u)) & vec4<u32>(MASK));
                    ws[(wl * PF + j) * {{COLS4}}u + ql] = s * (qv - z);
                }
            } else {
                for (var j = 0u; j < PF; j++) { ws[(wl * PF + j) * {{COLS4}}u + ql] = vec4<f32>(0.0); }
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < {{KT}}u; kk++) {
            acc += xs[r * {{KT}}u + kk] * ws[kk * {{COLS4}}u + cl];
        }
        workgroupBarrier();
    }
    let t = t0 + r;
    if (t < n_tok && c4 < n4) {
        let o = t * p.y_stride + p.y_col0 + 4u * c4;
//#if ADD
        y[o] += acc.x; y[o + 1u] += acc.y; y[o + 2u] += acc.z; y[o + 3u] += acc.w;
//#else
        y[o] = acc.x; y[o + 1u] = acc.y; y[o + 2u] = acc.z; y[o + 3u] = acc.w;
//#endif
    }
}
