//! The decode roofline: streaming-read bandwidth of the adapter, measured with the `stream` kernel over a buffer of
//! min(1 GiB, max binding) bytes after a sustained warm-up, for a few grid sizes, by pass timestamps where the
//! adapter has them (else wall clock around submit + wait).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{median, CeilingReport, DispatchFloorReport, GridBarrierReport};
use crate::error::{Error, Result};
use crate::gpu::kernels;
use crate::gpu::{Dispatch, Gpu, Pipelines, StepParams};

/// Largest buffer the bandwidth ceiling streams through.
pub const CEILING_MAX_BYTES: u64 = 1 << 30;
/// Streaming load run before the ceiling is measured, so clocks have ramped up.
pub const CEILING_WARMUP: Duration = Duration::from_millis(500);

/// Timestamp query set and buffers for one pass (begin, end).
struct PassTimer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
}

impl PassTimer {
    fn new(gpu: &Gpu) -> PassTimer {
        let d = &gpu.device;
        let buf = |label, usage| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        PassTimer {
            set: d.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("ceiling"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: buf(
                "ceiling resolve",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            staging: buf(
                "ceiling readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        }
    }
}

/// Runs `reps` copies of the dispatches `ds` in one pass and one submit: (wall seconds, GPU seconds).
fn time_pass(
    gpu: &Gpu,
    ds: &[&Dispatch],
    reps: u32,
    timer: Option<&PassTimer>,
) -> Result<(f64, Option<f64>)> {
    let cmd = gpu.scoped("ceiling", || -> Result<wgpu::CommandBuffer> {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("ceiling"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("ceiling"),
                timestamp_writes: timer.map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: &t.set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            for _ in 0..reps {
                for d in ds {
                    d.record(&mut pass)?;
                }
            }
        }
        if let Some(t) = timer {
            enc.resolve_query_set(&t.set, 0..2, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, &t.staging, 0, 16);
        }
        Ok(enc.finish())
    })??;
    let t0 = Instant::now();
    gpu.scoped("ceiling submit", || gpu.submit([cmd]))?;
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu {
            op: "ceiling".into(),
            reason: e.to_string(),
        })?;
    let wall = t0.elapsed().as_secs_f64();
    let gpu_s = match timer {
        Some(t) => {
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&gpu.map_and_read(&t.staging, 16)?);
            let period = gpu.queue.get_timestamp_period() as f64;
            match ticks.as_slice() {
                [a, b, ..] if b > a => Some((b - a) as f64 * period * 1e-9),
                _ => None,
            }
        }
        None => None,
    };
    Ok((wall, gpu_s))
}

/// Streaming-read bandwidth over a buffer of min(1 GiB, max binding) bytes: the `stream` kernel read `reps`
/// times per submit (enough for ≈ 20 ms, so submit overhead is small), median of `runs` submits, for several
/// grid sizes (loads in flight per thread differ by adapter); the best grid is the ceiling.
pub(crate) fn measure(gpu: &Arc<Gpu>, pipes: &Pipelines, runs: usize) -> Result<CeilingReport> {
    let size = CEILING_MAX_BYTES
        .min(gpu.caps.max_binding_size)
        .min(gpu.caps.max_buffer_size)
        / 256
        * 256;
    let n_vec4 = size / 16;
    let src = gpu.storage("bench.stream.src", size)?;
    // Non-zero contents, so no driver or memory compression can shortcut the reads.
    let piece: Vec<u32> = (0..(16u64 << 20).min(size / 4) as u32)
        .map(|i| i.wrapping_mul(0x9E37_79B1) | 1)
        .collect();
    let piece: &[u8] = bytemuck::cast_slice(&piece);
    let mut off = 0u64;
    while off < size {
        let len = (piece.len() as u64).min(size - off) as usize;
        gpu.queue.write_buffer(&src, off, &piece[..len]);
        off += len as u64;
    }
    // Threads of each grid tried; each writes one word, at most 1/16 of the bytes read.
    let mut grids: Vec<u64> = [4u64, 16, 64, 256]
        .iter()
        .map(|d| (n_vec4 / d).max(256).next_multiple_of(256))
        .collect();
    grids.dedup();
    let dst = gpu.storage("bench.stream.dst", grids[0] * 4)?;
    let step = gpu.uniform_init("bench.step", &[0u8; 16]);
    let timer = gpu.caps.timestamps.then(|| PassTimer::new(gpu));
    // Sustained load first: GPUs raise memory and core clocks only after some time under load (an H100 read
    // 1.6 TB/s instead of 3.1 without this).
    let d = kernels::stream(
        pipes,
        &step,
        &src,
        &dst,
        n_vec4 as u32,
        grids[grids.len() / 2] as u32,
    )?;
    let t0 = Instant::now();
    while t0.elapsed() < CEILING_WARMUP {
        time_pass(gpu, &[&d], 4, None)?;
    }
    let mut best: Option<(f64, u64, u32, f64, Option<f64>)> = None;
    let mut sweep = Vec::with_capacity(grids.len());
    for threads in grids {
        let d = kernels::stream(pipes, &step, &src, &dst, n_vec4 as u32, threads as u32)?;
        time_pass(gpu, &[&d], 1, None)?; // warm-up: pipeline, clocks
        let (t1, _) = time_pass(gpu, &[&d], 1, None)?;
        let reps = ((0.02 / t1.max(1e-6)).ceil() as u32).clamp(1, 64);
        let mut wall = Vec::with_capacity(runs);
        let mut ts = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (w, g) = time_pass(gpu, &[&d], reps, timer.as_ref())?;
            let bytes = size as f64 * reps as f64;
            wall.push(bytes / w / 1e9);
            if let Some(g) = g {
                ts.push(bytes / g / 1e9);
            }
        }
        let wall_gbps = median(&wall);
        let ts_gbps = (!ts.is_empty()).then(|| median(&ts));
        let gbps = ts_gbps.unwrap_or(wall_gbps);
        sweep.push((threads, gbps));
        if best.is_none_or(|b| gbps > b.0) {
            best = Some((gbps, threads, reps, wall_gbps, ts_gbps));
        }
    }
    let (gbps, threads, reps, wall_gbps, timestamp_gbps) = best.ok_or_else(|| Error::Gpu {
        op: "ceiling".into(),
        reason: "no grid measured".into(),
    })?;
    Ok(CeilingReport {
        buffer_bytes: size,
        threads,
        reads_per_submit: reps,
        runs,
        wall_gbps,
        timestamp_gbps,
        gbps,
        source: if timestamp_gbps.is_some() {
            "pass timestamps"
        } else {
            "wall clock"
        }
        .into(),
        sweep,
    })
}

/// Dispatches per pass in [`dispatch_floor`].
pub const FLOOR_DISPATCHES: u32 = 256;

/// The fixed cost of one dispatch inside a pass (barrier, launch, drain), which every op of a step pays: chains of
/// [`FLOOR_DISPATCHES`] small `reduce_add` dispatches (16 workgroups adding one 4096-float slab, the residual op
/// of decode) in one pass, median of `runs` submits, GPU time per dispatch in µs. Three chains: one bind group
/// repeated (each dispatch depends on the last), two bind groups on different buffers alternating, and
/// `reduce_add` alternating with a one-workgroup `stream` (a pipeline switch every dispatch).
pub(crate) fn dispatch_floor(
    gpu: &Arc<Gpu>,
    pipes: &Pipelines,
    runs: usize,
) -> Result<DispatchFloorReport> {
    let n = 4096u32;
    let part = gpu.storage("bench.floor.part", n as u64 * 4)?;
    let xa = gpu.storage("bench.floor.xa", n as u64 * 4)?;
    let xb = gpu.storage("bench.floor.xb", n as u64 * 4)?;
    let ss = gpu.storage("bench.floor.ss", kernels::ss_blocks(n) as u64 * 4)?;
    let dst = gpu.storage("bench.floor.dst", 256 * 4)?;
    let step = gpu.uniform_init(
        "bench.floor.step",
        bytemuck::bytes_of(&StepParams {
            n_tokens: 1,
            ..Default::default()
        }),
    );
    let a = kernels::reduce_add(pipes, &step, &part, &xa, &ss, n, 1, 1)?;
    let b = kernels::reduce_add(pipes, &step, &part, &xb, &ss, n, 1, 1)?;
    let s = kernels::stream(pipes, &step, &part, &dst, n / 4, 256)?;
    let timer = gpu.caps.timestamps.then(|| PassTimer::new(gpu));
    let chain = |ds: &[&Dispatch]| -> Result<f64> {
        let reps = FLOOR_DISPATCHES / ds.len() as u32;
        time_pass(gpu, ds, reps, None)?; // warm-up
        let mut us = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (wall, ts) = time_pass(gpu, ds, reps, timer.as_ref())?;
            us.push(ts.unwrap_or(wall) * 1e6 / (reps as usize * ds.len()) as f64);
        }
        Ok(median(&us))
    };
    Ok(DispatchFloorReport {
        dispatches: FLOOR_DISPATCHES,
        same_us: chain(&[&a])?,
        alternating_us: chain(&[&a, &b])?,
        switching_us: chain(&[&a, &s])?,
        source: if timer.is_some() {
            "pass timestamps"
        } else {
            "wall clock"
        }
        .into(),
    })
}

/// Grid-wide barriers per dispatch in [`grid_barrier`].
pub const GRID_BARRIERS: u32 = 1000;

/// What a grid-wide barrier costs among `workgroups` co-resident workgroups (one storage counter, spin-waits):
/// two dispatches of [`GRID_BARRIERS`] barriers each, median of `runs` submits, GPU time per barrier in µs (the
/// two dispatch boundaries are 0.2% of it). Asked for only (`bench --grid-barrier`): a grid larger than the
/// adapter holds at once never finishes.
pub(crate) fn grid_barrier(
    gpu: &Arc<Gpu>,
    pipes: &Pipelines,
    workgroups: u32,
    runs: usize,
) -> Result<GridBarrierReport> {
    let bar = gpu.storage("bench.grid_barrier", 16)?;
    let step = gpu.uniform_init("bench.grid_barrier.step", &[0u8; 16]);
    let d = kernels::grid_barrier(pipes, &step, &bar, workgroups, GRID_BARRIERS)?;
    let timer = gpu.caps.timestamps.then(|| PassTimer::new(gpu));
    time_pass(gpu, &[&d], 2, None)?; // warm-up
    let mut us = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (wall, ts) = time_pass(gpu, &[&d], 2, timer.as_ref())?;
        us.push(ts.unwrap_or(wall) * 1e6 / (2 * GRID_BARRIERS) as f64);
    }
    Ok(GridBarrierReport {
        workgroups,
        threads_per_workgroup: kernels::GRID_BARRIER_WG,
        barriers: 2 * GRID_BARRIERS,
        per_barrier_us: median(&us),
        source: if timer.is_some() {
            "pass timestamps"
        } else {
            "wall clock"
        }
        .into(),
    })
}
