//! Kernel micro-benchmarks at OpenChat-3.5 (Mistral-7B) decode shapes: the GPTQ GEMV (4- and 8-bit g128, and
//! 4-bit act-order) for the fused q|k|v, gate|up and down projections, decode attention over a 4096-token
//! cache, and RMSNorm of one 4096-vector; and the prefill GEMM for 512 tokens at the gate|up and down shapes,
//! on the matrix units where the adapter has them and on the portable f32 path (throughput in FLOP, reported as
//! elements/s). Timing is device-synchronised: `iters` dispatches are recorded in one
//! compute pass (as a decode step runs them), submitted, and waited for; only submit + wait is measured.
//! Throughput is each op's byte floor, so criterion's bytes/s is directly comparable with the streaming ceiling.
//!
//! On a CPU adapter (lavapipe) shapes are divided by 4 and the cache is 512 tokens so `cargo bench` stays
//! short; `WGPTQ_BENCH_FULL=1` forces full shapes. Without any adapter the benchmark prints a line and exits.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use half::f16;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use wgptq::gpu::kernels::{self, AttnShape};
use wgptq::gpu::linear::{self, GpuLinear, LinearMode, Prologue};
use wgptq::gpu::{DeviceOptions, Dispatch, Gpu, Pipelines, StepParams};
use wgptq::model::{CheckpointFormat, QuantConfig};
use wgptq::prep::{self, GptqTensors};

/// Dispatches per submit at most (keeps one command buffer reasonable).
const PER_SUBMIT: u64 = 512;

/// Records `iters` copies of the sequence `ds` in passes of [`PER_SUBMIT`] copies, timing only submit + wait.
fn time_dispatches(gpu: &Gpu, ds: &[Dispatch], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(PER_SUBMIT);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..n {
                for d in ds {
                    d.record(&mut pass).expect("kernel compiles");
                }
            }
        }
        let cmd = enc.finish();
        let t0 = Instant::now();
        gpu.submit([cmd]);
        if let Err(e) = gpu.device.poll(wgpu::PollType::wait_indefinitely()) {
            panic!("device lost while benchmarking {}: {e}", ds[0].label);
        }
        total += t0.elapsed();
        left -= n;
    }
    total
}

/// One benchmark of the dispatch sequence `ds` (one op, e.g. attention and its combine); its throughput is
/// the sum of the dispatches' byte floors.
fn bench_one(c: &mut Criterion, gpu: &Gpu, group: &str, name: &str, ds: &[Dispatch]) {
    let bytes = Throughput::Bytes(ds.iter().map(|d| d.bytes).sum());
    bench_with(c, gpu, group, name, ds, bytes);
}

fn bench_with(
    c: &mut Criterion,
    gpu: &Gpu,
    group: &str,
    name: &str,
    ds: &[Dispatch],
    throughput: Throughput,
) {
    let mut g = c.benchmark_group(group);
    g.throughput(throughput);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| time_dispatches(gpu, ds, iters))
    });
    g.finish();
}

fn step_buffer(gpu: &Gpu, pos0: u32) -> wgpu::Buffer {
    let s = StepParams {
        n_tokens: 1,
        pos0,
        logits_row: 0,
        _pad: 0,
    };
    gpu.uniform_init("step", bytemuck::bytes_of(&s))
}

fn random_f32(rng: &mut SmallRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A random GPTQ matrix [k → n], prepared and uploaded as the loader would.
fn gptq_matrix(
    gpu: &Gpu,
    rng: &mut SmallRng,
    k: usize,
    n: usize,
    bits: u32,
    act_order: bool,
) -> GpuLinear {
    let pf = 32 / bits as usize;
    let gs = 128;
    let groups = k.div_ceil(gs);
    let mut qweight = vec![0u32; k / pf * n];
    rng.fill_bytes(bytemuck::cast_slice_mut(&mut qweight));
    let zero = if bits == 4 { 0x7777_7777 } else { 0x7F7F_7F7F };
    let qzeros = vec![zero; groups * n / pf];
    let scale = 0.01 * 15.0 / ((1u32 << bits) - 1) as f32;
    let scales: Vec<f16> = (0..groups * n)
        .map(|_| f16::from_f32(scale * rng.random_range(0.5f32..1.5)))
        .collect();
    let g_idx: Option<Vec<i32>> = act_order.then(|| {
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(rng);
        let mut g = vec![0i32; k];
        for (pos, &row) in order.iter().enumerate() {
            g[row] = (pos / gs) as i32;
        }
        g
    });
    let quant = QuantConfig {
        bits,
        group_size: Some(gs),
        desc_act: act_order,
        sym: true,
        format: CheckpointFormat::V1,
    };
    let t = GptqTensors {
        qweight: &qweight,
        qzeros: &qzeros,
        scales: &scales,
        g_idx: g_idx.as_deref(),
        k,
        n,
    };
    let p = prep::prepare_gptq(&t, &quant);
    GpuLinear::Gptq(linear::upload_gptq(gpu, "bench", &p).expect("upload GPTQ matrix"))
}

fn bench_gemv(c: &mut Criterion, gpu: &Gpu, pipes: &Pipelines, div: usize) {
    let mut rng = SmallRng::seed_from_u64(1);
    let shapes = [
        ("qkv", 4096 / div, 6144 / div),
        ("gate_up", 4096 / div, 28672 / div),
        ("down", 14336 / div, 4096 / div),
    ];
    let step = step_buffer(gpu, 0);
    let dummy = gpu.storage("dummy", 16).expect("dummy buffer");
    for (bits, act_order, tag) in [
        (4, false, "4bit_g128"),
        (8, false, "8bit_g128"),
        (4, true, "4bit_g128_actorder"),
    ] {
        for (name, k, n) in shapes {
            let lin = gptq_matrix(gpu, &mut rng, k, n, bits, act_order);
            let x = gpu
                .storage_init("x", bytemuck::cast_slice(&random_f32(&mut rng, k)))
                .expect("x");
            // The device default shape (WGPTQ_GEMV=COLS4xKSPLIT overrides it) and split-K, as the planner picks.
            let mut mode = LinearMode::new(1, false, n as u32);
            if let GpuLinear::Gptq(g) = &lin {
                mode.splits = linear::gemv_splits(&gpu.caps, g.kp, g.n);
            }
            let y = gpu
                .storage("y", (mode.splits as usize * n * 4) as u64)
                .expect("y");
            let d =
                linear::linear_dispatches(pipes, &step, &lin, &x, &y, &dummy, mode, Prologue::None)
                    .expect("GEMV dispatch");
            let id = format!("{name}_{k}x{n}");
            bench_one(c, gpu, &format!("gptq_gemv_{tag}"), &id, &d);
        }
    }
}

/// The prefill GEMM for `tokens` tokens (4-bit g128 act-order, input already in the prepared order, as the
/// planner runs it): the matrix-unit kernel where the adapter has it, and the portable one.
fn bench_gemm(c: &mut Criterion, gpu: &Gpu, pipes: &Pipelines, div: usize, tokens: u32) {
    let mut rng = SmallRng::seed_from_u64(2);
    let step = gpu.uniform_init(
        "step",
        bytemuck::bytes_of(&StepParams {
            n_tokens: tokens,
            pos0: 0,
            logits_row: tokens - 1,
            _pad: 0,
        }),
    );
    let dummy = gpu.storage("dummy", 16).expect("dummy buffer");
    for (name, k, n) in [
        ("gate_up", 4096 / div, 28672 / div),
        ("down", 14336 / div, 4096 / div),
    ] {
        let lin = gptq_matrix(gpu, &mut rng, k, n, 4, true);
        let kp = match &lin {
            GpuLinear::Gptq(g) => g.kp,
            GpuLinear::F16(_) => k,
        };
        let x = gpu
            .storage_init(
                "x",
                bytemuck::cast_slice(&random_f32(&mut rng, tokens as usize * kp)),
            )
            .expect("x");
        let y = gpu
            .storage("y", (tokens as usize * n * 4) as u64)
            .expect("y");
        let units: &[bool] = if gpu.caps.coop_matrix {
            &[true, false]
        } else {
            &[false]
        };
        for &coop in units {
            let mut mode = LinearMode::new(tokens, true, n as u32);
            mode.pre_permuted = true;
            mode.coop = coop;
            let d =
                linear::linear_dispatches(pipes, &step, &lin, &x, &y, &dummy, mode, Prologue::None)
                    .expect("GEMM dispatch");
            let flops = 2 * tokens as u64 * k as u64 * n as u64;
            let group = if coop {
                "gptq_gemm_matrix_units"
            } else {
                "gptq_gemm_f32"
            };
            let id = format!("{name}_{tokens}x{k}x{n}");
            bench_with(c, gpu, group, &id, &d, Throughput::Elements(flops));
        }
    }
}

fn bench_attention(c: &mut Criterion, gpu: &Gpu, pipes: &Pipelines, ctx: usize) {
    let mut rng = SmallRng::seed_from_u64(2);
    let s = AttnShape {
        n_heads: 32,
        n_kv: 8,
        head_dim: 128,
        slots: ctx as u32,
        window: 4096,
    };
    let kv_elems = ctx * 8 * 128;
    let cache = |rng: &mut SmallRng| {
        let v: Vec<f16> = (0..kv_elems)
            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        gpu.storage_init("cache", bytemuck::cast_slice(&v))
            .expect("cache")
    };
    let (kc, vc) = (cache(&mut rng), cache(&mut rng));
    let q = gpu
        .storage_init("q", bytemuck::cast_slice(&random_f32(&mut rng, 32 * 128)))
        .expect("q");
    let out = gpu.storage("out", 32 * 128 * 4).expect("out");
    // Split over key ranges as the planner does (flash-decoding), with its partials buffer.
    let splits = kernels::attention_splits(s.slots);
    let partial = gpu
        .storage("attn_part", (32 * splits * (128 + 2) * 4) as u64)
        .expect("partials");
    // The step at position ctx - 1 attends to all ctx keys.
    let step = step_buffer(gpu, ctx as u32 - 1);
    let d = kernels::attention(pipes, &step, &q, &kc, &vc, &out, &partial, s, 1, splits)
        .expect("attention dispatch");
    let name = format!("ctx{ctx}_h32_kv8_d128_splits{splits}");
    bench_one(c, gpu, "attention_decode", &name, &d);
}

fn bench_rmsnorm(c: &mut Criterion, gpu: &Gpu, pipes: &Pipelines) {
    let mut rng = SmallRng::seed_from_u64(3);
    let n = 4096;
    let x = gpu
        .storage_init("x", bytemuck::cast_slice(&random_f32(&mut rng, n)))
        .expect("x");
    let w = gpu
        .storage_init("w", bytemuck::cast_slice(&random_f32(&mut rng, n)))
        .expect("w");
    let y = gpu.storage("y", (n * 4) as u64).expect("y");
    let step = step_buffer(gpu, 0);
    let d =
        kernels::rmsnorm(pipes, &step, &x, &w, &y, n as u32, 1e-5, 1).expect("rmsnorm dispatch");
    bench_one(c, gpu, "rmsnorm", "4096", &[d]);
}

fn main() {
    let opts = DeviceOptions {
        adapter: std::env::var("WGPTQ_ADAPTER").ok(),
        no_subgroups: std::env::var_os("WGPTQ_NO_SUBGROUPS").is_some(),
        ..Default::default()
    };
    let gpu = match Gpu::new(&opts) {
        Ok(g) => g,
        Err(e) => {
            println!("kernels benchmark skipped: {e}");
            return;
        }
    };
    let cpu = gpu.adapter_info.device_type == wgpu::DeviceType::Cpu;
    let full = !cpu || std::env::var_os("WGPTQ_BENCH_FULL").is_some();
    println!(
        "kernels benchmark on {} ({:?}, {}): {} shapes",
        gpu.adapter_info.name,
        gpu.adapter_info.device_type,
        gpu.adapter_info.backend,
        if full {
            "full OpenChat-3.5"
        } else {
            "1/4 (CPU adapter; WGPTQ_BENCH_FULL=1 for full)"
        }
    );
    let pipes = Pipelines::new(gpu.clone());
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(if full { 3 } else { 1 }))
        .configure_from_args();
    bench_gemv(&mut c, &gpu, &pipes, if full { 1 } else { 4 });
    bench_attention(&mut c, &gpu, &pipes, if full { 4096 } else { 512 });
    bench_rmsnorm(&mut c, &gpu, &pipes);
    bench_gemm(
        &mut c,
        &gpu,
        &pipes,
        if full { 1 } else { 4 },
        if full { 512 } else { 64 },
    );
    c.final_summary();
}
