// RoPE (HF rotate_half pairing: element i with i + d/2) on the fused q|k|v projection output, and the KV-cache
// write: rotated q goes to `q`, rotated k and plain v go to the f16 caches at slot (pos % slots), so a cache of
// window + chunk slots rolls for sliding-window models. One thread per (token, head, 2 pairs).

struct Params {
    n_heads: u32,    // query heads
    n_kv: u32,       // key/value heads
    head_dim: u32,   // d (multiple of 4)
    slots: u32,      // KV cache slots S
    qkv_splits: u32, // split-K partial slabs qkv is made of (summed here)
    cap: u32,        // capacity rows per slab
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// qkv: [qkv_splits, capacity, (n_heads + 2 n_kv) * d] f32, q heads then k heads then v heads
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
// rope: [max_positions, d / 2] vec2<f32> = (cos, sin) of pos * inv_freq[i], computed on the host as HF does
@group(0) @binding(3) var<storage, read> rope: array<vec2<f32>>;
// q: [capacity, n_heads * d] f32, rotated queries
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
// k_cache: [S, n_kv, d / 2] u32, f16 pairs along d, rotated keys
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
// v_cache: [S, n_kv, d / 2] u32, f16 pairs along d
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;

// Element `i` of the step's qkv rows, summed over the split-K slabs.
fn qkv_at(i: u32) -> f32 {
    let slab = p.cap * (p.n_heads + 2u * p.n_kv) * p.head_dim;
    var v = qkv[i];
    // A constant trip count (16 = the most split-K slabs) lets the compiler issue the loads together.
    for (var s = 1u; s < 16u; s++) {
        if (s < p.qkv_splits) { v += qkv[s * slab + i]; }
    }
    return v;
}

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = p.head_dim;
    let quarter = d / 4u;
    let heads_total = p.n_heads + 2u * p.n_kv;
    let j = gid.x % quarter;      // handles elements 2j, 2j+1 and their partners 2j + d/2, 2j+1 + d/2
    let h = gid.x / quarter;
    let t = gid.y;
    if (t >= step.n_tokens || h >= heads_total) { return; }
    let pos = step.pos0 + t;
    let row = t * heads_total * d + h * d;
    let hd2 = d / 2u;
    let a0 = qkv_at(row + 2u * j);
    let a1 = qkv_at(row + 2u * j + 1u);
    let b0 = qkv_at(row + 2u * j + hd2);
    let b1 = qkv_at(row + 2u * j + 1u + hd2);
    let slot = pos % p.slots;
    if (h >= p.n_heads + p.n_kv) {
        let kvh = h - p.n_heads - p.n_kv;
        let base = (slot * p.n_kv + kvh) * hd2;
        v_cache[base + j] = pack2x16float(vec2<f32>(a0, a1));
        v_cache[base + quarter + j] = pack2x16float(vec2<f32>(b0, b1));
        return;
    }
    let cs0 = rope[pos * hd2 + 2u * j];
    let cs1 = rope[pos * hd2 + 2u * j + 1u];
    // out[i] = x[i] cos - x[i + d/2] sin ; out[i + d/2] = x[i + d/2] cos + x[i] sin (cos/sin of index i)
    let r0 = a0 * cs0.x - b0 * cs0.y;
    let r1 = a1 * cs1.x - b1 * cs1.y;
    let s0 = b0 * cs0.x + a0 * cs0.y;
    let s1 = b1 * cs1.x + a1 * cs1.y;
    if (h < p.n_heads) {
        let qb = t * p.n_heads * d + h * d;
        q[qb + 2u * j] = r0;
        q[qb + 2u * j + 1u] = r1;
        q[qb + 2u * j + hd2] = s0;
        q[qb + 2u * j + 1u + hd2] = s1;
    } else {
        let kvh = h - p.n_heads;
        let base = (slot * p.n_kv + kvh) * hd2;
        k_cache[base + j] = pack2x16float(vec2<f32>(r0, r1));
        k_cache[base + quarter + j] = pack2x16float(vec2<f32>(s0, s1));
    }
}
