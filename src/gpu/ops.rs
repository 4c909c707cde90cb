//! One builder per graph op: given buffers and shapes, it fixes the specialised kernel, its parameter block and
//! bind group, and the workgroup grid, returning a [`Dispatch`] to replay every step. The planner and the
//! kernel tests both build ops through here, so what is tested is what runs.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytemuck::{Pod, Zeroable};

use super::context::Gpu;
use super::replay::RawKernels;
use super::shader::{Binding, Kernel, KernelKey};
use crate::error::{Error, Result};

/// Host mirror of `struct Step` in shaders/common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct StepParams {
    pub n_tokens: u32,
    pub pos0: u32,
    pub logits_row: u32,
    pub _pad: u32,
}

/// A kernel key with the defines every kernel gets: workgroup size and the subgroup choice. Pure, so the
/// no-GPU tests can enumerate exactly the keys the planner produces.
pub fn make_key(
    kernel: Kernel,
    wg: u32,
    subgroup: Option<u32>,
    extra: &[(&'static str, u32)],
) -> KernelKey {
    let mut key = KernelKey::new(kernel, extra);
    key.defines.insert("WG", wg);
    // Subgroup reductions need whole subgroups inside the workgroup.
    let sg = subgroup.filter(|&s| s > 0 && wg % s == 0 && wg >= s);
    key.defines.insert("SUBGROUP", sg.is_some() as u32);
    key.defines.insert("SG_SIZE", sg.unwrap_or(1));
    key
}

/// Whether shader modules keep wgpu's runtime bounds checks (`WGPTQ_BOUNDS_CHECKS=1`; off by default).
pub fn bounds_checks() -> bool {
    std::env::var("WGPTQ_BOUNDS_CHECKS").is_ok_and(|v| v == "1")
}

/// A kernel: its bind group layout, and its pipeline once compiled (see [`Pipelines::deferred`]).
pub struct Compiled {
    pub layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    key: KernelKey,
    gpu: Arc<Gpu>,
    pipeline: OnceLock<wgpu::ComputePipeline>,
}

impl Compiled {
    /// The pipeline, compiled now if it was not yet.
    pub fn pipeline(&self) -> Result<&wgpu::ComputePipeline> {
        if let Some(p) = self.pipeline.get() {
            return Ok(p);
        }
        let p = self.compile()?;
        Ok(self.pipeline.get_or_init(|| p))
    }

    /// Whether the pipeline has been compiled.
    pub fn is_compiled(&self) -> bool {
        self.pipeline.get().is_some()
    }

    fn compile(&self) -> Result<wgpu::ComputePipeline> {
        let src = self.key.source()?;
        let label = self.key.label();
        let device = &self.gpu.device;
        let made = self.gpu.scoped(&label, || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            };
            let module = if bounds_checks() {
                device.create_shader_module(desc)
            } else {
                // SAFETY: the planner sizes every buffer from the model's validated shapes and every kernel keeps its
                // indices inside them (each is tested against a CPU reference with poisoned outputs); wgpu's
                // per-access bounds clamps and loop-bounding counters would cost a large share of the ALU work of
                // the hot loops. `WGPTQ_BOUNDS_CHECKS=1` turns them back on for debugging.
                unsafe {
                    device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            };
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&self.pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Kernels initialise the workgroup memory they read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        });
        match made {
            // Experimental on every backend: say how to run without it.
            Err(Error::Gpu { op, reason }) if self.key.kernel == Kernel::GptqGemmCoop => {
                Err(Error::Gpu {
                    op,
                    reason: format!(
                        "{reason}\nthis is the prefill GEMM on the matrix units (wgpu's experimental cooperative \
                         matrices); --no-matrix-units or WGPTQ_COOP=0 selects the portable GEMM"
                    ),
                })
            }
            other => other,
        }
    }
}

thread_local! {
    /// Inside [`Pipelines::deferred`] on this thread: new kernels are not compiled yet.
    static DEFER: Cell<bool> = const { Cell::new(false) };
}

/// Pipeline cache keyed by [`KernelKey`]; every kernel is compiled at load/plan time, never per token.
pub struct Pipelines {
    pub gpu: Arc<Gpu>,
    cache: Mutex<HashMap<KernelKey, Arc<Compiled>>>,
    /// Bound to writable bindings a kernel variant does not use (a buffer bound read-only elsewhere in the same
    /// dispatch cannot be).
    pub dummy_rw: wgpu::Buffer,
    /// The Vulkan replay's own pipelines (made on first use), shared by every session of the model.
    replay: Mutex<Option<Arc<RawKernels>>>,
}

impl Pipelines {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        let dummy_rw = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy_rw"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Pipelines {
            gpu,
            cache: Mutex::new(HashMap::new()),
            dummy_rw,
            replay: Mutex::new(None),
        }
    }

    /// The Vulkan replay's pipeline set for this device (see [`super::replay`]).
    pub fn replay_kernels(&self) -> Result<Arc<RawKernels>> {
        let mut slot = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let k = Arc::new(RawKernels::new(&self.gpu)?);
        *slot = Some(k.clone());
        Ok(k)
    }

    /// The key for `kernel` on this device (see [`make_key`]).
    pub fn key(&self, kernel: Kernel, wg: u32, extra: &[(&'static str, u32)]) -> KernelKey {
        make_key(kernel, wg, self.gpu.caps.subgroup_size, extra)
    }

    /// Kernel `key`, compiled now unless inside [`Pipelines::deferred`].
    pub fn get(&self, key: &KernelKey) -> Result<Arc<Compiled>> {
        let compiled = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(key) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(self.layouts(key)?);
                    cache.insert(key.clone(), c.clone());
                    c
                }
            }
        };
        if !DEFER.with(Cell::get) {
            self.compile(&compiled)?;
        }
        Ok(compiled)
    }

    /// Runs `build` with compilation deferred on this thread, then compiles every kernel not compiled yet on all
    /// cores at once. Why: a model's plan needs dozens of kernel variants, and the driver compiles each on one
    /// thread (OpenChat-3.5's session/plan, these and the replay's, took 3.1-4.5 s one after another on the H100
    /// host and 0.8-1.1 s together; docs/PERF.md, runs 95-96).
    pub fn deferred<T>(&self, build: impl FnOnce() -> Result<T>) -> Result<T> {
        let was = DEFER.with(|d| d.replace(true));
        let built = build();
        DEFER.with(|d| d.set(was));
        let built = built?;
        if !was {
            let pending: Vec<Arc<Compiled>> = {
                let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                cache
                    .values()
                    .filter(|c| c.pipeline.get().is_none())
                    .cloned()
                    .collect()
            };
            crate::parallel::for_each(&pending, |c| self.compile(c))?;
        }
        Ok(built)
    }

    /// Compiles `c`'s pipeline if it is not yet; one that fails leaves the cache (a later request tries again
    /// and reports the error again, as it did the first time).
    fn compile(&self, c: &Compiled) -> Result<()> {
        c.pipeline().map(|_| ()).inspect_err(|_| {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.remove(&c.key);
        })
    }

    /// The bind group and pipeline layouts of `key` (cheap; the pipeline is compiled later).
    fn layouts(&self, key: &KernelKey) -> Result<Compiled> {
        let label = key.label();
        let device = &self.gpu.device;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = key
            .kernel
            .bindings()
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::ReadOnly => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        self.gpu.scoped(&label, || {
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            Compiled {
                layout,
                pipeline_layout,
                key: key.clone(),
                gpu: self.gpu.clone(),
                pipeline: OnceLock::new(),
            }
        })
    }

    /// Builds a dispatch: kernel `key`, parameter block `params`, the step uniform, then `buffers` in binding
    /// order from binding 2.
    pub fn dispatch<P: Pod>(
        &self,
        key: KernelKey,
        params: &P,
        step: &wgpu::Buffer,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
        bytes: u64,
    ) -> Result<Dispatch> {
        let compiled = self.get(&key)?;
        let label = key.label();
        let want = key.kernel.bindings().len();
        if buffers.len() + 2 != want {
            return Err(Error::Gpu {
                op: label,
                reason: format!(
                    "{} buffers bound, kernel has {} bindings",
                    buffers.len() + 2,
                    want
                ),
            });
        }
        let max_groups = self
            .gpu
            .device
            .limits()
            .max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::DeviceLimit {
                what: format!("{label} workgroup grid {groups:?}"),
                needed: *groups.iter().max().unwrap_or(&0) as u64,
                limit: max_groups as u64,
            });
        }
        let params_buf = self.gpu.uniform_init(&label, bytemuck::bytes_of(params));
        let bind_group = self.gpu.scoped(&label, || {
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: params_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: step.as_entire_binding(),
                },
            ];
            for (i, b) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 2,
                    resource: b.as_entire_binding(),
                });
            }
            self.gpu
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&label),
                    layout: &compiled.layout,
                    entries: &entries,
                })
        })?;
        let mut bound = vec![params_buf, step.clone()];
        bound.extend(buffers.iter().map(|&b| b.clone()));
        Ok(Dispatch {
            op: key.kernel.file_name().trim_end_matches(".wgsl"),
            label,
            kernel: key.kernel,
            compiled,
            bind_group,
            groups,
            bytes,
            key,
            bound,
        })
    }
}

/// One prebuilt kernel launch, replayed every step.
pub struct Dispatch {
    /// The graph op it implements (`qkv`, `attention`, `down`, …), set by the planner; the kernel name otherwise.
    pub op: &'static str,
    pub label: String,
    pub kernel: Kernel,
    /// Its kernel (the pipeline compiled by the time it is first recorded).
    pub compiled: Arc<Compiled>,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    /// Bytes the op must move at minimum (its floor), for the profiler.
    pub bytes: u64,
    /// The specialised kernel (the Vulkan replay builds its own pipeline from it, `super::replay`).
    pub key: KernelKey,
    /// The buffers bound, in binding order (its parameter block first); they live as long as the dispatch.
    pub bound: Vec<wgpu::Buffer>,
}

impl Dispatch {
    /// Names the graph op this dispatch implements.
    pub fn named(mut self, op: &'static str) -> Self {
        self.op = op;
        self
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) -> Result<()> {
        pass.set_pipeline(self.compiled.pipeline()?);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups[0], self.groups[1], self.groups[2]);
        Ok(())
    }
}

/// Records `dispatches` in one compute pass, then `copy` (source, destination, bytes) if given.
pub fn encode<'a>(
    gpu: &Gpu,
    label: &str,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
    copy: Option<(&wgpu::Buffer, &wgpu::Buffer, u64)>,
) -> Result<wgpu::CommandBuffer> {
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        for d in dispatches {
            d.record(&mut pass)?;
        }
    }
    if let Some((src, dst, size)) = copy {
        enc.copy_buffer_to_buffer(src, 0, dst, 0, size);
    }
    Ok(enc.finish())
}

/// Runs dispatches in one compute pass and one submit.
pub fn run(gpu: &Gpu, dispatches: &[&Dispatch]) -> Result<()> {
    let cb = encode(gpu, "step", dispatches.iter().copied(), None)?;
    gpu.scoped("step", || {
        gpu.submit([cb]);
    })
}
