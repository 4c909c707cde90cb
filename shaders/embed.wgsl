// Embedding gather: x[t, :] = table[tokens[t], :] for the tokens of this step.
// The table may be split in row chunks (binding-size limits); each chunk is its own dispatch and writes only the
// tokens that fall in its rows.

struct Params {
    hidden: u32,    // H
    row_start: u32, // first vocabulary row held by `table`
    rows: u32,      // rows held by `table`
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// tokens: [capacity] u32, token ids of the step
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
// table: [rows, H / 2] u32, f16 pairs along H (row-major embedding rows)
@group(0) @binding(3) var<storage, read> table: array<u32>;
// x: [capacity, H] f32, residual stream
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    let half_h = p.hidden / 2u;
    if (t >= step.n_tokens || i >= half_h) { return; }
    let tok = tokens[t];
    if (tok < p.row_start || tok >= p.row_start + p.rows) { return; }
    let w = unpack2x16float(table[(tok - p.row_start) * half_h + i]);
    x[t * p.hidden + 2u * i] = w.x;
    x[t * p.hidden + 2u * i + 1u] = w.y;
}
