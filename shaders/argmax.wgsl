// Greedy sampling on the GPU: the index of the largest logit (the first one on ties, as torch.argmax), written
// where the next step's embedding reads its token, and to an output list for the host.

struct Params {
    vocab: u32,
    out_index: u32, // element of `out` to write (the step number within a batch of decode steps)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// logits: [1, vocab] f32
@group(0) @binding(2) var<storage, read> logits: array<f32>;
// tokens: [capacity] u32, token ids the next step embeds (element 0 written)
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;
// out: [max_steps] u32, generated ids for the host
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, {{WG}}>;
var<workgroup> best_i: array<u32, {{WG}}>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32) {
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.vocab; i += {{WG}}u) {
        let v = logits[i];
        if (v > bv) { bv = v; bi = i; }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        tokens[0] = best_i[0];
        out[p.out_index] = best_i[0];
    }
}
