enable f16;
enable wgpu_cooperative_matrix;
// GPTQ dequant-matmul for many tokens (prefill) on the matrix units, through wgpu's experimental cooperative
// matrices (16x16x16, f16 inputs, f32 accumulation: tensor cores on NVIDIA). Same math, prepared layout and
// bindings as gptq_gemm.wgsl, which stays the portable path: the f32 FMA peak of an H100 (67 TFLOP/s) is below
// the 70 TFLOP/s a 5,000 tok/s prefill needs (docs/PERF.md), the matrix units are ~15x above it.
//
// A workgroup computes a TM x TN tile of y with WG / 32 subgroups; subgroup s owns 32 tokens (two 16-row
// tiles) x 16 CN columns. Per step of KT = 32 prepared rows the workgroup stages x (f32 -> f16) and the
// dequantized weights (f16) in workgroup memory; every subgroup then loads its A (x) and B (w) fragments from
// there. The next step's global loads are issued before this step's multiplies (registers), as in gptq_gemm.
// Cooperative matrices make naga declare the Vulkan memory model for this module, and it emits the workgroup
// barriers without availability/visibility flags; the kernel test on the H100 (poisoned outputs, partial tiles)
// is what shows the driver orders workgroup memory across them.
// Precision: with SPLIT_X and SPLIT_W, x and the dequantized weights are each held as a sum of two f16 (hi + lo,
// 22 bits of mantissa) and y = xh wh + xl wh + xh wl in f32: three multiplies per product, close to the f32 path
// (rounding both to one f16 moved full-size 8-bit logprobs by 0.035 against PyTorch: docs/PERF.md, run 43).
// One of the two splits alone costs two multiplies per product.
// The kernel test bounds both explicitly.
//
// Defines: BITS, TM (tokens: 32 per subgroup row), TN (columns: 16 CN per subgroup column), CN (2 or 4), CN4
// (CN = 4), SPLIT_X, SPLIT_W, WG (256: 8 subgroups of SG_SIZE = 32), PERM, ZERO_BUF, ADD (as gptq_gemm.wgsl).

struct Params {
    k: u32,
    n: u32,
    kp: u32,
    group_rows: u32,
    zero_const: f32,
    y_stride: u32,
    y_col0: u32,
    x_stride: u32, // row stride of x
    eps: f32,      // unused
    splits: u32,   // unused
    split_rows: u32,
    cap: u32,
    x_splits: u32,
    ss_blocks: u32,
    _pad1: u32,
    _pad2: u32,
}

const PF: u32 = 32u / {{BITS}}u;
const MASK: u32 = (1u << {{BITS}}u) - 1u;
const KT: u32 = 32u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const SGC: u32 = TN / (16u * {{CN}}u); // subgroup columns
const XS: u32 = KT + 8u;               // row stride of xs (f16; padding spreads the fragment loads over banks)
const WS: u32 = TN + 8u;               // row stride of ws
const XPT: u32 = TM * KT / {{WG}}u;     // activations a thread stages per step
const CQ: u32 = TN / 4u;               // column quads per tile

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [capacity, x_stride] f32 (the prepared row order when PERM = 0)
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
// norm_w, ss: unused
@group(0) @binding(8) var<storage, read> norm_w: array<f32>;
@group(0) @binding(9) var<storage, read> ss: array<f32>;

// xs[t * XS + kk]: activation of token t0 + t at prepared row k0 + kk (row-major A, tokens x K); xl its
// low part (SPLIT_X)
var<workgroup> xs: array<f16, TM * XS>;
// ws[kk * WS + c]: dequantized weight of prepared row k0 + kk, column c0 + c (row-major B, K x columns); wl its
// low part (SPLIT_W)
var<workgroup> ws: array<f16, KT * WS>;
//#if SPLIT_X
var<workgroup> xl: array<f16, TM * XS>;
//#endif
//#if SPLIT_W
var<workgroup> wl: array<f16, KT * WS>;
//#endif
// cs[s * 256 + r * 16 + c]: subgroup s's output tile on its way to y (row-major)
var<workgroup> cs: array<f32, {{WG}} / 32 * 256>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let t0 = wid.y * TM;
    let c0 = wid.x * TN;
    let n_tok = step.n_tokens;
    if (t0 >= n_tok) { return; }
    // This subgroup's tiles: rows ar .. ar + 31 of the workgroup tile, columns bc .. bc + 16 CN - 1.
    let ar = (sg / SGC) * 32u;
    let bc = (sg % SGC) * 16u * {{CN}}u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
//#if CN4
    var c02 = coop_mat16x16<f32, C>();
    var c03 = coop_mat16x16<f32, C>();
    var c12 = coop_mat16x16<f32, C>();
    var c13 = coop_mat16x16<f32, C>();
//#endif
    var xr: array<f32, XPT>;
    var q = vec4<u32>(0u);
    var sz = vec4<u32>(0u);
    load_tile(0u, lid, c0, t0, n_tok, &xr, &q, &sz);
    store_tile(lid, &xr, q, sz);
    workgroupBarrier();
    for (var k0 = 0u; k0 < p.kp; k0 += KT) {
        let more = k0 + KT < p.kp;
        if (more) { load_tile(k0 + KT, lid, c0, t0, n_tok, &xr, &q, &sz); }
        for (var kh = 0u; kh < KT; kh += 16u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&xs[ar * XS + kh], XS);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&xs[(ar + 16u) * XS + kh], XS);
//#if SPLIT_X
            let l0 = coopLoadT<coop_mat16x16<f16, A>>(&xl[ar * XS + kh], XS);
            let l1 = coopLoadT<coop_mat16x16<f16, A>>(&xl[(ar + 16u) * XS + kh], XS);
//#endif
            let b0 = coopLoadT<coop_mat16x16<f16, B>>(&ws[kh * WS + bc], WS);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c10 = coopMultiplyAdd(a1, b0, c10);
//#if SPLIT_X
            c00 = coopMultiplyAdd(l0, b0, c00);
            c10 = coopMultiplyAdd(l1, b0, c10);
//#endif
//#if SPLIT_W
            let m0 = coopLoadT<coop_mat16x16<f16, B>>(&wl[kh * WS + bc], WS);
            c00 = coopMultiplyAdd(a0, m0, c00);
            c10 = coopMultiplyAdd(a1, m0, c10);
//#endif
            let b1 = coopLoadT<coop_mat16x16<f16, B>>(&ws[kh * WS + bc + 16u], WS);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c11 = coopMultiplyAdd(a1, b1, c11);
//#if SPLIT_X
            c01 = coopMultiplyAdd(l0, b1, c01);
            c11 = coopMultiplyAdd(l1, b1, c11);
//#endif
//#if SPLIT_W
            let m1 = coopLoadT<coop_mat16x16<f16, B>>(&wl[kh * WS + bc + 16u], WS);
            c01 = coopMultiplyAdd(a0, m1, c01);
            c11 = coopMultiplyAdd(a1, m1, c11);
//#endif
//#if CN4
            let b2 = coopLoadT<coop_mat16x16<f16, B>>(&ws[kh * WS + bc + 32u], WS);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c12 = coopMultiplyAdd(a1, b2, c12);
//#if SPLIT_X
            c02 = coopMultiplyAdd(l0, b2, c02);
            c12 = coopMultiplyAdd(l1, b2, c12);
//#endif
//#if SPLIT_W
            let m2 = coopLoadT<coop_mat16x16<f16, B>>(&wl[kh * WS + bc + 32u], WS);
            c02 = coopMultiplyAdd(a0, m2, c02);
            c12 = coopMultiplyAdd(a1, m2, c12);
//#endif
            let b3 = coopLoadT<coop_mat16x16<f16, B>>(&ws[kh * WS + bc + 48u], WS);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c13 = coopMultiplyAdd(a1, b3, c13);
//#if SPLIT_X
            c03 = coopMultiplyAdd(l0, b3, c03);
            c13 = coopMultiplyAdd(l1, b3, c13);
//#endif
//#if SPLIT_W
            let m3 = coopLoadT<coop_mat16x16<f16, B>>(&wl[kh * WS + bc + 48u], WS);
            c03 = coopMultiplyAdd(a0, m3, c03);
            c13 = coopMultiplyAdd(a1, m3, c13);
//#endif
//#endif
        }
        workgroupBarrier();
        if (more) { store_tile(lid, &xr, q, sz); }
        workgroupBarrier();
    }
    let so = sg * 256u;
    coopStoreT(c00, &cs[so], 16u);
    write_tile(so, lane, t0 + ar, c0 + bc, n_tok);
    coopStoreT(c01, &cs[so], 16u);
    write_tile(so, lane, t0 + ar, c0 + bc + 16u, n_tok);
    coopStoreT(c10, &cs[so], 16u);
    write_tile(so, lane, t0 + ar + 16u, c0 + bc, n_tok);
    coopStoreT(c11, &cs[so], 16u);
    write_tile(so, lane, t0 + ar + 16u, c0 + bc + 16u, n_tok);
//#if CN4
    coopStoreT(c02, &cs[so], 16u);
    write_tile(so, lane, t0 + ar, c0 + bc + 32u, n_tok);
    coopStoreT(c03, &cs[so], 16u);
    write_tile(so, lane, t0 + ar, c0 + bc + 48u, n_tok);
    coopStoreT(c12, &cs[so], 16u);
    write_tile(so, lane, t0 + ar + 16u, c0 + bc + 32u, n_tok);
    coopStoreT(c13, &cs[so], 16u);
    write_tile(so, lane, t0 + ar + 16u, c0 + bc + 48u, n_tok);
//#endif
}

// The subgroup's 16 x 16 tile in cs[so ..] to y rows t .. t + 15, columns c .. c + 15 (those inside the step and
// the matrix); 8 elements per lane. Workgroup barriers order the cooperative store and the lanes' reads (every
// subgroup calls this equally often; wgptq does not request wgpu's SUBGROUP_BARRIER feature).
fn write_tile(so: u32, lane: u32, t: u32, c: u32, n_tok: u32) {
    workgroupBarrier();
    for (var i = 0u; i < 8u; i++) {
        let e = lane + 32u * i;
        let r = t + e / 16u;
        let col = c + e % 16u;
        if (r < n_tok && col < p.n) {
            let o = r * p.y_stride + p.y_col0 + col;
//#if ADD
            y[o] += cs[so + e];
//#else
            y[o] = cs[so + e];
//#endif
        }
    }
    workgroupBarrier();
}

// This thread's share of step k0: XPT activations x[t0 + i / KT, k0 + i % KT] for i = lid + j WG (coalesced
// along K), and the packed word holding prepared rows k0 + 4 (lid / CQ) .. + 3 of column quad lid % CQ, with its
// group's scale and zero (packed f16 in sz.xy / sz.zw). Everything outside the step or the matrix reads as 0.
fn load_tile(k0: u32, lid: u32, c0: u32, t0: u32, n_tok: u32, xr: ptr<function, array<f32, XPT>>,
             q: ptr<function, vec4<u32>>, sz: ptr<function, vec4<u32>>) {
    for (var j = 0u; j < XPT; j++) {
        let i = lid + j * {{WG}}u;
        let tr = i / KT;
        let k = k0 + i % KT;
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
    let qc = c0 / 4u + lid % CQ;
    let row = k0 + 4u * (lid / CQ);
    if (qc < n4 && row < p.kp) {
        let g = row / p.group_rows;
        *q = qweight[(row / PF) * n4 + qc];
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

// Writes what load_tile read into xs and ws (dequantized, f16). A thread's 4 rows share one group (the planner
// takes this kernel only where group_rows is a multiple of 4).
fn store_tile(lid: u32, xr: ptr<function, array<f32, XPT>>, q: vec4<u32>, sz: vec4<u32>) {
    for (var j = 0u; j < XPT; j++) {
        let i = lid + j * {{WG}}u;
        let v = (*xr)[j];
//#if SPLIT_X
        let h = hi_part(v);
        xs[(i / KT) * XS + i % KT] = f16(h);
        xl[(i / KT) * XS + i % KT] = f16(v - h);
//#else
        xs[(i / KT) * XS + i % KT] = f16(v);
//#endif
    }
    let rb = 4u * (lid / CQ);
    let cq = 4u * (lid % CQ);
    let s = vec4<f32>(unpack2x16float(sz.x), unpack2x16float(sz.y));
//#if ZERO_BUF
    let z = vec4<f32>(unpack2x16float(sz.z), unpack2x16float(sz.w));
//#else
    let z = vec4<f32>(p.zero_const);
//#endif
    let shift = (rb % PF) * {{BITS}}u;
    for (var r = 0u; r < 4u; r++) {
        let qv = vec4<f32>((q >> vec4<u32>(shift + r * {{BITS}}u)) & vec4<u32>(MASK));
        let wf = s * (qv - z);
//#if SPLIT_W
        let wh = hi_part4(wf);
        let w = vec4<f16>(wh);
//#else
        let w = vec4<f16>(wf);
//#endif
        let o = (rb + r) * WS + cq;
        ws[o] = w.x;
        ws[o + 1u] = w.y;
        ws[o + 2u] = w.z;
        ws[o + 3u] = w.w;
//#if SPLIT_W
        let lo = vec4<f16>(wf - wh);
        wl[o] = lo.x;
        wl[o + 1u] = lo.y;
        wl[o + 2u] = lo.z;
        wl[o + 3u] = lo.w;
//#endif
    }
}

// The high part of a split: v with its mantissa cut to f16's 10 explicit bits, so it converts to f16 exactly (in
// f16's normal range) and v - hi is exact in f32. Done on the bits: the driver's compiler folded
// f32(f16(v)) back to v on the H100, which left every low part 0 (docs/PERF.md, run 44).
fn hi_part(v: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(v) & 0xffffe000u);
}
fn hi_part4(v: vec4<f32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) & vec4<u32>(0xffffe000u));
}
