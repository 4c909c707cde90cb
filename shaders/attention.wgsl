// Causal attention over the f16 KV cache, with the sliding window i - W < j <= i, for decode and prefill.
// One workgroup per (token, G query heads sharing one KV head); keys in blocks of WG with an online softmax
// (running max and sum), scores and softmax in f32 as HF does. GQA: query head h reads kv head
// h / (n_heads / n_kv); the G heads of a workgroup (consecutive, inside one such group) are served from one read
// of each K and V row, so a long context reads the cache once per G heads instead of once per head (G = 1, 2
// or 4, the G heads packed in the components of vec4 scores, maxima and sums; docs/PERF.md, runs 71-72).
//
// Every loop is short, because decode at short context is pure latency (run 16, docs/PERF.md: the previous
// kernel, a thread per head dim walking every key, cost 20-40 µs per call at 17 keys):
// - scores: one thread per key of the block, its K row read in 8-byte words (4 halves each), all independent;
// - values: the threads form GROUPS groups of LANES = HD / 4 lanes; lane l owns head dims 4l .. 4l + 3 (one
//   8-byte load per V row, so a group reads a row contiguously) and group g the keys g, g + GROUPS, ...; the
//   groups' sums are added once at the end.
//
// With SPLIT = 1 (decode, flash-decoding) the keys of a query are split in runs of SPLIT_KEYS (= WG: one block)
// over up to p.splits workgroups (grid z); each writes its unnormalised partial (acc[d], running max, running
// sum) per head and attention_combine.wgsl merges them. Workgroups past the keys of this step exit at once, so
// short contexts cost no more than one split.
//
// Defines: WG (keys per block, also threads; 256), HD (head_dim, a multiple of 4, at most 4 WG), SPLIT (0 | 1),
// G (query heads per workgroup: 1, 2 or 4, dividing n_heads / n_kv).

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    slots: u32,   // KV cache slots S (slot = pos % S)
    window: u32,  // sliding window W, 0 for none
    scale: f32,   // 1 / sqrt(d)
    splits: u32,  // SPLIT = 1: partial slots per (token, head) in `out`
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// q: [capacity, n_heads * d] f32, rotated queries
@group(0) @binding(2) var<storage, read> q: array<f32>;
// k_cache, v_cache: [S, n_kv, d / 4] vec2<u32>, 4 f16 along d per element
@group(0) @binding(3) var<storage, read> k_cache: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec2<u32>>;
// out: SPLIT = 0: [capacity, n_heads * d] f32; SPLIT = 1: partials [capacity, n_heads, splits, d + 2] f32
// (acc[0..d], max, sum)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const SPLIT_KEYS: u32 = {{WG}}u;
const LANES: u32 = {{HD}}u / 4u;
const GROUPS: u32 = {{WG}}u / LANES;
const G: u32 = {{G}}u;

// The queries of this workgroup's heads, 4 dims per element: head g at [g * LANES, (g + 1) * LANES).
var<workgroup> qs: array<vec4<f32>, LANES * G>;
// The block's softmax weights: key j's in probs[j], head g in component g.
var<workgroup> probs: array<vec4<f32>, {{WG}}>;
// Each thread's value sums, head g at [g * WG, (g + 1) * WG).
var<workgroup> accs: array<vec4<f32>, {{WG}}u * G>;

fn halves(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

// Component-wise maximum and sum over the workgroup (one component per head).
//#if SUBGROUP
var<workgroup> red4: array<vec4<f32>, {{WG}}u / {{SG_SIZE}}u>;
fn wg_max4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    let s = subgroupMax(v);
    if (lid % {{SG_SIZE}}u == 0u) { red4[lid / {{SG_SIZE}}u] = s; }
    workgroupBarrier();
    var m = red4[0];
    for (var i = 1u; i < {{WG}}u / {{SG_SIZE}}u; i++) { m = max(m, red4[i]); }
    workgroupBarrier();
    return m;
}
fn wg_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    let s = subgroupAdd(v);
    if (lid % {{SG_SIZE}}u == 0u) { red4[lid / {{SG_SIZE}}u] = s; }
    workgroupBarrier();
    var m = red4[0];
    for (var i = 1u; i < {{WG}}u / {{SG_SIZE}}u; i++) { m += red4[i]; }
    workgroupBarrier();
    return m;
}
//#else
var<workgroup> red4: array<vec4<f32>, {{WG}}>;
fn wg_max4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    red4[lid] = v;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red4[lid] = max(red4[lid], red4[lid + s]); }
        workgroupBarrier();
    }
    let m = red4[0];
    workgroupBarrier();
    return m;
}
fn wg_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    red4[lid] = v;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red4[lid] += red4[lid + s]; }
        workgroupBarrier();
    }
    let m = red4[0];
    workgroupBarrier();
    return m;
}
//#endif

// The G heads' dot products of their queries with K word e (4 dims).
fn qk(e: u32, kv: vec4<f32>) -> vec4<f32> {
    var d = vec4<f32>(dot(qs[e], kv), 0.0, 0.0, 0.0);
    if (G >= 2u) { d.y = dot(qs[LANES + e], kv); }
    if (G == 4u) {
        d.z = dot(qs[2u * LANES + e], kv);
        d.w = dot(qs[3u * LANES + e], kv);
    }
    return d;
}

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h0 = wid.x * G;
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let d = {{HD}}u;
    let kvh = h0 / (p.n_heads / p.n_kv);
    let i = step.pos0 + t;
    var lo = window_start(i, p.window);
    var hi = i + 1u; // keys [lo, hi)
    if ({{SPLIT}}u == 1u) {
        let s0 = lo + wid.z * SPLIT_KEYS;
        if (s0 >= hi) { return; }
        hi = min(s0 + SPLIT_KEYS, hi);
        lo = s0;
    }
    // The G heads are consecutive, so their queries are one contiguous run of G d floats.
    let qb = t * p.n_heads * d + h0 * d;
    if (lid < LANES * G) {
        let e = qb + 4u * lid;
        qs[lid] = vec4<f32>(q[e], q[e + 1u], q[e + 2u], q[e + 3u]);
    }
    workgroupBarrier();

    let lane = lid % LANES;
    let grp = lid / LANES;
    // Unused components (heads past G) keep a score of -3.4e38 and weights that are never stored.
    var m = vec4<f32>(-3.4e38);
    var l = vec4<f32>(0.0);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var j0 = lo; j0 < hi; j0 += {{WG}}u) {
        let j = j0 + lid;
        var s = vec4<f32>(-3.4e38);
        if (j < hi) {
            let kb = ((j % p.slots) * p.n_kv + kvh) * LANES;
            // two independent chains (even and odd words)
            var d0 = vec4<f32>(0.0);
            var d1 = vec4<f32>(0.0);
            for (var e = 0u; e + 1u < LANES; e += 2u) {
                d0 += qk(e, halves(k_cache[kb + e]));
                d1 += qk(e + 1u, halves(k_cache[kb + e + 1u]));
            }
            if (LANES % 2u == 1u) { d0 += qk(LANES - 1u, halves(k_cache[kb + LANES - 1u])); }
            let sc = (d0 + d1) * p.scale;
            s = vec4<f32>(sc.x, select(s.y, sc.y, G >= 2u), select(s.z, sc.z, G == 4u), select(s.w, sc.w, G == 4u));
        }
        // (one head: scalar reductions, a quarter of the subgroup and workgroup-memory traffic)
        var bm = vec4<f32>(0.0);
        if (G == 1u) { bm = vec4<f32>(wg_max(s.x, lid)); } else { bm = wg_max4(s, lid); }
        let m_new = max(m, bm);
        var pj = vec4<f32>(0.0);
        if (j < hi) { pj = exp(s - m_new); }
        probs[lid] = pj;
        let alpha = exp(m - m_new);
        var bs = vec4<f32>(0.0);
        if (G == 1u) { bs = vec4<f32>(wg_sum(pj.x, lid)); } else { bs = wg_sum4(pj, lid); }
        l = l * alpha + bs;
        m = m_new;
        acc0 *= alpha.x;
        acc1 *= alpha.y;
        acc2 *= alpha.z;
        acc3 *= alpha.w;
        // probs[] was written before wg_sum4's barriers, so every thread sees the whole block here.
        let nb = min({{WG}}u, hi - j0);
        if (grp < GROUPS) {
            for (var b = grp; b < nb; b += GROUPS) {
                let vb = (((j0 + b) % p.slots) * p.n_kv + kvh) * LANES;
                let v = halves(v_cache[vb + lane]);
                let w = probs[b];
                acc0 += w.x * v;
                if (G >= 2u) { acc1 += w.y * v; }
                if (G == 4u) {
                    acc2 += w.z * v;
                    acc3 += w.w * v;
                }
            }
        }
        workgroupBarrier();
    }
    accs[lid] = acc0;
    if (G >= 2u) { accs[{{WG}}u + lid] = acc1; }
    if (G == 4u) {
        accs[2u * {{WG}}u + lid] = acc2;
        accs[3u * {{WG}}u + lid] = acc3;
    }
    workgroupBarrier();
    if (lid >= LANES * G) { return; }
    // Thread (g, ln) finishes dims 4 ln .. 4 ln + 3 of head h0 + g.
    let g = lid / LANES;
    let ln = lid % LANES;
    var r = vec4<f32>(0.0);
    for (var gr = 0u; gr < GROUPS; gr++) { r += accs[g * {{WG}}u + gr * LANES + ln]; }
    let h = h0 + g;
    if ({{SPLIT}}u == 1u) {
        let pb = ((t * p.n_heads + h) * p.splits + wid.z) * (d + 2u) + 4u * ln;
        out[pb] = r.x;
        out[pb + 1u] = r.y;
        out[pb + 2u] = r.z;
        out[pb + 3u] = r.w;
        if (ln == 0u) {
            out[pb + d] = m[g];
            out[pb + d + 1u] = l[g];
        }
        return;
    }
    let o = qb + g * d + 4u * ln;
    let lg = l[g];
    out[o] = r.x / lg;
    out[o + 1u] = r.y / lg;
    out[o + 2u] = r.z / lg;
    out[o + 3u] = r.w / lg;
}
