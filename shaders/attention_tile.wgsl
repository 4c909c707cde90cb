// Causal attention for prefill chunks: a workgroup takes a tile of BQ queries of one head and walks their keys
// in blocks of BK, each K and V block staged once in workgroup memory for all BQ queries (attention.wgsl, one
// workgroup per query and head, re-reads every key per query and spent 21 ms of a 512-token prefill on the
// H100 in two barrier reductions per key block: docs/PERF.md run 44). Same math as attention.wgsl: f32 scores
// and online softmax over the f16 cache, the sliding window i - W < j <= i, GQA (head h reads kv head
// h / (n_heads / n_kv)).
//
// The kernel is bound by workgroup-memory reads (docs/PERF.md run 63), so with QT = 2 each thread serves two
// queries, tq and tq + HQ, with every K and V element it reads: per block a thread reads 2 q rows and 2 keys
// for 16 score products per 4 dims, and 2 value rows for 64 products. QT = 1 (one query per thread, half the
// query rows) is for adapters whose 32 KB of workgroup memory cannot hold 64 query rows of head_dim 96 or 128. Threads: query slot tq and sub (0..7). For the scores,
// sub owns keys sub and sub + BK / 2 of the block; for the output, the head dims of vec4s c * 8 + sub
// (c < HD / 32). Both make a slot's 8 threads read 8 different rows (scores) or 8 consecutive elements
// (values) of the staging, free of bank conflicts (with keys 2 sub, 2 sub + 1 and contiguous dims per sub,
// f32 staging took 18.7 ms per 512-token chunk on the H100 against 8.1, run 62). K and V stay f16 in workgroup
// memory (half the bytes read; the queries' rows fill the rest of 48 KB). With subgroups (of a multiple of 8
// lanes) a slot's 8 threads are 8 consecutive lanes and combine their block maxima, sums and weights by
// shuffles, leaving two barriers per block (the K/V staging); without, tq = lid / 8, sub = lid % 8 and they go
// through workgroup memory (four barriers per block).
//
// Defines: WG (256 = 8 BQ / QT), HD (head_dim, a multiple of 32, at most 128), BK (16), QT (1 or 2), QT2 (QT = 2).

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

const HQ: u32 = {{WG}}u / 8u; // slots of 8 threads; the second query of slot tq is tq + HQ
const BQ: u32 = HQ * {{QT}}u;  // queries
const BK: u32 = {{BK}}u;
const D4: u32 = {{HD}}u / 4u;  // vec4 (or 4-half) units per row
const DV: u32 = {{HD}}u / 32u; // vec4 of output dims per thread
const QS: u32 = D4 + 1u;       // padded row strides (spread the rows over the banks)
const KS: u32 = D4 + 1u;

// qs[r * QS + e]: dims 4e .. 4e + 3 of query t0 + r
var<workgroup> qs: array<vec4<f32>, BQ * QS>;
// ks / vs[b * KS + e]: dims 4e .. 4e + 3 (4 f16) of key j0 + b
var<workgroup> ks: array<vec2<u32>, BK * KS>;
var<workgroup> vs: array<vec2<u32>, BK * KS>;
//#if SUBGROUP
//#else
// ps[r * BK + b]: softmax weight of key j0 + b for query r
var<workgroup> ps: array<f32, BQ * BK>;
// red_m / red_s[tq * 8 + sub]: a thread's block maxima / sums of its two queries
var<workgroup> red_m: array<vec2<f32>, {{WG}}>;
var<workgroup> red_s: array<vec2<f32>, {{WG}}>;
//#endif

fn halves(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

// K and V elements (4 f16 each) a thread stages per block (the last pass partly idle below head_dim 128).
const KPT: u32 = (BK * D4 + {{WG}}u - 1u) / {{WG}}u;

// This thread's K and V elements of the block at key j0 (keys at or past hi read as 0).
fn load_kv(j0: u32, hi: u32, kvh: u32, lid: u32, kr: ptr<function, array<vec2<u32>, KPT>>,
           vr: ptr<function, array<vec2<u32>, KPT>>) {
    for (var u = 0u; u < KPT; u++) {
        let e = lid + u * {{WG}}u;
        let j = j0 + e / D4;
        var kw = vec2<u32>(0u);
        var vw = vec2<u32>(0u);
        if (j < hi && e < BK * D4) {
            let src = ((j % p.slots) * p.n_kv + kvh) * D4 + e % D4;
            kw = k_cache[src];
            vw = v_cache[src];
        }
        (*kr)[u] = kw;
        (*vr)[u] = vw;
    }
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
    let base = lane - sub; // the slot's first lane
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
    // This thread's queries (rows tq, tq + HQ) and their keys [k_lo, i]; the tile's keys [lo, hi).
    let ia = step.pos0 + t0 + tq;
    let ib = ia + HQ;
    let lo_a = window_start(ia, p.window);
    let lo_b = window_start(ib, p.window);
    let lo = window_start(step.pos0 + t0, p.window);
    let hi = step.pos0 + t0 + nq;
    var m = vec2<f32>(-3.4e38);
    var l = vec2<f32>(0.0);
    var acc_a: array<vec4<f32>, DV>;
    for (var c = 0u; c < DV; c++) { acc_a[c] = vec4<f32>(0.0); }
//#if QT2
    var acc_b: array<vec4<f32>, DV>;
    for (var c = 0u; c < DV; c++) { acc_b[c] = vec4<f32>(0.0); }
//#endif
    // The first block's K and V in registers; each block's successor is requested before the block is used,
    // so the cache reads overlap the arithmetic instead of stalling every thread after each barrier.
    var kr: array<vec2<u32>, KPT>;
    var vr: array<vec2<u32>, KPT>;
    load_kv(lo, hi, kvh, lid, &kr, &vr);
    for (var j0 = lo; j0 < hi; j0 += BK) {
        workgroupBarrier(); // the previous block's readers are done with ks, vs, ps
        for (var u = 0u; u < KPT; u++) {
            let e = lid + u * {{WG}}u;
            if (e < BK * D4) {
                ks[(e / D4) * KS + e % D4] = kr[u];
                vs[(e / D4) * KS + e % D4] = vr[u];
            }
        }
        workgroupBarrier();
        if (j0 + BK < hi) { load_kv(j0 + BK, hi, kvh, lid, &kr, &vr); }
        // Scores of keys j0 + sub (x) and j0 + sub + BK / 2 (y) for query a and query b.
        var sa = vec2<f32>(0.0);
        var sb = vec2<f32>(0.0);
        for (var e = 0u; e < D4; e++) {
            let qa = qs[tq * QS + e];
            let k0 = halves(ks[sub * KS + e]);
            let k1 = halves(ks[(sub + BK / 2u) * KS + e]);
            sa += vec2<f32>(dot(qa, k0), dot(qa, k1));
//#if QT2
            let qb = qs[(tq + HQ) * QS + e];
            sb += vec2<f32>(dot(qb, k0), dot(qb, k1));
//#endif
        }
        let jx = j0 + sub;
        let jy = jx + BK / 2u;
        let ok_a = vec2<bool>(jx >= lo_a && jx <= ia, jy >= lo_a && jy <= ia);
        let ok_b = vec2<bool>(jx >= lo_b && jx <= ib, jy >= lo_b && jy <= ib);
        sa = select(vec2<f32>(-3.4e38), sa * p.scale, ok_a);
        sb = select(vec2<f32>(-3.4e38), sb * p.scale, ok_b);
        // (x: query a, y: query b from here on)
//#if SUBGROUP
        var mx = vec2<f32>(max(sa.x, sa.y), max(sb.x, sb.y));
        mx = max(mx, subgroupShuffleXor(mx, 1u));
        mx = max(mx, subgroupShuffleXor(mx, 2u));
        mx = max(mx, subgroupShuffleXor(mx, 4u));
        let m_new = max(m, mx);
        let pa = select(vec2<f32>(0.0), exp(sa - vec2<f32>(m_new.x)), ok_a);
        let pb = select(vec2<f32>(0.0), exp(sb - vec2<f32>(m_new.y)), ok_b);
        var sum = vec2<f32>(pa.x + pa.y, pb.x + pb.y);
        sum += subgroupShuffleXor(sum, 1u);
        sum += subgroupShuffleXor(sum, 2u);
        sum += subgroupShuffleXor(sum, 4u);
//#else
        red_m[lid] = vec2<f32>(max(sa.x, sa.y), max(sb.x, sb.y));
        workgroupBarrier();
        var mx = red_m[tq * 8u];
        for (var u = 1u; u < 8u; u++) { mx = max(mx, red_m[tq * 8u + u]); }
        let m_new = max(m, mx);
        let pa = select(vec2<f32>(0.0), exp(sa - vec2<f32>(m_new.x)), ok_a);
        let pb = select(vec2<f32>(0.0), exp(sb - vec2<f32>(m_new.y)), ok_b);
        ps[tq * BK + sub] = pa.x;
        ps[tq * BK + sub + BK / 2u] = pa.y;
//#if QT2
        ps[(tq + HQ) * BK + sub] = pb.x;
        ps[(tq + HQ) * BK + sub + BK / 2u] = pb.y;
//#endif
        red_s[lid] = vec2<f32>(pa.x + pa.y, pb.x + pb.y);
        workgroupBarrier();
        var sum = vec2<f32>(0.0);
        for (var u = 0u; u < 8u; u++) { sum += red_s[tq * 8u + u]; }
//#endif
        let alpha = exp(m - m_new);
        l = l * alpha + sum;
        m = m_new;
        for (var c = 0u; c < DV; c++) {
            acc_a[c] *= alpha.x;
//#if QT2
            acc_b[c] *= alpha.y;
//#endif
        }
        for (var b = 0u; b < BK / 2u; b++) {
            // The weights of keys b and b + BK / 2 for both queries, from the thread that scored them.
//#if SUBGROUP
            let wa = vec2<f32>(subgroupShuffle(pa.x, base + b), subgroupShuffle(pa.y, base + b));
//#if QT2
            let wb = vec2<f32>(subgroupShuffle(pb.x, base + b), subgroupShuffle(pb.y, base + b));
//#endif
//#else
            let wa = vec2<f32>(ps[tq * BK + b], ps[tq * BK + b + BK / 2u]);
//#if QT2
            let wb = vec2<f32>(ps[(tq + HQ) * BK + b], ps[(tq + HQ) * BK + b + BK / 2u]);
//#endif
//#endif
            for (var c = 0u; c < DV; c++) {
                let v0 = halves(vs[b * KS + c * 8u + sub]);
                let v1 = halves(vs[(b + BK / 2u) * KS + c * 8u + sub]);
                acc_a[c] += wa.x * v0 + wa.y * v1;
//#if QT2
                acc_b[c] += wb.x * v0 + wb.y * v1;
//#endif
            }
        }
    }
    for (var c = 0u; c < DV; c++) {
        if (tq < nq) { store_out(t0 + tq, h, row_stride, sub, c, acc_a[c] / l.x); }
//#if QT2
        if (tq + HQ < nq) { store_out(t0 + tq + HQ, h, row_stride, sub, c, acc_b[c] / l.y); }
//#endif
    }
}

// Output dims 4 (c * 8 + sub) .. + 3 of query row t.
fn store_out(t: u32, h: u32, row_stride: u32, sub: u32, c: u32, r: vec4<f32>) {
    let o = t * row_stride + h * {{HD}}u + 4u * (c * 8u + sub);
    out[o] = r.x;
    out[o + 1u] = r.y;
    out[o + 2u] = r.z;
    out[o + 3u] = r.w;
}
