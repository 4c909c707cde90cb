//! Layer 4, the wgpu backend: device and capabilities, WGSL kernels and their specialisation, and the ops that
//! plans are made of. Kernels know nothing about models; the planner (in [`plan`]) knows nothing about WGSL.

pub mod context;
pub mod kernels;
pub mod linear;
pub mod memory;
pub mod ops;
pub mod plan;
#[cfg(not(any(target_vendor = "apple", target_arch = "wasm32")))]
pub mod replay;
#[cfg(any(target_vendor = "apple", target_arch = "wasm32"))]
pub mod replay {
    //! This build of wgpu has no Vulkan backend: decode steps are always recorded through wgpu
    //! ([`super::Caps::replay`] is never set), so none of this is reached.
    use std::sync::Arc;

    use super::ops::Dispatch;
    use super::Gpu;
    use crate::error::{Error, Result};

    /// What a replayed step reads (see the Vulkan build).
    pub struct ReplayIo<'a> {
        pub step: &'a wgpu::Buffer,
        pub out_ids: &'a wgpu::Buffer,
        pub readback: &'a [wgpu::Buffer],
        pub prefill: Option<&'a [Dispatch]>,
    }

    /// Never made in this build.
    pub struct Replay(());

    /// Never made in this build.
    pub struct RawKernels(());

    impl RawKernels {
        pub fn new(_gpu: &Arc<Gpu>) -> Result<RawKernels> {
            Err(absent())
        }
    }

    pub fn has_pipeline_robustness(_adapter: &wgpu::Adapter) -> bool {
        false
    }

    pub fn open_with_pipeline_robustness(
        _adapter: &wgpu::Adapter,
        _desc: &wgpu::DeviceDescriptor,
    ) -> Result<(wgpu::Device, wgpu::Queue)> {
        Err(absent())
    }

    fn absent() -> Error {
        Error::Gpu {
            op: "vulkan replay".into(),
            reason: "this build of wgpu has no Vulkan backend".into(),
        }
    }

    impl Replay {
        pub fn new(
            _kernels: Arc<RawKernels>,
            _lists: &[&[Dispatch]],
            _io: &ReplayIo,
        ) -> Result<Replay> {
            Err(absent())
        }

        pub fn has_prefill(&self) -> bool {
            false
        }

        pub fn submit_prefill(&self) -> Result<()> {
            Err(absent())
        }

        pub fn submit(&self, _list: usize, _slot: usize) -> Result<()> {
            Err(absent())
        }

        pub fn wait(&self, _list: usize, _slot: usize) -> Result<()> {
            Err(absent())
        }
    }
}
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
