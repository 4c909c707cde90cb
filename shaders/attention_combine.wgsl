// Merges the SPLITS partial attention results of attention.wgsl (flash-decoding):
// out = sum_s exp(m_s - m) acc_s / sum_s exp(m_s - m) l_s, m = max_s m_s. One workgroup per (head, token).
// Only the splits that hold keys of this step (runs of 256 keys from the window start) are read.

struct Params {
    n_heads: u32,
    head_dim: u32,
    splits: u32,  // splits allocated per (token, head) in `part`
    window: u32,  // sliding window W, 0 for none
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// part: [capacity, n_heads, splits, d + 2] f32 (acc[0..d], max, sum)
@group(0) @binding(2) var<storage, read> part: array<f32>;
// out: [capacity, n_heads * d] f32
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let d = p.head_dim;
    let base = (t * p.n_heads + h) * p.splits * (d + 2u);
    let i = step.pos0 + t;
    let lo = window_start(i, p.window);
    let used = min((i + 1u - lo + 255u) / 256u, p.splits);
    // The split loops run in chunks of a constant 8 (guarded), so each chunk's loads issue together.
    var m = -3.4e38;
    for (var s0 = 0u; s0 < used; s0 += 8u) {
        for (var j = 0u; j < 8u; j++) {
            if (s0 + j < used) { m = max(m, part[base + (s0 + j) * (d + 2u) + d]); }
        }
    }
    var l = 0.0;
    for (var s0 = 0u; s0 < used; s0 += 8u) {
        for (var j = 0u; j < 8u; j++) {
            if (s0 + j < used) {
                let o = base + (s0 + j) * (d + 2u);
                l += exp(part[o + d] - m) * part[o + d + 1u];
            }
        }
    }
    for (var e = lid; e < d; e += {{WG}}u) {
        var a = 0.0;
        for (var s0 = 0u; s0 < used; s0 += 8u) {
            for (var j = 0u; j < 8u; j++) {
                if (s0 + j < used) {
                    let o = base + (s0 + j) * (d + 2u);
                    a += exp(part[o + d] - m) * part[o + e];
                }
            }
        }
        out[(t * p.n_heads + h) * d + e] = a / l;
    }
}
