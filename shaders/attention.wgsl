// Causal attention over the f16 KV cache, with the sliding window i - W < j <= i, for decode and prefill.
// One workgroup per (token, query head); keys in blocks of WG with an online softmax (running max and sum),
// scores and softmax in f32 as HF does. GQA: query head h reads kv head h / (n_heads / n_kv).
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
// sum) and attention_combine.wgsl merges them. Workgroups past the keys of this step exit at once, so short
// contexts cost no more than one split.
//
// Defines: WG (keys per block, also threads; 256), HD (head_dim, a multiple of 4, at most 4 WG), SPLIT (0 | 1).

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

// The query of this workgroup, 4 dims per element.
var<workgroup> qs: array<vec4<f32>, LANES>;
var<workgroup> probs: array<f32, {{WG}}>;
var<workgroup> accs: array<vec4<f32>, {{WG}}>;

fn halves(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let d = {{HD}}u;
    let kvh = h / (p.n_heads / p.n_kv);
    let i = step.pos0 + t;
    var lo = window_start(i, p.window);
    var hi = i + 1u; // keys [lo, hi)
    if ({{SPLIT}}u == 1u) {
        let s0 = lo + wid.z * SPLIT_KEYS;
        if (s0 >= hi) { return; }
        hi = min(s0 + SPLIT_KEYS, hi);
        lo = s0;
    }
    let qb = t * p.n_heads * d + h * d;
    if (lid < LANES) {
        let e = qb + 4u * lid;
        qs[lid] = vec4<f32>(q[e], q[e + 1u], q[e + 2u], q[e + 3u]);
    }
    workgroupBarrier();

    let lane = lid % LANES;
    let grp = lid / LANES;
    var m = -3.4e38;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var j0 = lo; j0 < hi; j0 += {{WG}}u) {
        let j = j0 + lid;
        var s = -3.4e38;
        if (j < hi) {
            let kb = ((j % p.slots) * p.n_kv + kvh) * LANES;
            var d0 = 0.0;
            var d1 = 0.0;
            for (var e = 0u; e + 1u < LANES; e += 2u) {
                d0 += dot(qs[e], halves(k_cache[kb + e]));
                d1 += dot(qs[e + 1u], halves(k_cache[kb + e + 1u]));
            }
            if (LANES % 2u == 1u) { d0 += dot(qs[LANES - 1u], halves(k_cache[kb + LANES - 1u])); }
            s = (d0 + d1) * p.scale;
        }
        let m_new = max(m, wg_max(s, lid));
        var pj = 0.0;
        if (j < hi) { pj = exp(s - m_new); }
        probs[lid] = pj;
        let alpha = exp(m - m_new);
        l = l * alpha + wg_sum(pj, lid);
        m = m_new;
        acc *= alpha;
        // probs[] was written before wg_sum's barriers, so every thread sees the whole block here.
        let nb = min({{WG}}u, hi - j0);
        if (grp < GROUPS) {
            for (var b = grp; b < nb; b += GROUPS) {
                let vb = (((j0 + b) % p.slots) * p.n_kv + kvh) * LANES;
                acc += probs[b] * halves(v_cache[vb + lane]);
            }
        }
        workgroupBarrier();
    }
    accs[lid] = acc;
    workgroupBarrier();
    if (lid >= LANES) { return; }
    var r = vec4<f32>(0.0);
    for (var g = 0u; g < GROUPS; g++) { r += accs[g * LANES + lid]; }
    if ({{SPLIT}}u == 1u) {
        let pb = ((t * p.n_heads + h) * p.splits + wid.z) * (d + 2u) + 4u * lid;
        out[pb] = r.x;
        out[pb + 1u] = r.y;
        out[pb + 2u] = r.z;
        out[pb + 3u] = r.w;
        if (lid == 0u) {
            out[pb + d] = m;
            out[pb + d + 1u] = l;
        }
        return;
    }
    let o = qb + 4u * lid;
    out[o] = r.x / l;
    out[o + 1u] = r.y / l;
    out[o + 2u] = r.z / l;
    out[o + 3u] = r.w / l;
}
