// Prelude prepended to every kernel by the preprocessor (src/gpu/shader.rs).
// Defines available everywhere: WG (workgroup size of the kernel), SUBGROUP (1 when the adapter has subgroups),
// SG_SIZE (the adapter's subgroup size, or 1).

// Per-step values, written once per step by the host; identical for every dispatch of the step.
struct Step {
    n_tokens: u32,   // tokens in this step (1 for decode, ≤ the prefill chunk capacity otherwise)
    pos0: u32,       // absolute position of the step's first token
    logits_row: u32, // the row of the step whose logits are produced when only the last one is wanted
    _pad: u32,
}

// First key position a query at position i attends to: i - W < j <= i with a sliding window W (0 = none).
fn window_start(i: u32, window: u32) -> u32 {
    if (window > 0u && i + 1u > window) { return i + 1u - window; }
    return 0u;
}

var<workgroup> red_f32: array<f32, {{WG}}>;

//#if SUBGROUP
// Sum over the workgroup: subgroup sums first, then one value per subgroup through workgroup memory.
fn wg_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    if (lid % {{SG_SIZE}}u == 0u) { red_f32[lid / {{SG_SIZE}}u] = s; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < {{WG}}u / {{SG_SIZE}}u; i++) { total += red_f32[i]; }
    workgroupBarrier();
    return total;
}
fn wg_max(v: f32, lid: u32) -> f32 {
    let s = subgroupMax(v);
    if (lid % {{SG_SIZE}}u == 0u) { red_f32[lid / {{SG_SIZE}}u] = s; }
    workgroupBarrier();
    var m = red_f32[0];
    for (var i = 1u; i < {{WG}}u / {{SG_SIZE}}u; i++) { m = max(m, red_f32[i]); }
    workgroupBarrier();
    return m;
}
//#else
// Sum over the workgroup by a tree in workgroup memory (adapters without subgroups).
fn wg_sum(v: f32, lid: u32) -> f32 {
    red_f32[lid] = v;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red_f32[lid] += red_f32[lid + s]; }
        workgroupBarrier();
    }
    let total = red_f32[0];
    workgroupBarrier();
    return total;
}
fn wg_max(v: f32, lid: u32) -> f32 {
    red_f32[lid] = v;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red_f32[lid] = max(red_f32[lid], red_f32[lid + s]); }
        workgroupBarrier();
    }
    let m = red_f32[0];
    workgroupBarrier();
    return m;
}
//#endif
