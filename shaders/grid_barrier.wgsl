// Grid-wide barrier, measured by the benchmark runner (`wgptq bench --grid-barrier N`): what a persistent kernel
// would pay for each phase boundary instead of a dispatch boundary (docs/PERF.md, "What is next"). Every
// workgroup arrives ITERS times on one storage counter and spins until all have arrived. It spins: every
// workgroup of the grid must be resident at once, or it never ends (the runner only runs it when asked).

struct Params {
    iters: u32,  // barriers per dispatch
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// bar: [2] u32: arrivals (all barriers of this dispatch), then departures after the last; both back at 0 when
// the dispatch ends (the last workgroup to leave resets them)
@group(0) @binding(2) var<storage, read_write> bar: array<atomic<u32>>;

@compute @workgroup_size({{WG}})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = nwg.x * nwg.y * nwg.z;
    for (var i = 0u; i < p.iters; i++) {
        storageBarrier();
        if (lid == 0u) {
            atomicAdd(&bar[0], 1u);
            let goal = (i + 1u) * n;
            loop {
                if (atomicLoad(&bar[0]) >= goal) { break; }
            }
        }
        storageBarrier();
        workgroupBarrier();
    }
    // Everyone has left the last spin once every workgroup has counted itself out here; the last one resets.
    if (lid == 0u && atomicAdd(&bar[1], 1u) + 1u == n) {
        atomicStore(&bar[0], 0u);
        atomicStore(&bar[1], 0u);
    }
}
