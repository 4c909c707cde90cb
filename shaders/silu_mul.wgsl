// SwiGLU activation: act[t, i] = silu(gate[t, i]) * up[t, i], gate and up being the two halves of the fused
// gate|up projection output. Defines: WG, V4 (vec4 elements).

struct Params {
    inter: u32, // intermediate size I
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
//#if V4
// V4 = 1 (I a multiple of 4): 4 elements per thread through 16-byte loads and stores (the scalar kernel moved
// about 1.1 TB/s on the H100: 2.5 ms of a 512-token prefill, docs/PERF.md run 62).
// gate_up: [capacity, 2 I / 4] vec4<f32>, gate in columns [0, I), up in [I, 2 I)
@group(0) @binding(2) var<storage, read> gate_up: array<vec4<f32>>;
// act: [capacity, I / 4] vec4<f32>
@group(0) @binding(3) var<storage, read_write> act: array<vec4<f32>>;
//#else
// gate_up: [capacity, 2 I] f32, gate in columns [0, I), up in [I, 2 I)
@group(0) @binding(2) var<storage, read> gate_up: array<f32>;
// act: [capacity, I] f32
@group(0) @binding(3) var<storage, read_write> act: array<f32>;
//#endif

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    let w = p.inter / ({{V4}}u * 3u + 1u); // elements (f32 or vec4) per half row
    if (t >= step.n_tokens || i >= w) { return; }
    let g = gate_up[t * 2u * w + i];
    let u = gate_up[t * 2u * w + w + i];
    act[t * w + i] = g / (1.0 + exp(-g)) * u;
}
