//! Layer 4, the wgpu backend: device and capabilities, WGSL kernels and their specialisation, and the ops that
//! plans are made of. Kernels know nothing about models; the planner (in [`plan`]) knows nothing about WGSL.

pub mod context;
pub mod kernels;
pub mod linear;
pub mod memory;
pub mod ops;
pub mod plan;
pub mod shader;
pub mod steps;

pub use context::{Caps, DeviceOptions, Gpu};
pub use ops::{Dispatch, Pipelines, StepParams};
pub use shader::{Kernel, KernelKey};

/// Every kernel variant the planner and the benchmark can produce on a device with the given subgroup size.
pub fn all_variants(subgroup: Option<u32>) -> Vec<KernelKey> {
    let mut v = linear::variants(subgroup);
    v.extend(kernels::variants(subgroup));
    v
}
