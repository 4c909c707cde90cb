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
// Whole tiles go straight to y (ADD: y is loaded and added first); a tile at the step's last tokens or a ragged
// column edge goes through a small cs staging array, one band of subgroups at a time. That keeps workgroup memory
// within 48 KB at 512 threads (16 subgroups of 32 x 32, half the accumulators each).
// Cooperative matrices make naga declare the Vulkan memory model for this module, and it emits the workgroup
// barriers without availability/visibility flags; the kernel test on the H100 (poisoned outputs, partial tiles)
// is what shows the driver orders workgroup memory across them.
// Precision: with SPLIT_X, x is held as a sum of two f16 (hi + lo, 22 bits of mantissa); rounding x and w to one
// f16 each moved full-size 8-bit logprobs by 0.035 against PyTorch (docs/PERF.md, run 43).
// SCALED (the default where groups are whole steps): the weights are staged as their exact integers q - z (f16
// holds |q - z| <= 256 exactly) and the group scales are applied to the accumulators instead: they hold
// sum over earlier groups / s_g + this group's x (q - z), and are multiplied by s_g / s_(g+1) at the end of group g
// (s_G = 1 after the last one; a zero or outside scale counts as 1 with its weights 0). Two multiplies per product
// (xh m + xl m), the weights exact. The rescale goes through cs (coopStore, one f32 product per element,
// coopLoad; each subgroup on its own, under subgroup barriers), since cooperative matrices have no per-column
// product.
// Otherwise, with SPLIT_W the dequantized weights are split as x: y = xh wh + xl wh + xh wl, three multiplies.
// The kernel test bounds each mode explicitly.
//
// Defines: BITS, TM (tokens: 32 per subgroup row), TN (columns: 16 CN per subgroup column), CN (2 or 4), CN4
// (CN = 4), SPLIT_X, SPLIT_W, SCALED (needs WG 256), WG (256 or 512 threads in subgroups of SG_SIZE = 32), PERM,
// ZERO_BUF, ADD (as gptq_gemm.wgsl).

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
    splits: u32,   // split-K slabs of y (1: y itself)
    split_rows: u32, // prepared rows per split (a multiple of KT; of group_rows too when SCALED with groups)
    cap: u32,      // capacity rows per slab of y
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
const BANDS: u32 = {{WG}}u / 32u / SGC;  // subgroup rows (32 tokens each)
const XS: u32 = KT + 8u;               // row stride of xs (f16; padding spreads the fragment loads over banks)
const WS: u32 = TN + 8u;               // row stride of ws
const XPT: u32 = TM * KT / {{WG}}u;     // activations a thread stages per step
const CQ: u32 = TN / 4u;               // column quads per tile
const RPT: u32 = KT * CQ / {{WG}}u;     // prepared rows a thread dequantizes per step (4 or 2)
//#if SCALED
const CSN: u32 = {{WG}}u / 32u * 512u;  // cs: two tiles per subgroup (the rescale)
//#else
const CSN: u32 = SGC * 256u;           // cs: one tile per subgroup column (partial tiles)
//#endif

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
// y: [splits, capacity, y_stride] f32: split s (workgroup z) writes slab s over prepared rows
// [s split_rows, (s + 1) split_rows) and the consumer adds the slabs (RoPE for q|k|v); one slab = y itself
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
// norm_w, ss: unused
@group(0) @binding(8) var<storage, read> norm_w: array<f32>;
@group(0) @binding(9) var<storage, read> ss: array<f32>;

// xs[t * XS + kk]: activation of token t0 + t at prepared row k0 + kk (row-major A, tokens x K); xl its
// low part (SPLIT_X)
var<workgroup> xs: array<f16, TM * XS>;
//#if SPLIT_X
var<workgroup> xl: array<f16, TM * XS>;
//#endif
// ws[kk * WS + c]: weight of prepared row k0 + kk, column c0 + c (row-major B, K x columns): q - z (SCALED) or
// the dequantized weight; wl its low part (SPLIT_W)
var<workgroup> ws: array<f16, KT * WS>;
//#if SPLIT_W
var<workgroup> wl: array<f16, KT * WS>;
//#endif
// cs[s * 256 + r * 16 + c]: a 16 x 16 accumulator tile (row-major) on its way to y (slot: subgroup column, partial
// tiles) or through the rescale (SCALED: slots 2 s, 2 s + 1 of subgroup s)
var<workgroup> cs: array<f32, CSN>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let t0 = wid.y * TM;
    let c0 = wid.x * TN;
    let n_tok = step.n_tokens;
    if (t0 >= n_tok) { return; }
    // This workgroup's prepared rows [r0, r1) and slab of y (split-K: a grid of few column tiles fills more
    // SMs, e.g. q|k|v's 192 tiles of 128 x 128 on the H100's 132 SMs).
    let r0 = wid.z * p.split_rows;
    let r1 = min(r0 + p.split_rows, p.kp);
    let yb = wid.z * p.cap * p.y_stride;
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
    load_x(r0, lid, t0, n_tok, &xr);
    load_w(r0, lid, c0, &q, &sz);
    store_x(lid, &xr);
    store_w(lid, q, sz);
    workgroupBarrier();
    var k0 = r0;
    // Group by group (one pass for every group when not SCALED): the rescale sits between groups.
//#if SCALED
    let gstep = p.group_rows;
    let so = sg * 512u;
//#else
    let gstep = p.kp;
//#endif
    for (var g0 = r0; g0 < r1; g0 += gstep) {
        let gend = min(g0 + gstep, r1);
//#if SCALED
        // The scales of this lane's columns in this group and the next, requested now and used at the group's
        // end (a load at the rescale itself would stall every subgroup there).
        let gi = g0 / p.group_rows;
        let lc = c0 + bc + lane % 16u;
        let sw0 = scale_word(gi, lc);
        let nw0 = scale_word(gi + 1u, lc);
        let sw1 = scale_word(gi, lc + 16u);
        let nw1 = scale_word(gi + 1u, lc + 16u);
//#if CN4
        let sw2 = scale_word(gi, lc + 32u);
        let nw2 = scale_word(gi + 1u, lc + 32u);
        let sw3 = scale_word(gi, lc + 48u);
        let nw3 = scale_word(gi + 1u, lc + 48u);
//#endif
//#endif
        for (; k0 < gend; k0 += KT) {
            let more = k0 + KT < r1;
            if (more) {
                load_x(k0 + KT, lid, t0, n_tok, &xr);
                load_w(k0 + KT, lid, c0, &q, &sz);
            }
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
            if (more) {
                store_x(lid, &xr);
                store_w(lid, q, sz);
            }
            workgroupBarrier();
        }
//#if SCALED
        // End of group g: the accumulators times s_g / s_(g+1), two tiles (one column block) at a time through
        // this subgroup's own slots of cs. (One tile at a time with rows 20 floats apart, against bank conflicts,
        // was slower: docs/PERF.md run 60.)
        coopStoreT(c00, &cs[so], 16u);
        coopStoreT(c10, &cs[so + 256u], 16u);
        rescale(so, lane, ratio(sw0, nw0, gi, lc, r1));
        c00 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so], 16u);
        c10 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so + 256u], 16u);
        subgroupBarrier();
        coopStoreT(c01, &cs[so], 16u);
        coopStoreT(c11, &cs[so + 256u], 16u);
        rescale(so, lane, ratio(sw1, nw1, gi, lc + 16u, r1));
        c01 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so], 16u);
        c11 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so + 256u], 16u);
        subgroupBarrier();
//#if CN4
        coopStoreT(c02, &cs[so], 16u);
        coopStoreT(c12, &cs[so + 256u], 16u);
        rescale(so, lane, ratio(sw2, nw2, gi, lc + 32u, r1));
        c02 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so], 16u);
        c12 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so + 256u], 16u);
        subgroupBarrier();
        coopStoreT(c03, &cs[so], 16u);
        coopStoreT(c13, &cs[so + 256u], 16u);
        rescale(so, lane, ratio(sw3, nw3, gi, lc + 48u, r1));
        c03 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so], 16u);
        c13 = coopLoadT<coop_mat16x16<f32, C>>(&cs[so + 256u], 16u);
        subgroupBarrier();
//#endif
//#endif
    }
    // Whole tiles inside the step and the matrix, 16-byte aligned rows: straight to y. The others (the last token
    // tile of a step, a ragged column edge) through cs.
    // (& rather than &&: naga lowers && through a local variable, which its uniformity analysis calls non-uniform)
    let direct = (t0 + TM <= n_tok) & (c0 + TN <= p.n) & (p.y_stride % 4u == 0u) & (p.y_col0 % 4u == 0u);
    if (direct) {
        // naga 30 panics translating a cooperative load or store whose stride is a uniform member or whose
        // storage index is written inline (docs/PERF.md, run 50): both go through named values.
        let ys = p.y_stride + 0u;
        let o00 = yb + (t0 + ar) * p.y_stride + p.y_col0 + c0 + bc;
        let o10 = o00 + 16u * p.y_stride;
        let o01 = o00 + 16u;
        let o11 = o10 + 16u;
//#if ADD
        c00 = c00 + coopLoadT<coop_mat16x16<f32, C>>(&y[o00], ys);
        c01 = c01 + coopLoadT<coop_mat16x16<f32, C>>(&y[o01], ys);
        c10 = c10 + coopLoadT<coop_mat16x16<f32, C>>(&y[o10], ys);
        c11 = c11 + coopLoadT<coop_mat16x16<f32, C>>(&y[o11], ys);
//#endif
        coopStoreT(c00, &y[o00], ys);
        coopStoreT(c01, &y[o01], ys);
        coopStoreT(c10, &y[o10], ys);
        coopStoreT(c11, &y[o11], ys);
//#if CN4
        let o02 = o00 + 32u;
        let o03 = o00 + 48u;
        let o12 = o10 + 32u;
        let o13 = o10 + 48u;
//#if ADD
        c02 = c02 + coopLoadT<coop_mat16x16<f32, C>>(&y[o02], ys);
        c03 = c03 + coopLoadT<coop_mat16x16<f32, C>>(&y[o03], ys);
        c12 = c12 + coopLoadT<coop_mat16x16<f32, C>>(&y[o12], ys);
        c13 = c13 + coopLoadT<coop_mat16x16<f32, C>>(&y[o13], ys);
//#endif
        coopStoreT(c02, &y[o02], ys);
        coopStoreT(c03, &y[o03], ys);
        coopStoreT(c12, &y[o12], ys);
        coopStoreT(c13, &y[o13], ys);
//#endif
        return;
    }
    // One band of subgroups (32 tokens) at a time through cs, one slot per subgroup column.
    let sp = (sg % SGC) * 256u;
    for (var band = 0u; band < BANDS; band++) {
        let mine = sg / SGC == band;
        if (mine) { coopStoreT(c00, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar, c0 + bc, n_tok, yb);
        if (mine) { coopStoreT(c01, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar, c0 + bc + 16u, n_tok, yb);
        if (mine) { coopStoreT(c10, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar + 16u, c0 + bc, n_tok, yb);
        if (mine) { coopStoreT(c11, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar + 16u, c0 + bc + 16u, n_tok, yb);
//#if CN4
        if (mine) { coopStoreT(c02, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar, c0 + bc + 32u, n_tok, yb);
        if (mine) { coopStoreT(c03, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar, c0 + bc + 48u, n_tok, yb);
        if (mine) { coopStoreT(c12, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar + 16u, c0 + bc + 32u, n_tok, yb);
        if (mine) { coopStoreT(c13, &cs[sp], 16u); }
        write_tile(mine, sp, lane, t0 + ar + 16u, c0 + bc + 48u, n_tok, yb);
//#endif
    }
}

//#if SCALED
// The two tiles in cs[so .. so + 512] (one 16-column block) times r, this lane's column's s_g / s_(g+1): element
// lane + 32 i sits in column lane % 16 of its tile. Subgroup barriers order the subgroup's cooperative stores
// before and its loads after (the slots are its own; wgpu's SUBGROUP_BARRIER, requested with the matrix units: the
// planner takes SCALED only where the device has it).
fn rescale(so: u32, lane: u32, r: f32) {
    subgroupBarrier();
    for (var i = 0u; i < 16u; i++) {
        cs[so + lane + 32u * i] *= r;
    }
    subgroupBarrier();
}

// The u32 holding the f16 scale of group g at column c (clamped into the matrix; ratio() sorts out the rest).
fn scale_word(g: u32, c: u32) -> u32 {
    let gg = min(g, (p.kp - 1u) / p.group_rows);
    let cc = min(c, p.n - 1u);
    return scales[gg * (p.n / 4u) + cc / 4u][(cc % 4u) / 2u];
}

// s_g / s_(g+1) at column c from their scale words, where a scale past the split's last group (ending at r1),
// outside the matrix or 0 counts as 1 (such a group's weights are staged as 0).
fn ratio(sw: u32, nw: u32, g: u32, c: u32, r1: u32) -> f32 {
    let s = word_scale(sw, c);
    let t = select(word_scale(nw, c), 1.0, (g + 1u) * p.group_rows >= r1);
    return select(s / t, 1.0, c >= p.n);
}

fn word_scale(w: u32, c: u32) -> f32 {
    let pair = unpack2x16float(w);
    let s = select(pair.x, pair.y, c % 2u == 1u);
    return select(1.0, s, s != 0.0);
}
//#endif

// The 16 x 16 tile in cs[so ..] to y rows t .. t + 15, columns c .. c + 15 (those inside the step and the matrix),
// 8 elements per lane, by the subgroups of this band (mine). Workgroup barriers order the cooperative store and
// the lanes' reads (every subgroup calls this equally often; wgptq does not request wgpu's SUBGROUP_BARRIER
// feature).
fn write_tile(mine: bool, so: u32, lane: u32, t: u32, c: u32, n_tok: u32, yb: u32) {
    workgroupBarrier();
    if (mine) {
        for (var i = 0u; i < 8u; i++) {
            let e = lane + 32u * i;
            let r = t + e / 16u;
            let col = c + e % 16u;
            if (r < n_tok && col < p.n) {
                let o = yb + r * p.y_stride + p.y_col0 + col;
//#if ADD
                y[o] += cs[so + e];
//#else
                y[o] = cs[so + e];
//#endif
            }
        }
    }
    workgroupBarrier();
}

// This thread's share of step k0's activations: XPT values x[t0 + i / KT, k0 + i % KT] for i = lid + j WG
// (coalesced along K); outside the step or the matrix they read as 0.
fn load_x(k0: u32, lid: u32, t0: u32, n_tok: u32, xr: ptr<function, array<f32, XPT>>) {
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
}

// Writes what load_x read into xs (and xl), as f16.
fn store_x(lid: u32, xr: ptr<function, array<f32, XPT>>) {
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
}

// This thread's share of step k0's weights: the packed word holding prepared rows k0 + RPT (lid / CQ) .. + RPT - 1
// of column quad lid % CQ, with its group's scale and zero (packed f16 in sz.xy / sz.zw). Outside the matrix the
// scale is 0, so the dequantized weights are 0.
fn load_w(k0: u32, lid: u32, c0: u32, q: ptr<function, vec4<u32>>, sz: ptr<function, vec4<u32>>) {
    let n4 = p.n / 4u;
    let qc = c0 / 4u + lid % CQ;
    let row = k0 + RPT * (lid / CQ);
    if (qc < n4 && row < p.kp) {
        let g = row / p.group_rows;
        *q = qweight[(row / PF) * n4 + qc];
//#if ZERO_BUF
        *sz = vec4<u32>(scales[g * n4 + qc], zeros[g * n4 + qc]);
//#else
        *sz = vec4<u32>(scales[g * n4 + qc], 0u, 0u);
//#endif
    } else {
        *q = vec4<u32>(0u);
        *sz = vec4<u32>(0u);
    }
}

// Writes what load_w read into ws (and wl): q - z (SCALED; 0 where the scale is 0), or dequantized (f16; hi + lo
// with SPLIT_W). A thread's RPT rows share one group (the planner takes this kernel only where group_rows is a
// multiple of 4).
fn store_w(lid: u32, q: vec4<u32>, sz: vec4<u32>) {
    let rb = RPT * (lid / CQ);
    let cq = 4u * (lid % CQ);
    let s = vec4<f32>(unpack2x16float(sz.x), unpack2x16float(sz.y));
//#if ZERO_BUF
    let z = vec4<f32>(unpack2x16float(sz.z), unpack2x16float(sz.w));
//#else
    let z = vec4<f32>(p.zero_const);
//#endif
    let shift = (rb % PF) * {{BITS}}u;
    for (var r = 0u; r < RPT; r++) {
        let qv = vec4<f32>((q >> vec4<u32>(shift + r * {{BITS}}u)) & vec4<u32>(MASK));
//#if SCALED
        let wf = select(vec4<f32>(0.0), qv - z, s != vec4<f32>(0.0));
//#else
        let wf = s * (qv - z);
//#endif
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
