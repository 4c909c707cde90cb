// Decode attention (flash-decoding) that reads each key and value once per KV head: a workgroup owns one KV head,
// all G = n_heads / n_kv query heads that share it (GQA), and one run of SPLIT_KEYS keys, and writes the same
// partials as attention.wgsl with SPLIT = 1 (acc[d], max, sum per query head) for attention_combine.wgsl.
// Keys i - W < j <= i (sliding window W, 0 = none), slot j % slots; scores and softmax in f32.
//
// Defines: WG (threads), G (query heads per KV head), HD (head_dim), DPT (dims per thread = ceil(HD / WG)).

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    slots: u32,   // KV cache slots S
    window: u32,  // sliding window W, 0 for none
    scale: f32,   // 1 / sqrt(d)
    splits: u32,  // partial slots per (token, head) in `out`
    _pad: u32,
}

const SPLIT_KEYS: u32 = 256u;
const KPT: u32 = (SPLIT_KEYS + {{WG}}u - 1u) / {{WG}}u; // keys per thread in the score phase

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// q: [capacity, n_heads * d] f32, rotated queries
@group(0) @binding(2) var<storage, read> q: array<f32>;
// k_cache, v_cache: [S, n_kv, d / 2] u32, f16 pairs along d
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;
// out: partials [capacity, n_heads, splits, d + 2] f32 (acc[0..d], max, sum)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, {{G}} * {{HD}}>;          // [G, HD]
var<workgroup> sc: array<f32, {{G}} * SPLIT_KEYS>;      // [G, keys] scores, then probabilities

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let kvh = wid.x;
    let split = wid.y;
    let t = wid.z;
    if (t >= step.n_tokens) { return; }
    let hd2 = {{HD}}u / 2u;
    let i = step.pos0 + t;
    var lo = 0u;
    if (p.window > 0u && i + 1u > p.window) { lo = i + 1u - p.window; }
    let j0 = lo + split * SPLIT_KEYS;
    if (j0 > i) { return; }
    let nk = min(SPLIT_KEYS, i + 1u - j0);

    for (var e = lid; e < {{G}}u * {{HD}}u; e += {{WG}}u) {
        let g = e / {{HD}}u;
        qs[e] = q[t * p.n_heads * {{HD}}u + (kvh * {{G}}u + g) * {{HD}}u + e % {{HD}}u];
    }
    workgroupBarrier();

    // Scores: each thread owns keys lid, lid + WG, ...; one pass over a key row serves all G heads.
    for (var r = 0u; r < KPT; r++) {
        let kk = lid + r * {{WG}}u;
        if (kk < nk) {
            let kb = (((j0 + kk) % p.slots) * p.n_kv + kvh) * hd2;
            var dot: array<f32, {{G}}>;
            for (var g = 0u; g < {{G}}u; g++) { dot[g] = 0.0; }
            for (var e = 0u; e < hd2; e++) {
                let kv = unpack2x16float(k_cache[kb + e]);
                for (var g = 0u; g < {{G}}u; g++) {
                    dot[g] += qs[g * {{HD}}u + 2u * e] * kv.x + qs[g * {{HD}}u + 2u * e + 1u] * kv.y;
                }
            }
            for (var g = 0u; g < {{G}}u; g++) { sc[g * SPLIT_KEYS + kk] = dot[g] * p.scale; }
        }
    }
    workgroupBarrier();

    // Softmax statistics per head.
    var m: array<f32, {{G}}>;
    var l: array<f32, {{G}}>;
    for (var g = 0u; g < {{G}}u; g++) {
        var mx = -3.4e38;
        for (var r = 0u; r < KPT; r++) {
            let kk = lid + r * {{WG}}u;
            if (kk < nk) { mx = max(mx, sc[g * SPLIT_KEYS + kk]); }
        }
        m[g] = wg_max(mx, lid);
        var sum = 0.0;
        for (var r = 0u; r < KPT; r++) {
            let kk = lid + r * {{WG}}u;
            if (kk < nk) {
                let pj = exp(sc[g * SPLIT_KEYS + kk] - m[g]);
                sc[g * SPLIT_KEYS + kk] = pj;
                sum += pj;
            }
        }
        l[g] = wg_sum(sum, lid);
    }
    // wg_sum ends with a barrier: every probability is visible.

    // Weighted values: each thread owns DPT dims; four keys per batch so their loads overlap.
    for (var c = 0u; c < {{DPT}}u; c++) {
        let e = lid + c * {{WG}}u;
        if (e < {{HD}}u) {
            var acc: array<f32, {{G}}>;
            for (var g = 0u; g < {{G}}u; g++) { acc[g] = 0.0; }
            for (var k0 = 0u; k0 < nk; k0 += 4u) {
                var vv: array<f32, 4>;
                for (var u = 0u; u < 4u; u++) {
                    vv[u] = 0.0;
                    if (k0 + u < nk) {
                        let vb = (((j0 + k0 + u) % p.slots) * p.n_kv + kvh) * hd2;
                        let pair = unpack2x16float(v_cache[vb + e / 2u]);
                        vv[u] = select(pair.x, pair.y, (e & 1u) == 1u);
                    }
                }
                for (var u = 0u; u < 4u; u++) {
                    if (k0 + u < nk) {
                        for (var g = 0u; g < {{G}}u; g++) { acc[g] += sc[g * SPLIT_KEYS + k0 + u] * vv[u]; }
                    }
                }
            }
            for (var g = 0u; g < {{G}}u; g++) {
                let h = kvh * {{G}}u + g;
                out[((t * p.n_heads + h) * p.splits + split) * ({{HD}}u + 2u) + e] = acc[g];
            }
        }
    }
    if (lid == 0u) {
        for (var g = 0u; g < {{G}}u; g++) {
            let h = kvh * {{G}}u + g;
            let pb = ((t * p.n_heads + h) * p.splits + split) * ({{HD}}u + 2u);
            out[pb + {{HD}}u] = m[g];
            out[pb + {{HD}}u + 1u] = l[g];
        }
    }
}
