// Causal attention over the f16 KV cache, with the sliding window i - W < j <= i, for decode and prefill.
// One workgroup per (token, query head); keys in blocks of WG with an online softmax (running max and sum),
// scores and softmax in f32 as HF does. GQA: query head h reads kv head h / (n_heads / n_kv).
//
// With SPLIT = 1 (decode, flash-decoding) the keys of a query are split in runs of SPLIT_KEYS over up to p.splits
// workgroups (grid z); each writes its unnormalised partial (acc[d], running max, running sum) and
// attention_combine.wgsl merges them. Workgroups past the keys of this step exit at once, so short contexts
// cost no more than one split.
//
// Defines: WG (keys per block, also threads), HD (head_dim, so the inner loops have constant trip counts and their
// loads issue together), DPT (head dims per thread = ceil(HD / WG)), SPLIT (0 | 1).

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
// k_cache, v_cache: [S, n_kv, d / 2] u32, f16 pairs along d
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;
// out: SPLIT = 0: [capacity, n_heads * d] f32; SPLIT = 1: partials [capacity, n_heads, splits, d + 2] f32
// (acc[0..d], max, sum)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const SPLIT_KEYS: u32 = 256u;

var<workgroup> qs: array<f32, 256>;
var<workgroup> probs: array<f32, {{WG}}>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let d = p.head_dim;
    let hd2 = d / 2u;
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
    for (var e = lid; e < d; e += {{WG}}u) { qs[e] = q[qb + e]; }
    workgroupBarrier();

    var m = -3.4e38;
    var l = 0.0;
    var acc: array<f32, {{DPT}}>;
    for (var c = 0u; c < {{DPT}}u; c++) { acc[c] = 0.0; }

    for (var j0 = lo; j0 < hi; j0 += {{WG}}u) {
        let j = j0 + lid;
        var s = -3.4e38;
        if (j < hi) {
            let kb = ((j % p.slots) * p.n_kv + kvh) * hd2;
            var dot = 0.0;
            for (var e = 0u; e < {{HD}}u / 2u; e++) {
                let kv = unpack2x16float(k_cache[kb + e]);
                dot += qs[2u * e] * kv.x + qs[2u * e + 1u] * kv.y;
            }
            s = dot * p.scale;
        }
        let m_new = max(m, wg_max(s, lid));
        var pj = 0.0;
        if (j < hi) { pj = exp(s - m_new); }
        probs[lid] = pj;
        let alpha = exp(m - m_new);
        l = l * alpha + wg_sum(pj, lid);
        m = m_new;
        // probs[] was written before wg_sum's barriers, so every thread sees the whole block here.
        let nb = min({{WG}}u, hi - j0);
        for (var c = 0u; c < {{DPT}}u; c++) {
            let e = lid + c * {{WG}}u;
            var a = acc[c] * alpha;
            if (e < d) {
                for (var b = 0u; b < nb; b++) {
                    let vb = (((j0 + b) % p.slots) * p.n_kv + kvh) * hd2;
                    let pair = unpack2x16float(v_cache[vb + e / 2u]);
                    var v = pair.x;
                    if ((e & 1u) == 1u) { v = pair.y; }
                    a += probs[b] * v;
                }
            }
            acc[c] = a;
        }
        workgroupBarrier();
    }
    if ({{SPLIT}}u == 1u) {
        let pb = ((t * p.n_heads + h) * p.splits + wid.z) * (d + 2u);
        for (var c = 0u; c < {{DPT}}u; c++) {
            let e = lid + c * {{WG}}u;
            if (e < d) { out[pb + e] = acc[c]; }
        }
        if (lid == 0u) {
            out[pb + d] = m;
            out[pb + d + 1u] = l;
        }
        return;
    }
    for (var c = 0u; c < {{DPT}}u; c++) {
        let e = lid + c * {{WG}}u;
        if (e < d) { out[qb + e] = acc[c] / l; }
    }
}
