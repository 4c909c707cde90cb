//! Decode steps and prefill chunks replayed from Vulkan command buffers recorded once, at plan time.
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
//! encoder was measured first: 0.9% slower decode on the H100, runs 84-85.) The prefill list is recorded once
//! too: a chunk's inputs are written through wgpu and flushed with an empty wgpu submit, then the chunk is one
//! submit. Recording its own pipelines, the replay can also make them without robustBufferAccess's per-load
//! checks (VK_EXT_pipeline_robustness). Decode steps whose input id and position the host writes (a stream's
//! first step, steps whose logits the host samples from) replay each decode list as recorded, without the
//! `advance`, fed like a prefill chunk. The wgpu path stays for every other backend and for the profiler.
//!
//! wgpu does not see these submissions, so each command buffer opens and closes with full memory barriers:
//! what came earlier on the queue (wgpu's writes of the step inputs) is visible to its first dispatch, and what
//! comes later (wgpu's next writes, the next step) waits for its last; its readback copy is made visible to the
//! host before the fence signals, and the host maps the readback buffer only after waiting for that fence.
//! Between its dispatches it has the barriers wgpu would put there: each waits for the one before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ash::vk;
use wgpu::hal::api::Vulkan;

mod pipelines;

use pipelines::{descriptor_type, not_vulkan, vk_err, RawKernel};
pub use pipelines::{
    has_pipeline_robustness, open_with_pipeline_robustness, set_layout_bindings, RawKernels,
};

use super::context::Gpu;
use super::ops::{make_key, Dispatch};
use super::shader::{Binding, Kernel, KernelKey};
use crate::error::{Error, Result};

/// Vulkan objects behind the replayed decode steps. Dropping it waits for its submissions first.
pub struct Replay {
    gpu: Arc<Gpu>,
    device: ash::Device,
    /// The pipelines the command buffers use (shared with the model's other sessions).
    kernels: Arc<RawKernels>,
    cmd_pool: vk::CommandPool,
    desc_pool: vk::DescriptorPool,
    /// `[list][slot]`: decode list `list` (in [`Replay::new`]'s order) reading its id back into readback
    /// buffer `slot`.
    steps: Vec<Vec<Recorded>>,
    /// The prefill list, recorded once (no advance, no copy: the host writes a chunk's inputs through wgpu).
    prefill: Option<Recorded>,
    /// `[list]`: each decode list as it is, for steps whose input id and position the host writes through wgpu
    /// (a stream's first step, steps whose logits the host reads back); no advance, no copy.
    fed: Vec<Recorded>,
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

/// What a replayed step reads: the step uniform it advances, and its id copy (`out_ids` into one of the
/// `readback` buffers, one recorded variant per buffer).
pub struct ReplayIo<'a> {
    pub step: &'a wgpu::Buffer,
    pub out_ids: &'a wgpu::Buffer,
    pub readback: &'a [wgpu::Buffer],
    /// The prefill list, recorded as it is where given.
    pub prefill: Option<&'a [Dispatch]>,
    /// Also record each decode list for host-fed steps ([`Replay::submit_fed`]).
    pub fed: bool,
}

impl Replay {
    /// Records `lists` (each a whole greedy decode step, ending with the GPU argmax into `io.out_ids`) on
    /// `gpu`'s Vulkan device, once per readback buffer. Fails on other backends.
    pub fn new(kernels: Arc<RawKernels>, lists: &[&[Dispatch]], io: &ReplayIo) -> Result<Replay> {
        let gpu = kernels.gpu().clone();
        // SAFETY: the raw device outlives every object made from it: `Replay` keeps the GPU and destroys its
        // objects (after waiting for its submissions) before releasing it.
        let hal = unsafe { gpu.device.as_hal::<Vulkan>() }.ok_or_else(|| not_vulkan("device"))?;
        let family = hal.queue_family_index();
        drop(hal);
        let mut r = Replay {
            device: kernels.device().clone(),
            gpu: gpu.clone(),
            kernels,
            cmd_pool: vk::CommandPool::null(),
            desc_pool: vk::DescriptorPool::null(),
            steps: Vec::new(),
            prefill: None,
            fed: Vec::new(),
            fences: Vec::new(),
            _buffers: Vec::new(),
        };
        // Objects are created into `r` one by one, so an error on the way destroys what exists (Drop).
        let advance = make_key(Kernel::Advance, 1, gpu.caps.subgroup_size, &[]);
        let (mut uniforms, mut storages, mut sets) = (0u32, 0u32, 0u32);
        let prefill = io.prefill.unwrap_or(&[]);
        let keys = || {
            std::iter::once(&advance)
                .chain(lists.iter().flat_map(|l| l.iter().map(|d| &d.key)))
                .chain(prefill.iter().map(|d| &d.key))
        };
        r.kernels.prepare(keys())?;
        for key in keys() {
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
        let advance = r.descriptor_set(&advance, &step_bufs, "advance")?;
        let out_ids = raw_buffer(io.out_ids)?;
        r._buffers.push(io.out_ids.clone());
        for list in lists {
            let mut steps = vec![(advance, [1, 1, 1])];
            for d in list.iter() {
                let set = r.descriptor_set(&d.key, &d.bound, &d.label)?;
                steps.push((set, d.groups));
            }
            if io.fed {
                let fed = r.record(&steps[1..], None)?;
                r.fed.push(fed);
            }
            let mut slots = Vec::new();
            for dst in io.readback {
                let copy = (out_ids, raw_buffer(dst)?);
                r._buffers.push(dst.clone());
                slots.push(r.record(&steps, Some(copy))?);
            }
            r.steps.push(slots);
        }
        if let Some(list) = io.prefill {
            let mut steps = Vec::new();
            for d in list.iter() {
                let set = r.descriptor_set(&d.key, &d.bound, &d.label)?;
                steps.push((set, d.groups));
            }
            r.prefill = Some(r.record(&steps, None)?);
        }
        Ok(r)
    }

    /// Kernel `key` (compiled now if no session did yet) and a descriptor set of it over `bound`, in binding
    /// order.
    fn descriptor_set(
        &mut self,
        key: &KernelKey,
        bound: &[wgpu::Buffer],
        label: &str,
    ) -> Result<(RawKernel, vk::DescriptorSet)> {
        let kinds = key.kernel.bindings();
        if bound.len() != kinds.len() {
            return Err(Error::Gpu {
                op: format!("vulkan replay: {label}"),
                reason: format!("{} buffers for {} bindings", bound.len(), kinds.len()),
            });
        }
        let k = self.kernels.get(key)?;
        let d = &self.device;
        let layouts = [k.set_layout];
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
    /// `copy.0` to `copy.1` for the host where given, and a fence for its submissions.
    fn record(
        &mut self,
        steps: &[((RawKernel, vk::DescriptorSet), [u32; 3])],
        copy: Option<(vk::Buffer, vk::Buffer)>,
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
                if bound_pipeline != Some(k.pipeline) {
                    d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, k.pipeline);
                    bound_pipeline = Some(k.pipeline);
                }
                d.cmd_bind_descriptor_sets(
                    cb,
                    vk::PipelineBindPoint::COMPUTE,
                    k.layout,
                    0,
                    &[set],
                    &[],
                );
                d.cmd_dispatch(cb, groups[0], groups[1], groups[2]);
            }
        }
        if let Some((src, dst)) = copy {
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
            unsafe { d.cmd_copy_buffer(cb, src, dst, &[region]) };
        }
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
        self.submit_recorded(self.recorded(list, slot)?)
    }

    /// Submits decode list `list` as recorded, without advancing the position: its inputs (the token, the
    /// `Step` block) must have reached the queue first, as for [`Replay::submit_prefill`].
    pub fn submit_fed(&self, list: usize) -> Result<()> {
        let r = self.fed.get(list).ok_or_else(|| Error::Gpu {
            op: "vulkan replay".into(),
            reason: format!("no recorded decode list {list}"),
        })?;
        self.submit_recorded(r)
    }

    /// Whether the decode lists were recorded for host-fed steps too.
    pub fn has_fed(&self) -> bool {
        !self.fed.is_empty()
    }

    /// Whether the prefill list was recorded.
    pub fn has_prefill(&self) -> bool {
        self.prefill.is_some()
    }

    /// Submits the recorded prefill chunk. Its inputs (tokens, the `Step` block) must have reached the queue
    /// first: written through wgpu and submitted (an empty wgpu submit flushes them).
    pub fn submit_prefill(&self) -> Result<()> {
        let r = self.prefill.as_ref().ok_or_else(|| Error::Gpu {
            op: "vulkan replay".into(),
            reason: "the prefill list was not recorded".into(),
        })?;
        self.submit_recorded(r)
    }

    /// Submits `r`, waiting first if its previous submission is still in flight.
    fn submit_recorded(&self, r: &Recorded) -> Result<()> {
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
        for r in self
            .steps
            .iter()
            .flatten()
            .chain(&self.prefill)
            .chain(&self.fed)
        {
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
        }
    }
}
