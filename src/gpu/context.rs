//! The GPU device and what it can do. Capabilities are decided once here ([`Caps`]) and passed down, so no
//! kernel or planner code branches on features ad hoc.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// Which adapter to use.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// Substring of the adapter name, or its index in [`choose_adapter`]'s `adapters` order; `None` = the first high-performance one.
    pub adapter: Option<String>,
    /// Disable subgroup kernels even where the adapter has them (tests the workgroup-memory fallback).
    pub no_subgroups: bool,
    /// Only adapters of this backend: "vulkan", "metal", "dx12" or "gl"; `None` = all (or `WGPU_BACKEND`).
    pub backend: Option<String>,
    /// Keep the prefill on the portable f32 GEMM even where the adapter has matrix units (also
    /// `WGPTQ_COOP=0`).
    pub no_matrix_units: bool,
    /// Bit-identical results from run to run: the decode residual is added in a fixed order by the last split
    /// of each column block, even where the adapter has f32 atomics (which are faster, and add in arrival order;
    /// also `WGPTQ_FLOAT_ATOMICS=0`).
    pub deterministic: bool,
    /// Record every decode step and prefill chunk through wgpu, even on Vulkan, where by default they are
    /// replayed from command buffers recorded once (`crate::gpu::replay`; also `WGPTQ_REPLAY=0`).
    pub no_replay: bool,
}

/// Backend names `DeviceOptions::backend` accepts.
pub const BACKENDS: [&str; 4] = ["vulkan", "metal", "dx12", "gl"];

/// The wgpu instance for these options (the backend filter applied over wgpu's environment settings).
fn instance(opts: &DeviceOptions) -> Result<wgpu::Instance> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = &opts.backend {
        desc.backends = match b.to_ascii_lowercase().as_str() {
            "vulkan" => wgpu::Backends::VULKAN,
            "metal" => wgpu::Backends::METAL,
            "dx12" => wgpu::Backends::DX12,
            "gl" => wgpu::Backends::GL,
            other => {
                return Err(Error::InvalidArgument {
                    name: "backend".into(),
                    value: other.into(),
                    reason: format!("expected one of {}", BACKENDS.join(", ")),
                })
            }
        };
    }
    Ok(wgpu::Instance::new(desc))
}

/// Decided capabilities of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Fixed subgroup size when subgroup operations are used; `None` = workgroup-memory reductions.
    pub subgroup_size: Option<u32>,
    pub timestamps: bool,
    pub max_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations: u32,
    /// A CPU (software) adapter such as lavapipe.
    pub is_cpu: bool,
    /// The prefill GEMM runs on the matrix units: wgpu's experimental cooperative matrices with 16x16x16 f16
    /// inputs and f32 accumulation, 32-wide subgroups and room for [`COOP_WORKGROUP_BYTES`].
    pub coop_matrix: bool,
    /// `subgroupBarrier()` (wgpu's SUBGROUP_BARRIER), requested with the matrix units: the scaled matrix-unit GEMM
    /// rescales its accumulators under subgroup barriers ([`crate::gpu::linear::coop_scaled`]).
    pub subgroup_barrier: bool,
    /// f32 atomic add on storage buffers (wgpu's SHADER_FLOAT32_ATOMIC), unless the options ask for
    /// deterministic results: the decode residual GEMVs add their split-K partial sums straight into the residual
    /// stream ([`crate::gpu::linear::Epilogue::ResidualAtomic`]).
    pub float_atomics: bool,
    /// Decode steps and prefill chunks are replayed from Vulkan command buffers recorded once
    /// (`crate::gpu::replay`): a Vulkan adapter, unless the options (or `WGPTQ_REPLAY=0`) ask for wgpu's
    /// recording.
    pub replay: bool,
    /// The replayed pipelines go without robustBufferAccess's per-access checks (the device has
    /// VK_EXT_pipeline_robustness, and `WGPTQ_REPLAY_CHECKED=1` does not keep them).
    pub replay_unchecked: bool,
}

/// Workgroup memory the cooperative-matrix GEMM needs at most (its largest tile).
pub const COOP_WORKGROUP_BYTES: u32 = 48 * 1024;

/// Whether the adapter offers the one cooperative-matrix shape the prefill GEMM is written for.
fn has_coop_f16_f32(adapter: &wgpu::Adapter) -> bool {
    let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    adapter.features().contains(needed)
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
}

/// Device, queue and capabilities.
pub struct Gpu {
    pub adapter_info: wgpu::AdapterInfo,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: Caps,
    /// Held around every submission to the queue: the Vulkan replay submits to wgpu's queue itself, and Vulkan
    /// wants a queue's submissions externally synchronised. Submit through [`Gpu::submit`].
    submits: std::sync::Mutex<()>,
}

/// Optional features wgptq takes advantage of when an adapter has them.
pub const USED_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SHADER_FLOAT32_ATOMIC);

/// The adapter `opts` selects among `adapters` (enumerated by `instance`, in [`choose_adapter`]'s `adapters` order): the one at
/// that index, else the first whose name contains the text (case-insensitive), else with no selection wgpu's
/// high-performance request. [`Gpu::new`] and `wgptq info` both choose through here, so they cannot disagree.
pub fn select_adapter(
    instance: &wgpu::Instance,
    adapters: &[wgpu::Adapter],
    opts: &DeviceOptions,
) -> Result<wgpu::Adapter> {
    match &opts.adapter {
        Some(sel) => {
            let by_index = sel.parse::<usize>().ok().and_then(|i| adapters.get(i));
            by_index
                .or_else(|| {
                    adapters
                        .iter()
                        .find(|a| a.get_info().name.to_lowercase().contains(&sel.to_lowercase()))
                })
                .cloned()
                .ok_or_else(|| Error::NoAdapter {
                    reason: format!(
                        "no adapter matches `{sel}`; found: {}",
                        adapters
                            .iter()
                            .map(|a| a.get_info().name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
        }
        None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|e| Error::NoAdapter {
            reason: format!(
                "{e}; on a machine without a GPU install Mesa's software Vulkan (Debian: mesa-vulkan-drivers)"
            ),
        }),
    }
}

/// The adapters wgpu finds (in selection order, with the features wgptq uses) and which of them [`Gpu::new`] would use with these options.
#[derive(Debug, Clone)]
pub struct AdapterChoice {
    /// Every adapter, in selection order, with the features wgptq uses.
    pub adapters: Vec<(wgpu::AdapterInfo, wgpu::Features)>,
    /// Index into `adapters` of the one selected, or why none is.
    pub selected: std::result::Result<usize, String>,
    /// Capabilities the selected adapter would be used with (no device is created to know them).
    pub caps: Option<Caps>,
}

/// Enumerates the adapters and applies [`select_adapter`] without creating a device.
pub fn choose_adapter(opts: &DeviceOptions) -> AdapterChoice {
    let instance = match instance(opts) {
        Ok(i) => i,
        Err(e) => {
            return AdapterChoice {
                adapters: Vec::new(),
                selected: Err(e.to_string()),
                caps: None,
            }
        }
    };
    let found = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let adapters: Vec<_> = found
        .iter()
        .map(|a| (a.get_info(), a.features() & USED_FEATURES))
        .collect();
    let (selected, caps) = match select_adapter(&instance, &found, opts) {
        Ok(a) => {
            let info = a.get_info();
            // request_adapter returns its own handle: find it in the enumeration by its description.
            let index = adapters
                .iter()
                .position(|(i, _)| *i == info)
                .ok_or_else(|| format!("{} (not among the enumerated adapters)", info.name));
            (index, Some(Caps::of_adapter(&a, opts).0))
        }
        Err(e) => (Err(e.to_string()), None),
    };
    AdapterChoice {
        adapters,
        selected,
        caps,
    }
}

impl Caps {
    /// The capabilities wgptq uses `adapter` with, and the features it must request for them.
    pub fn of_adapter(adapter: &wgpu::Adapter, opts: &DeviceOptions) -> (Caps, wgpu::Features) {
        let info = adapter.get_info();
        let features = adapter.features();
        let mut required = wgpu::Features::empty();
        let fixed_subgroup = info.subgroup_min_size == info.subgroup_max_size;
        let subgroup_size = if features.contains(wgpu::Features::SUBGROUP)
            && fixed_subgroup
            && !opts.no_subgroups
        {
            required |= wgpu::Features::SUBGROUP;
            Some(info.subgroup_min_size)
        } else {
            None
        };
        let timestamps = features.contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        );
        if timestamps {
            required |=
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        }
        let limits = adapter.limits();
        let coop_wanted =
            !opts.no_matrix_units && std::env::var("WGPTQ_COOP").map_or(true, |v| v != "0");
        let coop_matrix = coop_wanted
            && subgroup_size == Some(32)
            && limits.max_compute_workgroup_storage_size >= COOP_WORKGROUP_BYTES
            && has_coop_f16_f32(adapter);
        if coop_matrix {
            required |=
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        }
        let subgroup_barrier = coop_matrix && features.contains(wgpu::Features::SUBGROUP_BARRIER);
        if subgroup_barrier {
            required |= wgpu::Features::SUBGROUP_BARRIER;
        }
        let float_atomics = features.contains(wgpu::Features::SHADER_FLOAT32_ATOMIC)
            && !opts.deterministic
            && std::env::var("WGPTQ_FLOAT_ATOMICS").map_or(true, |v| v != "0");
        if float_atomics {
            required |= wgpu::Features::SHADER_FLOAT32_ATOMIC;
        }
        let replay = info.backend == wgpu::Backend::Vulkan
            && cfg!(not(any(target_vendor = "apple", target_arch = "wasm32")))
            && !opts.no_replay
            && std::env::var("WGPTQ_REPLAY").map_or(true, |v| v != "0");
        let caps = Caps {
            subgroup_size,
            timestamps,
            max_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            is_cpu: info.device_type == wgpu::DeviceType::Cpu,
            coop_matrix,
            subgroup_barrier,
            float_atomics,
            replay,
            replay_unchecked: replay
                && std::env::var("WGPTQ_REPLAY_CHECKED").map_or(true, |v| v != "1")
                && super::replay::has_pipeline_robustness(adapter),
        };
        (caps, required)
    }
}

impl Gpu {
    pub fn new(opts: &DeviceOptions) -> Result<Arc<Gpu>> {
        let instance = instance(opts)?;
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let adapter = select_adapter(&instance, &adapters, opts)?;
        let info = adapter.get_info();
        let (mut caps, required) = Caps::of_adapter(&adapter, opts);
        // wgpu's defaults are lower than real adapters allow: ask for what the adapter has.
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("wgptq"),
            required_features: required,
            required_limits: limits.clone(),
            experimental_features: if caps.coop_matrix {
                // SAFETY: wgpu asks for this token before it exposes experimental features; the one used
                // (cooperative matrices) is confined to the prefill GEMM, which is checked against a CPU reference
                // on every adapter that has it (tests/kernels_gptq.rs) and can be switched off (`WGPTQ_COOP=0`).
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let mut opened = None;
        if caps.replay_unchecked {
            match super::replay::open_with_pipeline_robustness(&adapter, &desc) {
                Ok(d) => opened = Some(d),
                Err(e) => {
                    // The replay keeps the checks; nothing else depends on the extension.
                    tracing::warn!("{e}; the replayed pipelines keep robustBufferAccess's checks");
                    caps.replay_unchecked = false;
                }
            }
        }
        let (device, queue) = match opened {
            Some(d) => d,
            None => {
                pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::NoAdapter {
                    reason: format!("request_device on {}: {e}", info.name),
                })?
            }
        };
        tracing::info!(adapter = %info.name, backend = ?info.backend, driver = %info.driver_info, ?caps, "GPU selected");
        Ok(Arc::new(Gpu {
            adapter_info: info,
            device,
            queue,
            caps,
            submits: std::sync::Mutex::new(()),
        }))
    }

    /// Submits command buffers to the queue (under the submission lock, see [`Gpu`]).
    pub fn submit<I: IntoIterator<Item = wgpu::CommandBuffer>>(
        &self,
        buffers: I,
    ) -> wgpu::SubmissionIndex {
        let _held = self.submits.lock().unwrap_or_else(|e| e.into_inner());
        self.queue.submit(buffers)
    }

    /// Runs `f` holding the submission lock (for submissions wgpu does not make, see [`Gpu`]).
    pub fn with_submit_lock<T>(&self, f: impl FnOnce() -> T) -> T {
        let _held = self.submits.lock().unwrap_or_else(|e| e.into_inner());
        f()
    }

    /// A storage buffer initialised from `data` (COPY_SRC/DST too, for readback and updates).
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        self.check_binding(label, data.len() as u64)?;
        // Zero-length bindings are invalid; keep at least one word.
        let padded;
        let contents = if data.len() < 16 {
            padded = {
                let mut v = data.to_vec();
                v.resize(16, 0);
                v
            };
            &padded[..]
        } else {
            data
        };
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// An uninitialised (zeroed by wgpu) storage buffer of `size` bytes.
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.check_binding(label, size)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer initialised from `data`.
    pub fn uniform_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: data,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    fn check_binding(&self, what: &str, size: u64) -> Result<()> {
        if size > self.caps.max_binding_size {
            return Err(Error::DeviceLimit {
                what: format!("buffer `{what}`"),
                needed: size,
                limit: self.caps.max_binding_size,
            });
        }
        Ok(())
    }

    /// Copies `size` bytes of `buffer` from `offset` to the host (blocking).
    pub fn read(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.submit([enc.finish()]);
        self.map_and_read(&staging, size)
    }

    /// Maps an already-filled MAP_READ buffer and copies its first `size` bytes out.
    pub fn map_and_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        self.map_and_read_after(staging, size, None)
    }

    /// [`Self::map_and_read`] that waits only for submission `after` (the one that wrote `staging`), not for
    /// everything submitted since: pipelined decode keeps the next step running on the GPU meanwhile
    /// (waiting for the most recent submission had drained the pipeline every step; docs/PERF.md run 41).
    pub fn map_and_read_after(
        &self,
        staging: &wgpu::Buffer,
        size: u64,
        after: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>> {
        let slice = staging.slice(..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let wait = |submission_index| {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index,
                    timeout: None,
                })
                .map_err(|e| Error::Gpu {
                    op: "readback".into(),
                    reason: e.to_string(),
                })
        };
        wait(after)?;
        // If `after` was not the submission that last used `staging`, its mapping is still pending: wait for
        // everything rather than block on the channel forever.
        let mapped = match rx.try_recv() {
            Ok(r) => Ok(r),
            Err(_) => wait(None).and_then(|_| {
                rx.recv().map_err(|e| Error::Gpu {
                    op: "readback".into(),
                    reason: e.to_string(),
                })
            }),
        };
        mapped?.map_err(|e| Error::Gpu {
            op: "readback".into(),
            reason: e.to_string(),
        })?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu {
                op: "readback".into(),
                reason: e.to_string(),
            })?
            .to_vec();
        staging.unmap();
        Ok(data)
    }

    /// Runs `f` inside a validation error scope and turns a captured wgpu error into [`Error::Gpu`].
    pub fn scoped<T>(&self, op: &str, f: impl FnOnce() -> T) -> Result<T> {
        let guard = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        match pollster::block_on(guard.pop()) {
            Some(e) => Err(Error::Gpu {
                op: op.into(),
                reason: e.to_string(),
            }),
            None => Ok(out),
        }
    }
}
