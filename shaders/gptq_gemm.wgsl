// GPTQ dequant-matmul for many tokens (prefill), same math and prepared layout as gptq_gemv.wgsl.
// A workgroup computes a TM x (4 * COLS4) tile of y. Per K step of KT rows it dequantizes the weight tile into
// workgroup memory once and reuses it for all TM tokens; x is gathered (through perm) into workgroup memory,
// transposed, so a thread reads 4 tokens' activations of one row in one 16-byte load.
// Thread layout: COLS4 column quads x WG / COLS4 token quads; a thread owns 4 columns of 4 token rows (16
// accumulators), so each pair of 16-byte workgroup-memory reads feeds 16 FMAs (the one-row-per-thread version
// fed 4 and ran at 5 TFLOP/s on the H100; 8 rows per thread ran slower than 4: docs/PERF.md, runs 23 and 26).
//
// Defines: BITS, TM (= 4 WG / COLS4), COLS4, KT (multiple of 32 / BITS), WG, PERM, ZERO_BUF, ADD (as
// gptq_gemv.wgsl).

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
const TQ: u32 = {{TM}}u / 4u; // token quads per tile

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
// norm_w, ss: unused by the GEMM
@group(0) @binding(8) var<storage, read> norm_w: array<f32>;
@group(0) @binding(9) var<storage, read> ss: array<f32>;

// xs[kk * XQ + q] = the activations of tokens t0 + 4q .. t0 + 4q + 3 at prepared row k0 + kk (one quad of
// padding per row spreads the staging stores over the banks)
const XQ: u32 = TQ + 1u;
const XPT: u32 = {{TM}}u * {{KT}}u / {{WG}}u; // activations a thread stages per step
const WQ: u32 = ({{KT}}u / PF) * {{COLS4}}u;  // packed weight words per step (one per thread of the first WQ)
var<workgroup> xs: array<vec4<f32>, {{KT}} * XQ>;
// ws[kk * COLS4 + c] = dequantized weights of row k0 + kk, columns 4 (c0 + c) .. + 3
var<workgroup> ws: array<vec4<f32>, {{KT}} * {{COLS4}}>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n4 = p.n / 4u;
    let cl = lid % {{COLS4}}u;
    let rq = lid / {{COLS4}}u; // this thread's token quad
    let c4 = wid.x * {{COLS4}}u + cl;
    let t0 = wid.y * {{TM}}u;
    let n_tok = step.n_tokens;
    if (t0 >= n_tok) { return; }
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    // Software pipeline: the global loads of step k0 + KT are issued before the FMAs of step k0 and land in
    // registers, so their latency overlaps the arithmetic; they go to workgroup memory between two barriers.
    var xr: array<f32, XPT>;
    var q = vec4<u32>(0u);
    var sz = vec4<u32>(0u);
    load_tile(0u, lid, wid.x, t0, n_tok, &xr, &q, &sz);
    store_tile(0u, lid, wid.x, &xr, q, sz);
    workgroupBarrier();
    for (var k0 = 0u; k0 < p.kp; k0 += {{KT}}u) {
        let more = k0 + {{KT}}u < p.kp;
        if (more) { load_tile(k0 + {{KT}}u, lid, wid.x, t0, n_tok, &xr, &q, &sz); }
        for (var kk = 0u; kk < {{KT}}u; kk++) {
            let xv = xs[kk * XQ + rq];
            let wv = ws[kk * {{COLS4}}u + cl];
            a0 += xv.x * wv;
            a1 += xv.y * wv;
            a2 += xv.z * wv;
            a3 += xv.w * wv;
        }
        workgroupBarrier();
        if (more) {
            store_tile(k0 + {{KT}}u, lid, wid.x, &xr, q, sz);
        }
        workgroupBarrier();
    }
    if (c4 >= n4) { return; }
    store(t0 + 4u * rq, c4, a0, n_tok);
    store(t0 + 4u * rq + 1u, c4, a1, n_tok);
    store(t0 + 4u * rq + 2u, c4, a2, n_tok);
    store(t0 + 4u * rq + 3u, c4, a3, n_tok);
}

// This thread's share of step k0's tile: XPT activations x[t0 + i / KT, k0 + i % KT] for i = lid + j WG
// (consecutive threads on consecutive rows of one token: coalesced when PERM = 0), and for the first
// (KT / PF) COLS4 threads one packed weight word with its group's scale and zero (packed f16, in sz.xy / sz.zw).
fn load_tile(k0: u32, lid: u32, wx: u32, t0: u32, n_tok: u32, xr: ptr<function, array<f32, XPT>>,
             q: ptr<function, vec4<u32>>, sz: ptr<function, vec4<u32>>) {
    for (var j = 0u; j < XPT; j++) {
        let i = lid + j * {{WG}}u;
        let tr = i / {{KT}}u;
        let k = k0 + i % {{KT}}u;
        var v = 0.0;
        if (t0 + tr < n_tok && k < p.kp) {
//#if PERM
            let src = perm[k];
            if (src != 0xffffffffu) { v = x[(t0 + tr) * p.x_stride + src]; }
//#else
            v = x[(t0 + tr) * p.x_stride + k];
//#endif
        }
        (*xr)[j] = v;
    }
    let n4 = p.n / 4u;
    let qc = wx * {{COLS4}}u + lid % {{COLS4}}u;
    let w = k0 / PF + lid / {{COLS4}}u;
    if (lid < WQ && qc < n4 && w * PF < p.kp) {
        let g = (w * PF) / p.group_rows;
        *q = qweight[w * n4 + qc];
//#if ZERO_BUF
        *sz = vec4<u32>(scales[g * n4 + qc], zeros[g * n4 + qc]);
//#else
        *sz = vec4<u32>(scales[g * n4 + qc], 0u, 0u);
//#endif
    } else {
        // Outside the matrix: scale 0 makes the dequantized weights 0.
        *q = vec4<u32>(0u);
        *sz = vec4<u32>(0u);
    }
}

// Writes what load_tile read into xs (transposed) and ws (dequantized).
fn store_tile(k0: u32, lid: u32, wx: u32, xr: ptr<function, array<f32, XPT>>, q: vec4<u32>, sz: vec4<u32>) {
    for (var j = 0u; j < XPT; j++) {
        let i = lid + j * {{WG}}u;
        let tr = i / {{KT}}u;
        xs[(i % {{KT}}u) * XQ + tr / 4u][tr % 4u] = (*xr)[j];
    }
    if (lid < WQ) {
        let wl = lid / {{COLS4}}u;
        let ql = lid % {{COLS4}}u;
        let s = vec4<f32>(unpack2x16float(sz.x), unpack2x16float(sz.y));
//#if ZERO_BUF
        let z = vec4<f32>(unpack2x16float(sz.z), unpack2x16float(sz.w));
//#else
        let z = vec4<f32>(p.zero_const);
//#endif
        for (var j = 0u; j < PF; j++) {
            let qv = vec4<f32>((q >> vec4<u32>(j * {{BITS}}u)) & vec4<u32>(MASK));
            ws[(wl * PF + j) * {{COLS4}}u + ql] = s * (qv - z);
        }
    }
}

fn store(t: u32, c4: u32, acc: vec4<f32>, n_tok: u32) {
    if (t >= n_tok) { return; }
    let o = t * p.y_stride + p.y_col0 + 4u * c4;
//#if ADD
    y[o] += acc.x; y[o + 1u] += acc.y; y[o + 2u] += acc.z; y[o + 3u] += acc.w;
//#else
    y[o] = acc.x; y[o + 1u] = acc.y; y[o + 2u] = acc.z; y[o + 3u] = acc.w;
//#endif
}
