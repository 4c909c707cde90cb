// GPTQ dequant-matmul for few tokens (decode): y[t, n] (+)= sum_k a[t, perm[k]] * scale[g(k), n] * (q[k, n] - zero[g(k), n]),
// where a is the activation after an optional fused prologue: RMSNorm (a = x * w / rms, the row's sum of squares
// coming in blocks from whoever wrote x, see reduce_add.wgsl) or SwiGLU (a = silu(gate) * up, x holding gate|up, possibly as split-K partial slabs).
//
// Weights are in the prepared layout (src/prep.rs): K rows sorted by group (act-order resolved at load), so group g
// owns rows [g * group_rows, (g + 1) * group_rows); padding rows have perm = 0xffffffff and read a = 0.
//
// Split-K: the grid is (column blocks, splits, tokens). Workgroup (b, s, t) owns 4 * COLS4 columns and the prepared
// rows [s * split_rows, (s + 1) * split_rows); with splits > 1 it writes its partial sums to slab s of y
// ([splits, capacity, y_stride]) and the consumer adds the slabs up (rope, the SwiGLU prologue, or reduce_add).
// This gives a decode GEMV enough workgroups to fill a large GPU while each stages only its own rows of the
// (gathered, transformed) activations in workgroup memory. Inside a workgroup a thread owns 4 adjacent columns (one
// 16-byte load per packed row) and a contiguous run of the packed rows; runs are summed in workgroup memory.
// Weight words are loaded UNROLL at a time into registers (the first batch before the staging pass) so their
// latency overlaps; codes become floats with the exponent trick without shifting them down: for the j-th code of
// a 16-bit half-word, (q & (MASK << j * BITS)) | 0x4B000000 is 2^23 + q_j 2^(j BITS) (exact, below 2^24), so one
// subtract of zz_j = 2^23 + z 2^(j BITS) gives (q_j - z) 2^(j BITS) exactly; the staged activations carry the
// matching 2^-(j BITS). Per code: one mask-or, one subtract, one FMA (the upper half-word is shifted once per
// word). The group scale is applied once per group and run.
//
// IDOT = 1 (the integer path, docs/PERF.md run 33): the staged activations are quantized per block of 32 prepared
// rows to v = round(a / dx) in [-16256, 16256] (dx = the block's max |a| / 16256), split into two signed bytes
// v = 128 vh + vl, and the codes meet them in 4-lane integer dot products (dot4I8Packed): 4 codes per instruction
// and plane instead of three f32 instructions per code, which the f32 path spends (the CUDA port under Nsight
// Compute: 5.4 instructions per weight, issue-bound). The sums are exact in i32; per block they become
// dx (128 Ih + Il), and the zero point is applied once per group through the blocks' dx * sum(v). The
// activations keep about 15 bits per block (error at most dx / 2 per element), more than f16 activations do.
// It needs whole 32-row blocks in every group and split (the planner checks).
//
// Defines: BITS (4 | 8), COLS4 (column quads per workgroup), KSPLIT (row runs per workgroup), WG = COLS4 * KSPLIT,
// XCHUNK (rows staged per pass), PERM (gather through perm), ZERO_BUF (per-group zeros; else p.zero_const),
// ADD (y += result; only with splits = 1), EPI (1: the residual epilogue below, y holding the split slabs; 2: every
// split adds into the residual with f32 atomics, FATOM = 1),
// PRO (0 none, 1 RMSNorm, 2 SwiGLU), IDOT (the integer path above),
// UNROLL (words per load batch), ABLATE (measurement only, docs/PERF.md: 1 stages no activations, 2 loads no
// weights; the results are then meaningless).

struct Params {
    k: u32,           // logical K (activation length)
    n: u32,           // output columns N (multiple of 4)
    kp: u32,          // prepared K (rows of the packed weight, multiple of 32 / BITS)
    group_rows: u32,  // prepared rows per group
    zero_const: f32,  // zero point when ZERO_BUF = 0 (symmetric checkpoints)
    y_stride: u32,    // row stride of y
    y_col0: u32,      // first column of y written (projections sharing one output buffer)
    x_stride: u32,    // row stride of x (K, or 2 K for the SwiGLU prologue)
    eps: f32,         // RMSNorm epsilon (PRO = 1)
    splits: u32,      // split-K slabs written (1: y directly)
    split_rows: u32,  // prepared rows per split (multiple of 32 / BITS)
    cap: u32,         // capacity rows per slab of y and x
    x_splits: u32,    // partial slabs x is made of (SwiGLU prologue over split-K gate|up); 1 otherwise
    ss_blocks: u32,   // PRO = 1: partial sums of squares per row in ss
    _pad1: u32,
    _pad2: u32,
}

const PF: u32 = 32u / {{BITS}}u;
const MASK: u32 = (1u << {{BITS}}u) - 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// x: [x_splits, capacity, x_stride] f32, activations in the model's (unpermuted) order
@group(0) @binding(2) var<storage, read> x: array<f32>;
// perm: [kp] u32, prepared row -> original input index (0xffffffff for padding); unused when PERM = 0
@group(0) @binding(3) var<storage, read> perm: array<u32>;
// qweight: [kp / PF, N / 4] vec4<u32>, PF codes per u32 along K (LSB first), 4 adjacent columns per vec4
@group(0) @binding(4) var<storage, read> qweight: array<vec4<u32>>;
// scales: [groups, N / 4] vec2<u32>, 4 f16 scales per vec2 (columns 4c .. 4c + 3)
@group(0) @binding(5) var<storage, read> scales: array<vec2<u32>>;
// zeros: [groups, N / 4] vec2<u32>, 4 f16 zero points (v1 +1 already applied); unused when ZERO_BUF = 0
@group(0) @binding(6) var<storage, read> zeros: array<vec2<u32>>;
//#if EPI
// y: [splits, capacity, y_stride] f32 bits, the split slabs. Atomic loads and stores: the last split reads its
// peers' slabs where device-scope ordering holds, not from a cache line an earlier read on its SM left behind
// (with plain loads the residual test read a slab's NaN poison once on the H100 under concurrent load).
@group(0) @binding(7) var<storage, read_write> y: array<atomic<u32>>;
//#else
// y: [splits, capacity, y_stride] f32 (one slab when splits = 1)
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
//#endif
// norm_w: [K] f32 RMSNorm weight in the original order; unused unless PRO = 1
@group(0) @binding(8) var<storage, read> norm_w: array<f32>;
// ss: [capacity, ss_blocks] f32, partial sums of x^2 of each row: read by PRO = 1 (any number of blocks; with
// none, PRO = 1 sums the squares of its x row itself), written by EPI = 1 (one per 32 columns of res)
@group(0) @binding(9) var<storage, read_write> ss: array<f32>;
//#if FATOM
// res: [capacity, N] f32, the residual stream; EPI = 2 adds every split's partial sums into it with f32 atomics
@group(0) @binding(10) var<storage, read_write> res: array<atomic<f32>>;
//#else
// res: [capacity, N] f32, the residual stream EPI = 1 adds the result to; unused otherwise
@group(0) @binding(10) var<storage, read_write> res: array<f32>;
//#endif
// cnt: [capacity, column blocks] u32, split-K arrivals per column block (EPI = 1, splits > 1); zero between
// dispatches: the last arrival resets its counter
@group(0) @binding(11) var<storage, read_write> cnt: array<atomic<u32>>;

var<workgroup> partial: array<vec4<f32>, {{WG}}>;
// 1 when this workgroup is the last split of its column block to arrive (EPI = 1).
var<workgroup> arrived: u32;
//#if IDOT
// The staged activations as signed bytes, per quad j of 4 rows: xq[j] = (vh, vl) packed LSB first. A quad is the
// rows one packed byte-lane set of a word meets: 8-bit word w is quad w (rows 4w .. 4w + 3); 4-bit word w is
// quads 2w (rows 8w + 0, 2, 4, 6: the low nibbles) and 2w + 1 (rows 8w + 1, 3, 5, 7: the high nibbles).
var<workgroup> xq: array<vec2<u32>, {{XCHUNK}} / 4>;
// max |a| over each quad, then sum(v) over each quad (staging scratch)
var<workgroup> qmax: array<f32, {{XCHUNK}} / 4>;
var<workgroup> vsum: array<i32, {{XCHUNK}} / 4>;
// per 32-row block: (dx, dx * sum of its v)
var<workgroup> binfo: array<vec2<f32>, {{XCHUNK}} / 32>;
//#else
// xs[i] = a[c0 + 4i + c] * 2^-(BITS * ((4i + c) % (PF / 2))) in component c: activations of the staged rows, pre-scaled
// for the code positions, so one 16-byte read serves 4 (8-bit) or 8 (4-bit, two reads) codes of a word.
var<workgroup> xs: array<vec4<f32>, {{XCHUNK}} / 4>;
//#endif
// The pre-scale of a staged vec4 (its rows' code positions are 0..3 for 4-bit, 0, 1, 0, 1 for 8-bit).
const XSCALE: vec4<f32> = vec4<f32>(1.0, 1.0 / f32(1u << {{BITS}}u), 1.0 / f32(1u << ((2u * {{BITS}}u) % 16u)),
    1.0 / f32(1u << ((3u * {{BITS}}u) % 16u)));

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

const MAX_SLABS: u32 = 16u;

// x[t, i] summed over its partial slabs (a constant trip count lets the loads issue together).
fn x_at(t: u32, i: u32) -> f32 {
    // The first two slabs without branches (the common case: gate|up in 1 or 2 splits), so the staging's loads
    // of several rows stay in flight together; more slabs are summed apart, after them.
    let two = p.x_splits > 1u;
    let v0 = x[t * p.x_stride + i];
    let v1 = x[(select(0u, p.cap, two) + t) * p.x_stride + i];
    var e = 0.0;
    for (var s = 2u; s < p.x_splits; s++) { e += x[(s * p.cap + t) * p.x_stride + i]; }
    return v0 + select(0.0, v1, two) + e;
}

// Activation of input index `src` for token row `t`, after the prologue (RMSNorm without its 1 / rms, which
// scales the finished sums).
fn act(t: u32, src: u32) -> f32 {
    if ({{PRO}}u == 1u) {
        return x[t * p.x_stride + src] * norm_w[src];
    } else if ({{PRO}}u == 2u) {
        let g = x_at(t, src);
        return g / (1.0 + exp(-g)) * x_at(t, p.k + src);
    }
    return x[t * p.x_stride + src];
}

// Staged activation of prepared row k (0 past the split's end and for padding rows). Branch-free: the loads of
// row 0 stand in for the masked ones, so the compiler issues a thread's index loads together and then its value
// loads, two round trips per staging pass instead of two per row (docs/PERF.md, run 35).
fn stage(t: u32, k: u32, r1: u32) -> f32 {
//#if PERM
    let src = perm[min(k, p.kp - 1u)];
    let ok = k < r1 && src != 0xffffffffu;
    return select(0.0, act(t, select(0u, src, ok)), ok);
//#else
    let ok = k < r1;
    return select(0.0, act(t, select(0u, k, ok)), ok);
//#endif
}

fn load_w(i: u32) -> vec4<u32> {
    if ({{ABLATE}}u == 2u) { return vec4<u32>(i * 0x9E3779B1u); }
    return qweight[i];
}

// zz_j = 2^23 + z 2^(j BITS) for the 4 columns' zero points z (z2, z3 unused for 8-bit).
struct Zeros {
    z0: vec4<f32>,
    z1: vec4<f32>,
    z2: vec4<f32>,
    z3: vec4<f32>,
}

fn zero_terms(z: vec4<f32>) -> Zeros {
    let b = vec4<f32>(8388608.0);
    return Zeros(b + z, b + z * f32(1u << {{BITS}}u), b + z * f32(1u << ((2u * {{BITS}}u) % 16u)),
        b + z * f32(1u << ((3u * {{BITS}}u) % 16u)));
}

// Code j of each half-word as 2^23 + q_j 2^(j BITS), from its bits in place.
fn code(q: vec4<u32>, j: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>((q & vec4<u32>(MASK << (j * {{BITS}}u))) | vec4<u32>(0x4B000000u));
}

//#if IDOT
//#else
// sum_i a_i (q_i - z) over the PF codes of one packed word (4 columns); xb indexes its first staged row (a
// multiple of 4). Written out without loops or arrays, in two independent chains.
fn word_dot(q: vec4<u32>, xb: u32, z: Zeros) -> vec4<f32> {
    let qh = q >> vec4<u32>(16u);
    let xl = xs[xb / 4u];
    if ({{BITS}}u == 8u) {
        // rows xb .. xb + 3: codes 0, 1 of the low half-word, then of the high one
        var d = xl.x * (code(q, 0u) - z.z0);
        var e = xl.z * (code(qh, 0u) - z.z0);
        d += xl.y * (code(q, 1u) - z.z1);
        e += xl.w * (code(qh, 1u) - z.z1);
        return d + e;
    }
    let xh = xs[xb / 4u + 1u];
    var d = xl.x * (code(q, 0u) - z.z0);
    var e = xh.x * (code(qh, 0u) - z.z0);
    d += xl.y * (code(q, 1u) - z.z1);
    e += xh.y * (code(qh, 1u) - z.z1);
    d += xl.z * (code(q, 2u) - z.z2);
    e += xh.z * (code(qh, 2u) - z.z2);
    d += xl.w * (code(q, 3u) - z.z3);
    e += xh.w * (code(qh, 3u) - z.z3);
    return d + e;
}
//#endif

// Words per 32-row activation block (IDOT): 32 / PF.
const WPB: u32 = {{BITS}}u;
const QMAX: f32 = 16256.0;
// Quads each thread stages per chunk.
const QIT: u32 = max(1u, {{XCHUNK}}u / 4u / {{WG}}u);

// Prepared row of component i of staged quad j (see xq).
fn quad_row(c0: u32, j: u32, i: u32) -> u32 {
    if ({{BITS}}u == 8u) { return c0 + 4u * j + i; }
    return c0 + 8u * (j / 2u) + j % 2u + 2u * i;
}

//#if IDOT
fn block_max(b: u32) -> f32 {
    var m = 0.0;
    for (var i = 0u; i < 8u; i++) { m = max(m, qmax[8u * b + i]); }
    return m;
}

// Stages rows [c0, min(c0 + XCHUNK, r1)) as bytes (xq) and block factors (binfo); ends with a barrier. Only the
// chunk's own rows: a split of 256 rows stages 64 quads, not XCHUNK / 4.
fn stage_chunk(t: u32, c0: u32, r1: u32, lid: u32) {
    if ({{ABLATE}}u == 1u) {
        for (var j = lid; j < {{XCHUNK}}u / 4u; j += {{WG}}u) { xq[j] = vec2<u32>(j * 0x01030507u, j); }
        for (var b = lid; b < {{XCHUNK}}u / 32u; b += {{WG}}u) { binfo[b] = vec2<f32>(1e-3, 0.5); }
        workgroupBarrier();
        return;
    }
    let nq = (min(c0 + {{XCHUNK}}u, r1) - c0) / 4u;
    var av: array<vec4<f32>, QIT>;
    for (var it = 0u; it < QIT; it++) {
        if (it * {{WG}}u < nq) {
            // (a thread past the chunk's quads re-reads the last one and stores nothing)
            let j = min(it * {{WG}}u + lid, nq - 1u);
            av[it] = vec4<f32>(stage(t, quad_row(c0, j, 0u), r1), stage(t, quad_row(c0, j, 1u), r1),
                stage(t, quad_row(c0, j, 2u), r1), stage(t, quad_row(c0, j, 3u), r1));
        }
    }
    for (var it = 0u; it < QIT; it++) {
        let j = it * {{WG}}u + lid;
        if (j < nq) {
            let a = abs(av[it]);
            // A non-finite activation (all-ones exponent, tested on the bits) makes its block's max infinite, so
            // the block's dx is infinite and the outputs come out non-finite, as on the f32 path, instead of
            // the NaN being rounded into finite bytes.
            let bad = any((bitcast<vec4<u32>>(av[it]) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u));
            qmax[j] = select(max(max(a.x, a.y), max(a.z, a.w)), bitcast<f32>(0x7f800000u | (j & 0u)), bad);
        }
    }
    workgroupBarrier();
    for (var it = 0u; it < QIT; it++) {
        let j = it * {{WG}}u + lid;
        if (j < nq) {
            let m = block_max(j / 8u);
            let inv = select(0.0, QMAX / m, m > 1e-30);
            let v = vec4<i32>(round(clamp(av[it] * inv, vec4<f32>(-QMAX), vec4<f32>(QMAX))));
            let vh = (v + vec4<i32>(64)) >> vec4<u32>(7u);
            let vl = v - (vh << vec4<u32>(7u));
            xq[j] = vec2<u32>(pack4xI8(vh), pack4xI8(vl));
            vsum[j] = v.x + v.y + v.z + v.w;
        }
    }
    workgroupBarrier();
    for (var b = lid; b < nq / 8u; b += {{WG}}u) {
        var s = 0;
        for (var i = 0u; i < 8u; i++) { s += vsum[8u * b + i]; }
        let dx = block_max(b) / QMAX;
        binfo[b] = vec2<f32>(dx, dx * f32(s));
    }
    workgroupBarrier();
}

// The high-byte and low-byte plane sums of one packed word (4 columns) against staged quad j.
struct Dots {
    h: vec4<i32>,
    l: vec4<i32>,
}

fn idot_word(q: vec4<u32>, j: u32) -> Dots {
    if ({{BITS}}u == 8u) {
        // codes - 128 as signed bytes; the zero point is shifted to match
        let s = q ^ vec4<u32>(0x80808080u);
        let a = xq[j];
        return Dots(vec4<i32>(dot4I8Packed(s.x, a.x), dot4I8Packed(s.y, a.x), dot4I8Packed(s.z, a.x),
                dot4I8Packed(s.w, a.x)),
            vec4<i32>(dot4I8Packed(s.x, a.y), dot4I8Packed(s.y, a.y), dot4I8Packed(s.z, a.y),
                dot4I8Packed(s.w, a.y)));
    }
    let lo = q & vec4<u32>(0x0F0F0F0Fu);
    let hi = (q >> vec4<u32>(4u)) & vec4<u32>(0x0F0F0F0Fu);
    let a0 = xq[j];
    let a1 = xq[j + 1u];
    return Dots(vec4<i32>(dot4I8Packed(lo.x, a0.x) + dot4I8Packed(hi.x, a1.x),
            dot4I8Packed(lo.y, a0.x) + dot4I8Packed(hi.y, a1.x), dot4I8Packed(lo.z, a0.x) + dot4I8Packed(hi.z, a1.x),
            dot4I8Packed(lo.w, a0.x) + dot4I8Packed(hi.w, a1.x)),
        vec4<i32>(dot4I8Packed(lo.x, a0.y) + dot4I8Packed(hi.x, a1.y),
            dot4I8Packed(lo.y, a0.y) + dot4I8Packed(hi.y, a1.y), dot4I8Packed(lo.z, a0.y) + dot4I8Packed(hi.z, a1.y),
            dot4I8Packed(lo.w, a0.y) + dot4I8Packed(hi.w, a1.y)));
}

// A finished group: its scale times (sum of dx (128 Ih + Il) - z * sum of dx V).
fn group_total(aq: vec4<f32>, sv: f32, g: u32, c4: u32, n4: u32) -> vec4<f32> {
    var z = group_zero(g, c4, n4);
    if ({{BITS}}u == 8u) { z -= vec4<f32>(128.0); }
    return group_scale(g, c4, n4) * (aq - z * sv);
}
//#else
// Stages rows [c0, min(c0 + XCHUNK, r1)) as pre-scaled f32 (xs); ends with a barrier.
fn stage_chunk(t: u32, c0: u32, r1: u32, lid: u32) {
    // Four rows per thread and pass, a constant number of passes: all of a thread's gathers in flight together.
    let nq = (min(c0 + {{XCHUNK}}u, r1) - c0) / 4u;
    var av: array<vec4<f32>, QIT>;
    for (var it = 0u; it < QIT; it++) {
        if (it * {{WG}}u < nq) {
            let k = c0 + 4u * min(it * {{WG}}u + lid, nq - 1u);
            av[it] = vec4<f32>(stage(t, k, r1), stage(t, k + 1u, r1), stage(t, k + 2u, r1), stage(t, k + 3u, r1));
        }
    }
    for (var it = 0u; it < QIT; it++) {
        let i = it * {{WG}}u + lid;
        if (i < nq) {
            if ({{ABLATE}}u == 1u) {
                xs[i] = vec4<f32>(f32(i % 7u));
            } else {
                xs[i] = av[it] * XSCALE;
            }
        }
    }
    workgroupBarrier();
}

fn group_total(aq: vec4<f32>, sv: f32, g: u32, c4: u32, n4: u32) -> vec4<f32> {
    return group_scale(g, c4, n4) * aq;
}
//#endif

// Packed words per thread of a run over words [wc0, wc1): whole 32-row blocks on the integer path.
fn run_words(wc0: u32, wc1: u32) -> u32 {
    let per = (wc1 - wc0 + {{KSPLIT}}u - 1u) / {{KSPLIT}}u;
    if ({{IDOT}}u == 1u) { return (per + WPB - 1u) / WPB * WPB; }
    return per;
}

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let c4l = lid % {{COLS4}}u;
    let ks = lid / {{COLS4}}u;
    let n4 = p.n / 4u;
    let c4 = wid.x * {{COLS4}}u + c4l;
    let split = wid.y;
    let t = wid.z;
    if (t >= step.n_tokens) { return; }
    let live = c4 < n4;
    let wpg = p.group_rows / PF;
    let c4s = min(c4, n4 - 1u); // a valid column for loads of dead lanes (their result is discarded)
    let r0 = split * p.split_rows;
    let r1 = max(min(r0 + p.split_rows, p.kp), r0); // empty past the end (rounded splits)
    // This thread's packed rows of the first chunk, and the prefetch of its first batch.
    var wc0 = r0 / PF;
    var wc1 = min(r0 + {{XCHUNK}}u, r1) / PF;
    var per = run_words(wc0, wc1);
    var wb = wc0 + ks * per;
    var we = min(wb + per, wc1);
    var qs: array<vec4<u32>, {{UNROLL}}>;
    for (var u = 0u; u < {{UNROLL}}u; u++) {
        if (wb + u < we) { qs[u] = load_w((wb + u) * n4 + c4s); }
    }

    // PRO = 1 without block sums (nothing wrote them: the residual came through f32 atomics): this thread's
    // share of the row's sum of squares, 4 rows per load round.
    var own_ss = 0.0;
    if ({{PRO}}u == 1u && p.ss_blocks == 0u) {
        for (var i = 4u * lid; i < p.k; i += 4u * {{WG}}u) {
            let b = t * p.x_stride + i;
            let v = vec4<f32>(x[b], x[b + min(1u, p.k - 1u - i)], x[b + min(2u, p.k - 1u - i)],
                x[b + min(3u, p.k - 1u - i)]) * vec4<f32>(vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k - i));
            own_ss += dot(v, v);
        }
    }

    var acc = vec4<f32>(0.0);
    for (var c0 = r0; c0 < r1; c0 += {{XCHUNK}}u) {
        stage_chunk(t, c0, r1, lid);
        if (wb < we) {
            var g_cur = wb / wpg;
            var g_end = (g_cur + 1u) * wpg;
            var aq = vec4<f32>(0.0);
            var sv = 0.0;
//#if IDOT
            var ih = vec4<i32>(0);
            var il = vec4<i32>(0);
//#else
            var zz = zero_terms(group_zero(g_cur, c4s, n4));
//#endif
            for (var w0 = wb; w0 < we; w0 += {{UNROLL}}u) {
                // (the chunk's first batch was requested before its staging)
                if (w0 != wb) {
                    for (var u = 0u; u < {{UNROLL}}u; u++) {
                        if (w0 + u < we) { qs[u] = load_w((w0 + u) * n4 + c4s); }
                    }
                }
                for (var u = 0u; u < {{UNROLL}}u; u++) {
                    let w = w0 + u;
                    if (w < we) {
                        if (w >= g_end) {
                            acc += group_total(aq, sv, g_cur, c4s, n4);
                            aq = vec4<f32>(0.0);
                            sv = 0.0;
                            g_cur = w / wpg;
                            g_end = (g_cur + 1u) * wpg;
//#if IDOT
                        }
                        let d = idot_word(qs[u], (w * PF - c0) / 4u);
                        ih += d.h;
                        il += d.l;
                        if ((w + 1u) % WPB == 0u) {
                            // the block's last word: its exact integer sums times its dx
                            let bi = binfo[(w * PF - c0) / 32u];
                            aq += bi.x * vec4<f32>(ih * 128 + il);
                            sv += bi.y;
                            ih = vec4<i32>(0);
                            il = vec4<i32>(0);
                        }
//#else
                            zz = zero_terms(group_zero(g_cur, c4s, n4));
                        }
                        aq += word_dot(qs[u], w * PF - c0, zz);
//#endif
                    }
                }
            }
            acc += group_total(aq, sv, g_cur, c4s, n4);
        }
        // The next chunk's run and its first batch, requested before its staging so the two latencies overlap.
        let c1 = c0 + {{XCHUNK}}u;
        if (c1 < r1) {
            wc0 = c1 / PF;
            wc1 = min(c1 + {{XCHUNK}}u, r1) / PF;
            per = run_words(wc0, wc1);
            wb = wc0 + ks * per;
            we = min(wb + per, wc1);
            for (var u = 0u; u < {{UNROLL}}u; u++) {
                if (wb + u < we) { qs[u] = load_w((wb + u) * n4 + c4s); }
            }
        }
        workgroupBarrier();
    }
    // RMSNorm's 1 / rms is one factor per token, so it scales the finished sums: the staging does not wait
    // for the row's sums of squares.
    if ({{PRO}}u == 1u) {
        var ssum = 0.0;
        for (var b = lid; b < p.ss_blocks; b += {{WG}}u) { ssum += ss[t * p.ss_blocks + b]; }
        acc *= inverseSqrt(wg_sum(ssum + own_ss, lid) / f32(p.k) + p.eps);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = {{KSPLIT}}u / 2u; s > 0u; s >>= 1u) {
        if (ks < s) { partial[lid] += partial[lid + s * {{COLS4}}u]; }
        workgroupBarrier();
    }
    var r = vec4<f32>(0.0);
    if (ks == 0u) { r = partial[lid]; }
//#if FATOM
    if (ks == 0u && live) {
        let o = t * p.n + 4u * c4;
        atomicAdd(&res[o], r.x);
        atomicAdd(&res[o + 1u], r.y);
        atomicAdd(&res[o + 2u], r.z);
        atomicAdd(&res[o + 3u], r.w);
    }
//#else
//#if EPI
    residual_epilogue(r, lid, ks, live, c4, split, t, wid.x, nwg.x);
//#else
    if (ks == 0u && live) {
        let o = (split * p.cap + t) * p.y_stride + p.y_col0 + 4u * c4;
//#if ADD
        y[o] += r.x; y[o + 1u] += r.y; y[o + 2u] += r.z; y[o + 3u] += r.w;
//#else
        y[o] = r.x; y[o + 1u] = r.y; y[o + 2u] = r.z; y[o + 3u] = r.w;
//#endif
    }
//#endif
//#endif
}

//#if EPI
//#if FATOM
//#else
// EPI = 1: res[t, cols] += the result, and ss[t, b] = sum of res^2 over each 32 columns b of this block, for the
// next fused RMSNorm. With split-K every split writes its slab of y, and the last to arrive (counted in cnt,
// ordered by device-scope barriers) adds the slabs up in split order, so the sum is deterministic. This folds
// what reduce_add did into the matmul: one dispatch fewer per residual.
fn residual_epilogue(r0: vec4<f32>, lid: u32, ks: u32, live: bool, c4: u32, split: u32, t: u32, blk: u32,
                     blocks: u32) {
    var r = r0;
    if (p.splits > 1u) {
        if (ks == 0u && live) {
            let o = (split * p.cap + t) * p.y_stride + 4u * c4;
            let b = bitcast<vec4<u32>>(r);
            atomicStore(&y[o], b.x);
            atomicStore(&y[o + 1u], b.y);
            atomicStore(&y[o + 2u], b.z);
            atomicStore(&y[o + 3u], b.w);
        }
        storageBarrier();
        if (lid == 0u) {
            let c = t * blocks + blk;
            var last = 0u;
            if (atomicAdd(&cnt[c], 1u) + 1u == p.splits) {
                atomicStore(&cnt[c], 0u);
                last = 1u;
            }
            arrived = last;
        }
        if (workgroupUniformLoad(&arrived) == 0u) { return; }
        storageBarrier();
        if (ks == 0u && live) {
            r = vec4<f32>(0.0);
            for (var s = 0u; s < MAX_SLABS; s++) {
                if (s < p.splits) {
                    let o = (s * p.cap + t) * p.y_stride + 4u * c4;
                    let b = vec4<u32>(atomicLoad(&y[o]), atomicLoad(&y[o + 1u]), atomicLoad(&y[o + 2u]),
                                      atomicLoad(&y[o + 3u]));
                    r += bitcast<vec4<f32>>(b);
                }
            }
        }
    }
    var sq = 0.0;
    if (ks == 0u && live) {
        let o = t * p.n + 4u * c4;
        let v = vec4<f32>(res[o], res[o + 1u], res[o + 2u], res[o + 3u]) + r;
        res[o] = v.x; res[o + 1u] = v.y; res[o + 2u] = v.z; res[o + 3u] = v.w;
        sq = dot(v, v);
    }
    red_f32[lid] = sq;
    workgroupBarrier();
    if (lid < {{COLS4}}u / 8u) {
        var s = 0.0;
        for (var i = 0u; i < 8u; i++) { s += red_f32[8u * lid + i]; }
        let b = blk * ({{COLS4}}u / 8u) + lid;
        if (b < p.ss_blocks) { ss[t * p.ss_blocks + b] = s; }
    }
}
//#endif
//#endif
