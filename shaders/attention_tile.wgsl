// Causal attention for prefill chunks: a workgroup takes a tile of BQ queries of one head and walks their keys
// in blocks of BK, each K and V block staged once in workgroup memory for all BQ queries (attention.wgsl, one
// workgroup per query and head, re-reads every key per query and spent 21 ms of a 512-token prefill on the
// H100 in two barrier reductions per key block: docs/PERF.md run 44). Same math as attention.wgsl: f32 scores
// and online softmax over the f16 cache, the sliding window i - W < j <= i, GQA (head h reads kv head
// h / (n_heads / n_kv)).
//
// Threads: query tq of the tile and sub (0..7). For the scores, sub owns keys 2 sub, 2 sub + 1 of the block; for
// the output, head dims sub HD / 8 .. (sub + 1) HD / 8 - 1. With subgroups (of a multiple of 8 lanes) a query's 8
// threads are 8 consecutive lanes and combine their block maxima, sums and weights by shuffles, leaving two
// barriers per block (the K/V staging); without, tq = lid / 8, sub = lid % 8 and they go through workgroup
// memory (four barriers per block).
//
// Defines: WG (256 = 8 BQ), HD (head_dim, a multiple of 32, at most 128), BK (16).

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    slots: u32,   // KV cache slots S (slot = pos % S)
    window: u32,  // sliding window W, 0 for none
    scale: f32,   // 1 / sqrt(d)
    splits: u32,  // unused (1)
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// q: [capacity, n_heads * d] f32, rotated queries
@group(0) @binding(2) var<storage, read> q: array<f32>;
// k_cache, v_cache: [S, n_kv, d / 4] vec2<u32>, 4 f16 along d per element
@group(0) @binding(3) var<storage, read> k_cache: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec2<u32>>;
// out: [capacity, n_heads * d] f32
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const BQ: u32 = {{WG}}u / 8u;
const BK: u32 = {{BK}}u;
const D4: u32 = {{HD}}u / 4u;  // vec4 (or 4-half) units per row
const DV: u32 = {{HD}}u / 32u; // vec4 of output dims per thread
const QS: u32 = D4 + 1u;       // padded row strides (spread the rows over the banks)
const KS: u32 = D4 + 1u;

// qs[tq * QS + e]: dims 4e .. 4e + 3 of query t0 + tq
var<workgroup> qs: array<vec4<f32>, BQ * QS>;
// ks / vs[b * KS + e]: dims 4e .. 4e + 3 (4 f16) of key j0 + b
var<workgroup> ks: array<vec2<u32>, BK * KS>;
var<workgroup> vs: array<vec2<u32>, BK * KS>;
// ps[tq * BK + b]: softmax weight of key j0 + b for query tq
//#if SUBGROUP
//#else
var<workgroup> ps: array<f32, BQ * BK>;
// red_m / red_s[tq * 8 + sub]: a thread's block maximum / sum
var<workgroup> red_m: array<f32, {{WG}}>;
var<workgroup> red_s: array<f32, {{WG}}>;
//#endif

fn halves(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

@compute @workgroup_size({{WG}})
//#if SUBGROUP
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
//#else
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
//#endif
    let h = wid.x;
    let t0 = wid.y * BQ;
    let n_tok = step.n_tokens;
    if (t0 >= n_tok) { return; }
    let nq = min(BQ, n_tok - t0);
    let kvh = h / (p.n_heads / p.n_kv);
//#if SUBGROUP
    let tq = sg * ({{SG_SIZE}}u / 8u) + lane / 8u;
    let sub = lane % 8u;
    let base = lane - sub; // the query's first lane
//#else
    let tq = lid / 8u;
    let sub = lid % 8u;
//#endif
    let row_stride = p.n_heads * {{HD}}u;
    for (var e = lid; e < BQ * D4; e += {{WG}}u) {
        let r = e / D4;
        var v = vec4<f32>(0.0);
        if (r < nq) {
            let o = (t0 + r) * row_stride + h * {{HD}}u + 4u * (e % D4);
            v = vec4<f32>(q[o], q[o + 1u], q[o + 2u], q[o + 3u]);
        }
        qs[r * QS + e % D4] = v;
    }
    // This thread's query and its keys [k_lo, i]; the tile's keys [lo, hi).
    let i = step.pos0 + t0 + tq;
    let k_lo = window_start(i, p.window);
    let lo = window_start(step.pos0 + t0, p.window);
    let hi = step.pos0 + t0 + nq;
    var m = -3.4e38;
    var l = 0.0;
    var acc: array<vec4<f32>, DV>;
    for (var c = 0u; c < DV; c++) { acc[c] = vec4<f32>(0.0); }
    for (var j0 = lo; j0 < hi; j0 += BK) {
        workgroupBarrier(); // the previous block's readers are done with ks, vs, ps
        for (var e = lid; e < BK * D4; e += {{WG}}u) {
            let j = j0 + e / D4;
            var kw = vec2<u32>(0u);
            var vw = vec2<u32>(0u);
            if (j < hi) {
                let src = ((j % p.slots) * p.n_kv + kvh) * D4 + e % D4;
                kw = k_cache[src];
                vw = v_cache[src];
            }
            ks[(e / D4) * KS + e % D4] = kw;
            vs[(e / D4) * KS + e % D4] = vw;
        }
        workgroupBarrier();
        // Scores of keys j0 + 2 sub and j0 + 2 sub + 1.
        var s = vec2<f32>(0.0);
        for (var e = 0u; e < D4; e++) {
            let qv = qs[tq * QS + e];
            s.x += dot(qv, halves(ks[(2u * sub) * KS + e]));
            s.y += dot(qv, halves(ks[(2u * sub + 1u) * KS + e]));
        }
        s *= p.scale;
        let ja = j0 + 2u * sub;
        let ok = vec2<bool>(ja >= k_lo && ja <= i, ja + 1u >= k_lo && ja + 1u <= i);
        s = select(vec2<f32>(-3.4e38), s, ok);
//#if SUBGROUP
        var mx = max(s.x, s.y);
        mx = max(mx, subgroupShuffleXor(mx, 1u));
        mx = max(mx, subgroupShuffleXor(mx, 2u));
        mx = max(mx, subgroupShuffleXor(mx, 4u));
        let m_new = max(m, mx);
        let pr = select(vec2<f32>(0.0), exp(s - vec2<f32>(m_new)), ok);
        var sum = pr.x + pr.y;
        sum += subgroupShuffleXor(sum, 1u);
        sum += subgroupShuffleXor(sum, 2u);
        sum += subgroupShuffleXor(sum, 4u);
//#else
        red_m[lid] = max(s.x, s.y);
        workgroupBarrier();
        var mx = red_m[tq * 8u];
        for (var u = 1u; u < 8u; u++) { mx = max(mx, red_m[tq * 8u + u]); }
        let m_new = max(m, mx);
        let pr = select(vec2<f32>(0.0), exp(s - vec2<f32>(m_new)), ok);
        ps[tq * BK + 2u * sub] = pr.x;
        ps[tq * BK + 2u * sub + 1u] = pr.y;
        red_s[lid] = pr.x + pr.y;
        workgroupBarrier();
        var sum = 0.0;
        for (var u = 0u; u < 8u; u++) { sum += red_s[tq * 8u + u]; }
//#endif
        let alpha = exp(m - m_new);
        l = l * alpha + sum;
        m = m_new;
        for (var c = 0u; c < DV; c++) { acc[c] *= alpha; }
        for (var b2 = 0u; b2 < BK / 2u; b2++) {
            // The weights of keys 2 b2 and 2 b2 + 1, from the thread that scored them.
//#if SUBGROUP
            let pp = vec2<f32>(subgroupShuffle(pr.x, base + b2), subgroupShuffle(pr.y, base + b2));
//#else
            let pp = vec2<f32>(ps[tq * BK + 2u * b2], ps[tq * BK + 2u * b2 + 1u]);
//#endif
            for (var c = 0u; c < DV; c++) {
                acc[c] += pp.x * halves(vs[(2u * b2) * KS + sub * DV + c]);
                acc[c] += pp.y * halves(vs[(2u * b2 + 1u) * KS + sub * DV + c]);
            }
        }
    }
    if (tq >= nq) { return; }
    let o = (t0 + tq) * row_stride + h * {{HD}}u + 4u * sub * DV;
    for (var c = 0u; c < DV; c++) {
        let r = acc[c] / l;
        out[o + 4u * c] = r.x;
        out[o + 4u * c + 1u] = r.y;
        out[o + 4u * c + 2u] = r.z;
        out[o + 4u * c + 3u] = r.w;
    }
}
