// SwiGLU activation: act[t, i] = silu(gate[t, i]) * up[t, i], gate and up being the two halves of the fused
// gate|up projection output.

struct Params {
    inter: u32, // intermediate size I
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// gate_up: [capacity, 2 I] f32, gate in columns [0, I), up in [I, 2 I)
@group(0) @binding(2) var<storage, read> gate_up: array<f32>;
// act: [capacity, I] f32
@group(0) @binding(3) var<storage, read_write> act: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (t >= step.n_tokens || i >= p.inter) { return; }
    let g = gate_up[t * 2u * p.inter + i];
    let u = gate_up[t * 2u * p.inter + p.inter + i];
    act[t * p.inter + i] = g / (1.0 + exp(-g)) * u;
}
