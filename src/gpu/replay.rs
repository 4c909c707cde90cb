//! Decode steps replayed from Vulkan command buffers recorded once, at plan time.
//!
//! Why: wgpu records, validates and tracks every dispatch of every step again (WebGPU has no reusable command
//! buffers). For OpenChat-3.5's 197 dispatches per token that cost 0.6-1.0 ms of host time per decoded token on
//! the H100 host (docs/PERF.md), where the issue asks for 100 µs, and it is host time a slower CPU does not
//! hide behind the GPU. A greedy decode step is the same dispatches over the same buffers at every position:
//! its input id comes from the previous step's GPU argmax, and its position is moved on by the GPU itself (the
//! `advance` kernel opens every recorded step). So on Vulkan each decode list is recorded once per readback
//! slot into a primary command buffer, with pipelines made from the SPIR-V naga produces for wgpu (same
//! kernels, same options) and descriptor sets over the very buffers of the wgpu bind groups, and each step is
//! one `vkQueueSubmit` to wgpu's queue with a fence. (Executing them as secondary command buffers from a wgpu
//! encoder was measured first: 0.9% slower decode on the H100, runs 84-85.) The wgpu path stays for every other
//! backend, for the first step of a stream (it writes the input id and the position), for steps that read
//! logits back, for the profiler and for prefill.
//!
//! wgpu does not see these submissions, so each command buffer opens and closes with full memory barriers:
//! what came earlier on the queue (wgpu's writes of the step inputs) is visible to its first dispatch, and what
//! comes later (wgpu's next writes, the next step) waits for its last; its readback copy is made visible to the
//! host before the fence signals, and the host maps the readback buffer only after waiting for that fence.
//! Between its dispatches it has the barriers wgpu would put there: each waits for the one before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ash::vk;
use wgpu::hal::api::Vulkan;

use super::context::Gpu;
use super::ops::{make_key, Dispatch};
use super::shader::{self, Binding, Kernel, KernelKey};
use crate::error::{Error, Result};

/// Vulkan objects behind the replayed decode steps. Dropping it waits for its submissions first.
pub struct Replay {
    gpu: Arc<Gpu>,
    device: ash::Device,
    cmd_pool: vk::CommandPool,
    desc_pool: vk::DescriptorPool,
    set_layouts: Vec<vk::DescriptorSetLayout>,
    pipeline_layouts: Vec<vk::PipelineLayout>,
    pipelines: Vec<vk::Pipeline>,
    /// `[list][slot]`: decode list `list` (in [`Replay::new`]'s order) reading its id back into readback
    /// buffer `slot`.
    steps: Vec<Vec<Recorded>>,
    /// Every fence made (destroyed in Drop).
    fences: Vec<vk::Fence>,
    /// The buffers the descriptor sets and copies point at, kept alive as long as the command buffers.
    _buffers: Vec<wgpu::Buffer>,
}

/// One recorded step and the fence of its last submission.
struct Recorded {
    cb: vk::CommandBuffer,
    fence: vk::Fence,
    /// Submitted and not yet waited for.
    pending: AtomicBool,
}

fn vk_err(what: &str) -> impl Fn(vk::Result) -> Error + '_ {
    move |e| Error::Gpu {
        op: format!("vulkan replay: {what}"),
        reason: format!("{e}"),
    }
}

fn not_vulkan(what: &str) -> Error {
    Error::Gpu {
        op: format!("vulkan replay: {what}"),
        reason: "the device is not a wgpu Vulkan device".into(),
    }
}

/// The raw Vulkan buffer behind a wgpu buffer.
fn raw_buffer(b: &wgpu::Buffer) -> Result<vk::Buffer> {
    // SAFETY: the handle is only written into descriptor sets; `Replay` keeps a clone of the wgpu buffer, so
    // it is not destroyed while a command buffer refers to it.
    let hal = unsafe { b.as_hal::<Vulkan>() }.ok_or_else(|| not_vulkan("buffer"))?;
    Ok(unsafe { hal.raw_handle() })
}

/// A global memory barrier: everything `src` wrote is visible to `dst`, which waits for it.
fn barrier(
    device: &ash::Device,
    cb: vk::CommandBuffer,
    (src_stage, src_access): (vk::PipelineStageFlags, vk::AccessFlags),
    (dst_stage, dst_access): (vk::PipelineStageFlags, vk::AccessFlags),
) {
    let mb = vk::MemoryBarrier::default()
        .src_access_mask(src_access)
        .dst_access_mask(dst_access);
    // SAFETY: `cb` is in the recording state (see `record_list`).
    unsafe {
        device.cmd_pipeline_barrier(
            cb,
            src_stage,
            dst_stage,
            vk::DependencyFlags::empty(),
            &[mb],
            &[],
            &[],
        )
    };
}

const COMPUTE: vk::PipelineStageFlags = vk::PipelineStageFlags::COMPUTE_SHADER;
const SHADER_RW: vk::AccessFlags = vk::AccessFlags::from_raw(
    vk::AccessFlags::SHADER_READ.as_raw()
        | vk::AccessFlags::SHADER_WRITE.as_raw()
        | vk::AccessFlags::UNIFORM_READ.as_raw(),
);
const ANY: vk::PipelineStageFlags = vk::PipelineStageFlags::ALL_COMMANDS;
const MEMORY_RW: vk::AccessFlags = vk::AccessFlags::from_raw(
    vk::AccessFlags::MEMORY_READ.as_raw() | vk::AccessFlags::MEMORY_WRITE.as_raw(),
);

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
fn descriptor_type(b: Binding) -> vk::DescriptorType {
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

/// What a replayed step reads: the step uniform it advances, and its id copy (`out_ids` into one of the
/// `readback` buffers, one recorded variant per buffer).
pub struct ReplayIo<'a> {
    pub step: &'a wgpu::Buffer,
    pub out_ids: &'a wgpu::Buffer,
    pub readback: &'a [wgpu::Buffer],
}

impl Replay {
    /// Records `lists` (each a whole greedy decode step, ending with the GPU argmax into `io.out_ids`) on
    /// `gpu`'s Vulkan device, once per readback buffer. Fails on other backends.
    pub fn new(gpu: &Arc<Gpu>, lists: &[&[Dispatch]], io: &ReplayIo) -> Result<Replay> {
        // SAFETY: the raw device outlives every object made from it: `Replay` keeps the GPU and destroys its
        // objects (after waiting for its submissions) before releasing it.
        let hal = unsafe { gpu.device.as_hal::<Vulkan>() }.ok_or_else(|| not_vulkan("device"))?;
        let device = hal.raw_device().clone();
        let family = hal.queue_family_index();
        let instance = hal.shared_instance().raw_instance();
        // SAFETY: a query on the physical device the wgpu device was made from.
        let api = unsafe { instance.get_physical_device_properties(hal.raw_physical_device()) }
            .api_version;
        // The SPIR-V version wgpu picks for the device's Vulkan version (wgpu-hal's adapter.rs).
        let lang = match (vk::api_version_major(api), vk::api_version_minor(api)) {
            (1, 0) => (1, 0),
            (1, 1) => (1, 3),
            (1, 2) => (1, 5),
            _ => (1, 6),
        };
        let subgroups = gpu.device.features().contains(wgpu::Features::SUBGROUP);
        drop(hal);
        let mut r = Replay {
            gpu: gpu.clone(),
            device,
            cmd_pool: vk::CommandPool::null(),
            desc_pool: vk::DescriptorPool::null(),
            set_layouts: Vec::new(),
            pipeline_layouts: Vec::new(),
            pipelines: Vec::new(),
            steps: Vec::new(),
            fences: Vec::new(),
            _buffers: Vec::new(),
        };
        // Objects are created into `r` one by one, so an error on the way destroys what exists (Drop).
        let advance = make_key(Kernel::Advance, 1, gpu.caps.subgroup_size, &[]);
        let mut kernels: HashMap<KernelKey, usize> = HashMap::new();
        let (mut uniforms, mut storages, mut sets) = (0u32, 0u32, 0u32);
        let keys =
            std::iter::once(&advance).chain(lists.iter().flat_map(|l| l.iter().map(|d| &d.key)));
        for key in keys {
            if !kernels.contains_key(key) {
                kernels.insert(key.clone(), r.pipelines.len());
                r.pipeline(key, lang, subgroups)?;
            }
            for b in key.kernel.bindings() {
                match b {
                    Binding::Uniform => uniforms += 1,
                    _ => storages += 1,
                }
            }
            sets += 1;
        }
        let sizes = [
            vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::UNIFORM_BUFFER)
                .descriptor_count(uniforms),
            vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(storages),
        ];
        let info = vk::DescriptorPoolCreateInfo::default()
            .max_sets(sets)
            .pool_sizes(&sizes);
        // SAFETY: plain object creation on a live device; destroyed in Drop.
        r.desc_pool = unsafe { r.device.create_descriptor_pool(&info, None) }
            .map_err(vk_err("descriptor pool"))?;
        let info = vk::CommandPoolCreateInfo::default().queue_family_index(family);
        r.cmd_pool =
            unsafe { r.device.create_command_pool(&info, None) }.map_err(vk_err("command pool"))?;
        // The advance kernel: the step buffer as its uniforms (unused) and as the storage it advances.
        let step_bufs = vec![io.step.clone(), io.step.clone(), io.step.clone()];
        let advance = r.descriptor_set(kernels[&advance], &advance, &step_bufs, "advance")?;
        let out_ids = raw_buffer(io.out_ids)?;
        r._buffers.push(io.out_ids.clone());
        for list in lists {
            let mut steps = vec![(advance, [1, 1, 1])];
            for d in list.iter() {
                let set = r.descriptor_set(kernels[&d.key], &d.key, &d.bound, &d.label)?;
                steps.push((set, d.groups));
            }
            let mut slots = Vec::new();
            for dst in io.readback {
                let copy = (out_ids, raw_buffer(dst)?);
                r._buffers.push(dst.clone());
                slots.push(r.record(&steps, copy)?);
            }
            r.steps.push(slots);
        }
        Ok(r)
    }

    /// Creates the descriptor set layout, pipeline layout and pipeline of one kernel.
    fn pipeline(&mut self, key: &KernelKey, lang: (u8, u8), subgroups: bool) -> Result<()> {
        use naga::proc::BoundsCheckPolicy::Unchecked;
        let code = shader::spirv_with(key, lang, (Unchecked, Unchecked))?;
        let bindings = set_layout_bindings(key);
        let d = &self.device;
        let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
        // SAFETY (this function): object creation on a live device, each destroyed in Drop; the shader module
        // only lives through pipeline creation.
        let set_layout = unsafe { d.create_descriptor_set_layout(&info, None) }
            .map_err(vk_err("descriptor set layout"))?;
        self.set_layouts.push(set_layout);
        let set_layouts = [set_layout];
        let info = vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts);
        let layout =
            unsafe { d.create_pipeline_layout(&info, None) }.map_err(vk_err("pipeline layout"))?;
        self.pipeline_layouts.push(layout);
        let module = unsafe {
            d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)
        }
        .map_err(vk_err("shader module"))?;
        // As wgpu does where the device has subgroups (the kernels ask for the fixed size wgptq checked).
        let flags = if subgroups {
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
        let pipeline = made
            .map_err(|(_, e)| e)
            .map_err(vk_err("compute pipeline"))?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Gpu {
                op: format!("vulkan replay: compute pipeline {}", key.label()),
                reason: "no pipeline returned".into(),
            })?;
        self.pipelines.push(pipeline);
        Ok(())
    }

    /// A descriptor set of kernel `k` (its `key`) over `bound`, in binding order.
    fn descriptor_set(
        &mut self,
        k: usize,
        key: &KernelKey,
        bound: &[wgpu::Buffer],
        label: &str,
    ) -> Result<(usize, vk::DescriptorSet)> {
        let kinds = key.kernel.bindings();
        if bound.len() != kinds.len() {
            return Err(Error::Gpu {
                op: format!("vulkan replay: {label}"),
                reason: format!("{} buffers for {} bindings", bound.len(), kinds.len()),
            });
        }
        let d = &self.device;
        let layouts = [self.set_layouts[k]];
        let info = vk::DescriptorSetAllocateInfo::default()
            .descriptor_pool(self.desc_pool)
            .set_layouts(&layouts);
        // SAFETY: the pool was sized for every set made here; sets are freed with the pool.
        let set =
            unsafe { d.allocate_descriptor_sets(&info) }.map_err(vk_err("descriptor sets"))?[0];
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = bound
            .iter()
            .map(|b| {
                raw_buffer(b).map(|raw| {
                    [vk::DescriptorBufferInfo::default()
                        .buffer(raw)
                        .offset(0)
                        .range(vk::WHOLE_SIZE)]
                })
            })
            .collect::<Result<_>>()?;
        let writes: Vec<vk::WriteDescriptorSet> = infos
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (info, kind))| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(i as u32)
                    .descriptor_type(descriptor_type(*kind))
                    .buffer_info(info)
            })
            .collect();
        // SAFETY: the set is new and not yet used by any command buffer.
        unsafe { d.update_descriptor_sets(&writes, &[]) };
        self._buffers.extend(bound.iter().cloned());
        Ok((k, set))
    }

    /// A primary command buffer running `steps` ((pipeline, set), workgroups), then copying the 4-byte id from
    /// `copy.0` to `copy.1` for the host, and a fence for its submissions.
    fn record(
        &mut self,
        steps: &[((usize, vk::DescriptorSet), [u32; 3])],
        copy: (vk::Buffer, vk::Buffer),
    ) -> Result<Recorded> {
        let d = &self.device;
        // SAFETY (this function): the pool and the fence are only used on one thread at plan time; the command
        // buffer is recorded with objects that live as long as it does.
        let fence = unsafe { d.create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(vk_err("fence"))?;
        self.fences.push(fence);
        let info = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.cmd_pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        let cb = unsafe { d.allocate_command_buffers(&info) }.map_err(vk_err("command buffer"))?[0];
        let begin = vk::CommandBufferBeginInfo::default();
        unsafe { d.begin_command_buffer(cb, &begin) }.map_err(vk_err("begin recording"))?;
        barrier(
            d,
            cb,
            (ANY, vk::AccessFlags::MEMORY_WRITE),
            (COMPUTE, SHADER_RW),
        );
        let mut bound_pipeline = None;
        for (i, &((k, set), groups)) in steps.iter().enumerate() {
            if i > 0 {
                barrier(
                    d,
                    cb,
                    (COMPUTE, vk::AccessFlags::SHADER_WRITE),
                    (COMPUTE, SHADER_RW),
                );
            }
            unsafe {
                if bound_pipeline != Some(k) {
                    d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, self.pipelines[k]);
                    bound_pipeline = Some(k);
                }
                d.cmd_bind_descriptor_sets(
                    cb,
                    vk::PipelineBindPoint::COMPUTE,
                    self.pipeline_layouts[k],
                    0,
                    &[set],
                    &[],
                );
                d.cmd_dispatch(cb, groups[0], groups[1], groups[2]);
            }
        }
        barrier(
            d,
            cb,
            (COMPUTE, vk::AccessFlags::SHADER_WRITE),
            (
                vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::TRANSFER_READ,
            ),
        );
        let region = vk::BufferCopy::default().size(4);
        unsafe { d.cmd_copy_buffer(cb, copy.0, copy.1, &[region]) };
        // Everything this step wrote, visible to the host (the id) and to whatever comes next on the queue.
        barrier(
            d,
            cb,
            (
                COMPUTE | vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE,
            ),
            (
                ANY | vk::PipelineStageFlags::HOST,
                MEMORY_RW | vk::AccessFlags::HOST_READ,
            ),
        );
        unsafe { d.end_command_buffer(cb) }.map_err(vk_err("end recording"))?;
        Ok(Recorded {
            cb,
            fence,
            pending: AtomicBool::new(false),
        })
    }

    /// Submits the recorded step of decode list `list` (its index in [`Replay::new`]'s `lists`) reading its id
    /// back into readback buffer `slot`. The step runs at the position after the previous step's (whose `Step`
    /// block it advances): the caller keeps the host position in step. Waits first if that same recording is
    /// still in flight.
    pub fn submit(&self, list: usize, slot: usize) -> Result<()> {
        let r = self.recorded(list, slot)?;
        self.wait_for(r)?;
        let d = &self.device;
        // SAFETY: the fence is unsignalled and not in use (waited for above); the command buffer is not pending
        // (its previous submission finished); the queue is wgpu's, used under the GPU's submission lock.
        unsafe { d.reset_fences(&[r.fence]) }.map_err(vk_err("reset fence"))?;
        let hal =
            unsafe { self.gpu.queue.as_hal::<Vulkan>() }.ok_or_else(|| not_vulkan("queue"))?;
        let queue = hal.as_raw();
        let cbs = [r.cb];
        let submit = vk::SubmitInfo::default().command_buffers(&cbs);
        self.gpu
            .with_submit_lock(|| unsafe { d.queue_submit(queue, &[submit], r.fence) })
            .map_err(vk_err("submit"))?;
        r.pending.store(true, Ordering::Release);
        Ok(())
    }

    /// Waits until the last submission of (`list`, `slot`) has finished: its id is then in readback buffer `slot`.
    pub fn wait(&self, list: usize, slot: usize) -> Result<()> {
        self.wait_for(self.recorded(list, slot)?)
    }

    fn recorded(&self, list: usize, slot: usize) -> Result<&Recorded> {
        self.steps
            .get(list)
            .and_then(|s| s.get(slot))
            .ok_or_else(|| Error::Gpu {
                op: "vulkan replay".into(),
                reason: format!("no recorded step ({list}, {slot})"),
            })
    }

    fn wait_for(&self, r: &Recorded) -> Result<()> {
        if r.pending.load(Ordering::Acquire) {
            // SAFETY: waiting on a fence of this device that a submission will signal.
            unsafe { self.device.wait_for_fences(&[r.fence], true, u64::MAX) }
                .map_err(vk_err("wait"))?;
            r.pending.store(false, Ordering::Release);
        }
        Ok(())
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        // Submissions of the command buffers may still run: wait for them (and for wgpu's), then destroy
        // (destroying a null handle is a no-op).
        for r in self.steps.iter().flatten() {
            let _ = self.wait_for(r);
        }
        let _ = self.gpu.device.poll(wgpu::PollType::wait_indefinitely());
        let d = &self.device;
        // SAFETY: nothing runs or will run these objects any more.
        unsafe {
            for &f in &self.fences {
                d.destroy_fence(f, None);
            }
            d.destroy_command_pool(self.cmd_pool, None);
            d.destroy_descriptor_pool(self.desc_pool, None);
            for &p in &self.pipelines {
                d.destroy_pipeline(p, None);
            }
            for &l in &self.pipeline_layouts {
                d.destroy_pipeline_layout(l, None);
            }
            for &l in &self.set_layouts {
                d.destroy_descriptor_set_layout(l, None);
            }
        }
    }
}
