// Moves the decode position on by one token, on the GPU. The Vulkan replay (src/gpu/replay/) runs a decode
// step recorded once, so its position cannot come from the host: each replayed step opens with this dispatch,
// which turns the previous step's `Step` block into its own (one token, the next position, logits row 0 as
// before).

// p: [4] u32, the parameter block every kernel has at binding 0 (unused; binding 1, the step uniform, is not
// declared: this kernel writes that buffer through binding 2)
@group(0) @binding(0) var<uniform> p: vec4<u32>;
// next: the step uniform's buffer, bound again as storage: [1] Step (common.wgsl), advanced in place
@group(0) @binding(2) var<storage, read_write> next: Step;

@compute @workgroup_size(1)
fn main() {
    next.pos0 = next.pos0 + 1u;
}
