//! The replay's compiled kernels and the Vulkan device it needs. Compiling a pipeline is most of what recording a
//! replay costs (seconds for a 7B model's kernel variants), so they are made once per kernel variant and model and
//! shared by every session (`Pipelines::replay_kernels`); the device is opened with VK_EXT_pipeline_robustness
//! where the driver has it, so the replayed pipelines can go without robustBufferAccess's per-load checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ash::vk;
use wgpu::hal::api::Vulkan;

use super::super::context::Gpu;
use super::super::shader::{self, Binding, KernelKey};
use crate::error::{Error, Result};

pub(super) fn vk_err(what: &str) -> impl Fn(vk::Result) -> Error + '_ {
    move |e| Error::Gpu {
        op: format!("vulkan replay: {what}"),
        reason: format!("{e}"),
    }
}

pub(super) fn not_vulkan(what: &str) -> Error {
    Error::Gpu {
        op: format!("vulkan replay: {what}"),
        reason: "the device is not a wgpu Vulkan device".into(),
    }
}

/// One kernel compiled for the replay.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawKernel {
    pub set_layout: vk::DescriptorSetLayout,
    pub layout: vk::PipelineLayout,
    pub pipeline: vk::Pipeline,
}

/// The replay's pipelines on one device, made on first use and kept until the last holder goes.
pub struct RawKernels {
    gpu: Arc<Gpu>,
    device: ash::Device,
    /// The SPIR-V version wgpu picks for the device's Vulkan version (wgpu-hal's adapter.rs).
    lang: (u8, u8),
    subgroups: bool,
    made: Mutex<HashMap<KernelKey, RawKernel>>,
}

impl RawKernels {
    /// An empty set for `gpu`'s Vulkan device. Fails on other backends.
    pub fn new(gpu: &Arc<Gpu>) -> Result<RawKernels> {
        // SAFETY: the raw device outlives every object made from it: `RawKernels` keeps the GPU and destroys its
        // objects (after waiting for the device) before releasing it.
        let hal = unsafe { gpu.device.as_hal::<Vulkan>() }.ok_or_else(|| not_vulkan("device"))?;
        let instance = hal.shared_instance().raw_instance();
        // SAFETY: a query on the physical device the wgpu device was made from.
        let api = unsafe { instance.get_physical_device_properties(hal.raw_physical_device()) }
            .api_version;
        let lang = match (vk::api_version_major(api), vk::api_version_minor(api)) {
            (1, 0) => (1, 0),
            (1, 1) => (1, 3),
            (1, 2) => (1, 5),
            _ => (1, 6),
        };
        Ok(RawKernels {
            gpu: gpu.clone(),
            device: hal.raw_device().clone(),
            lang,
            subgroups: gpu.device.features().contains(wgpu::Features::SUBGROUP),
            made: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn device(&self) -> &ash::Device {
        &self.device
    }

    pub(super) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The compiled `key`, compiled now if it was not yet.
    pub(super) fn get(&self, key: &KernelKey) -> Result<RawKernel> {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = made.get(key) {
            return Ok(*k);
        }
        let k = self.compile(key)?;
        made.insert(key.clone(), k);
        Ok(k)
    }

    /// Compiles those of `keys` not compiled yet, on every core at once (the driver compiles each on one thread:
    /// one after another they took 2.3 s for OpenChat-3.5's decode and prefill lists on the H100 host).
    pub(super) fn prepare<'a>(&self, keys: impl IntoIterator<Item = &'a KernelKey>) -> Result<()> {
        let mut todo: Vec<&KernelKey> = {
            let made = self.made.lock().unwrap_or_else(|e| e.into_inner());
            keys.into_iter()
                .filter(|k| !made.contains_key(*k))
                .collect()
        };
        todo.sort();
        todo.dedup();
        let done = Mutex::new(Vec::with_capacity(todo.len()));
        let compiled = crate::parallel::for_each(&todo, |&key| {
            let k = self.compile(key)?;
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((key.clone(), k));
            Ok(())
        });
        let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        for (key, k) in done {
            match made.entry(key) {
                // Compiled meanwhile for another session, whose recordings may use it already: keep that one.
                std::collections::hash_map::Entry::Occupied(_) => self.destroy(&k),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(k);
                }
            }
        }
        compiled
    }

    fn destroy(&self, k: &RawKernel) {
        // SAFETY: a kernel no command buffer was recorded with.
        unsafe {
            self.device.destroy_pipeline(k.pipeline, None);
            self.device.destroy_pipeline_layout(k.layout, None);
            self.device
                .destroy_descriptor_set_layout(k.set_layout, None);
        }
    }

    /// Creates the descriptor set layout, pipeline layout and pipeline of one kernel.
    fn compile(&self, key: &KernelKey) -> Result<RawKernel> {
        use naga::proc::BoundsCheckPolicy::Unchecked;
        let code = shader::spirv_with(key, self.lang, (Unchecked, Unchecked))?;
        let bindings = set_layout_bindings(key);
        let d = &self.device;
        let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
        // SAFETY (this function): object creation on a live device, each destroyed here on failure or in Drop;
        // the shader module only lives through pipeline creation.
        let set_layout = unsafe { d.create_descriptor_set_layout(&info, None) }
            .map_err(vk_err("descriptor set layout"))?;
        let set_layouts = [set_layout];
        let info = vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts);
        let layout = match unsafe { d.create_pipeline_layout(&info, None) } {
            Ok(l) => l,
            Err(e) => {
                unsafe { d.destroy_descriptor_set_layout(set_layout, None) };
                return Err(vk_err("pipeline layout")(e));
            }
        };
        let pipeline = self.pipeline(&code, layout, key);
        match pipeline {
            Ok(pipeline) => Ok(RawKernel {
                set_layout,
                layout,
                pipeline,
            }),
            Err(e) => {
                unsafe {
                    d.destroy_pipeline_layout(layout, None);
                    d.destroy_descriptor_set_layout(set_layout, None);
                }
                Err(e)
            }
        }
    }

    fn pipeline(
        &self,
        code: &[u32],
        layout: vk::PipelineLayout,
        key: &KernelKey,
    ) -> Result<vk::Pipeline> {
        let d = &self.device;
        // SAFETY: as in `compile`.
        let module = unsafe {
            d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(code), None)
        }
        .map_err(vk_err("shader module"))?;
        // As wgpu does where the device has subgroups (the kernels ask for the fixed size wgptq checked).
        let flags = if self.subgroups {
            vk::PipelineShaderStageCreateFlags::ALLOW_VARYING_SUBGROUP_SIZE
        } else {
            vk::PipelineShaderStageCreateFlags::empty()
        };
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .flags(flags)
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        // Where the device has VK_EXT_pipeline_robustness, without robustBufferAccess's per-access checks: the
        // kernels keep their indices inside their buffers (each is tested against a CPU reference with poisoned
        // outputs), as for the wgpu pipelines made without naga's checks.
        let mut unchecked = vk::PipelineRobustnessCreateInfoEXT::default()
            .storage_buffers(vk::PipelineRobustnessBufferBehaviorEXT::DISABLED)
            .uniform_buffers(vk::PipelineRobustnessBufferBehaviorEXT::DISABLED);
        let mut info = vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(layout);
        if self.gpu.caps.replay_unchecked {
            info = info.push_next(&mut unchecked);
        }
        let made = unsafe { d.create_compute_pipelines(vk::PipelineCache::null(), &[info], None) };
        unsafe { d.destroy_shader_module(module, None) };
        made.map_err(|(_, e)| e)
            .map_err(vk_err("compute pipeline"))?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Gpu {
                op: format!("vulkan replay: compute pipeline {}", key.label()),
                reason: "no pipeline returned".into(),
            })
    }
}

impl Drop for RawKernels {
    fn drop(&mut self) {
        // Every replay holding these has waited for its submissions; wait for wgpu's too, then destroy.
        let _ = self.gpu.device.poll(wgpu::PollType::wait_indefinitely());
        let made = std::mem::take(self.made.get_mut().unwrap_or_else(|e| e.into_inner()));
        // Nothing runs or will run these objects any more.
        for k in made.values() {
            self.destroy(k);
        }
    }
}

/// Whether `adapter` offers VK_EXT_pipeline_robustness: the replay's pipelines can then go without the check
/// robustBufferAccess (which wgpu enables) puts on every buffer access.
pub fn has_pipeline_robustness(adapter: &wgpu::Adapter) -> bool {
    // SAFETY: queries on the adapter's physical device.
    let Some(hal) = (unsafe { adapter.as_hal::<Vulkan>() }) else {
        return false;
    };
    let instance = hal.shared_instance().raw_instance();
    let pd = hal.raw_physical_device();
    let exts = unsafe { instance.enumerate_device_extension_properties(pd) }.unwrap_or_default();
    let name = ash::ext::pipeline_robustness::NAME;
    if !exts.iter().any(|e| e.extension_name_as_c_str() == Ok(name)) {
        return false;
    }
    let mut feature = vk::PhysicalDevicePipelineRobustnessFeaturesEXT::default();
    let mut all = vk::PhysicalDeviceFeatures2::default().push_next(&mut feature);
    unsafe { instance.get_physical_device_features2(pd, &mut all) };
    feature.pipeline_robustness == vk::TRUE
}

/// Opens `adapter` as `request_device` would, with VK_EXT_pipeline_robustness enabled as well (see
/// [`has_pipeline_robustness`]).
pub fn open_with_pipeline_robustness(
    adapter: &wgpu::Adapter,
    desc: &wgpu::DeviceDescriptor,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    let fail = |e: String| Error::NoAdapter {
        reason: format!("opening the Vulkan device with VK_EXT_pipeline_robustness: {e}"),
    };
    // SAFETY: the device is opened from this adapter with features and limits it reported, plus one extension
    // and its feature struct that it was checked to offer.
    let hal =
        unsafe { adapter.as_hal::<Vulkan>() }.ok_or_else(|| fail("not a Vulkan adapter".into()))?;
    let mut feature =
        vk::PhysicalDevicePipelineRobustnessFeaturesEXT::default().pipeline_robustness(true);
    let feature_ref = &mut feature;
    let callback: Box<wgpu::hal::vulkan::CreateDeviceCallback<'_>> = Box::new(move |args| {
        args.extensions.push(ash::ext::pipeline_robustness::NAME);
        let info = std::mem::take(args.create_info);
        *args.create_info = info.push_next(feature_ref);
    });
    let open = unsafe {
        hal.open_with_callback(
            desc.required_features,
            &desc.required_limits,
            &desc.memory_hints,
            Some(callback),
        )
    }
    .map_err(|e| fail(e.to_string()))?;
    drop(hal);
    unsafe { adapter.create_device_from_hal(open, desc) }.map_err(|e| fail(e.to_string()))
}

/// The Vulkan descriptor type of a kernel binding.
pub(super) fn descriptor_type(b: Binding) -> vk::DescriptorType {
    match b {
        Binding::Uniform => vk::DescriptorType::UNIFORM_BUFFER,
        _ => vk::DescriptorType::STORAGE_BUFFER,
    }
}

/// The descriptor set layout of a kernel's bind group 0, as wgpu makes it (also for `examples/pipeline_stats`).
pub fn set_layout_bindings(key: &KernelKey) -> Vec<vk::DescriptorSetLayoutBinding<'static>> {
    key.kernel
        .bindings()
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            vk::DescriptorSetLayoutBinding::default()
                .binding(i as u32)
                .descriptor_type(descriptor_type(b))
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
        })
        .collect()
}
