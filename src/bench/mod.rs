//! The benchmark runner: loads a model the way users do (timing each phase), measures the adapter's streaming
//! bandwidth as the decode roofline, then prefill throughput per prompt length and decode speed per context
//! length, and optionally a per-op GPU profile of one decode step. Results are typed ([`BenchReport`]) so the CLI,
//! CI and scripts read the same numbers; [`BenchReport::table`] and [`BenchReport::to_json`] render them.
//!
//! Timing rules: wall clock for what a user waits for (a whole prefill; a decode run of `decode_tokens` greedy
//! steps, each ending with its token readback; as many sampled steps, each reading its logits back for the host
//! sampler), medians over `runs` after `warmup` runs; GPU timestamps only for the ceiling and the per-op profile,
//! where the host's share would distort the figure.

mod ceiling;
mod profile;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use ceiling::{CEILING_MAX_BYTES, CEILING_WARMUP};
pub use report::{
    AdapterReport, BenchReport, CeilingReport, DecodeResult, LoadReport, MemoryReport, ModelReport,
    OpProfile, OpRow, PrefillResult, QuantReport, SettingsReport,
};

use crate::error::{Error, Result};
use crate::gpu::linear::GpuLinear;
use crate::gpu::plan::{GpuWeights, Plan};
use crate::gpu::{DeviceOptions, Gpu};
use crate::model::{CheckpointFormat, ModelFiles};
use crate::sampling::{argmax, Sampler, SamplingParams};
use crate::session::{LoadOptions, Model, Session};
use profile::ProfileSetup;
use report::median;

/// The wgpu release this crate is built against (reported with every result).
pub const WGPU_VERSION: &str = "30.0.2";

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model_dir: PathBuf,
    /// Prompt lengths whose prefill is timed.
    pub prompt_lens: Vec<usize>,
    /// Cache lengths at which decode is timed.
    pub contexts: Vec<usize>,
    /// Greedy decode steps per timed run.
    pub decode_tokens: usize,
    /// Timed runs per measurement (the median is reported).
    pub runs: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// Per-op GPU profile of one decode step at each context (needs timestamp queries).
    pub profile: bool,
    /// Tokens per prefill step.
    pub prefill_chunk: usize,
    pub device: DeviceOptions,
    /// Seed of the random prompt token ids.
    pub seed: u64,
    /// Also time a grid-wide barrier among this many workgroups ([`ceiling::grid_barrier`]); they must all be
    /// resident on the adapter at once, or the measurement never ends.
    pub grid_barrier: Option<u32>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            model_dir: PathBuf::new(),
            prompt_lens: vec![512],
            contexts: vec![16, 4096],
            decode_tokens: 64,
            runs: 5,
            warmup: 1,
            profile: false,
            prefill_chunk: LoadOptions::default().prefill_chunk,
            device: DeviceOptions::default(),
            seed: 0,
            grid_barrier: None,
        }
    }
}

fn invalid(name: &str, value: impl ToString, reason: &str) -> Error {
    Error::InvalidArgument {
        name: name.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl BenchOptions {
    fn validate(&self) -> Result<()> {
        if self.runs == 0 {
            return Err(invalid("runs", 0, "at least one timed run is needed"));
        }
        if self.decode_tokens == 0 && !self.contexts.is_empty() {
            return Err(invalid(
                "decode_tokens",
                0,
                "at least one decode step per run is needed",
            ));
        }
        if self.prefill_chunk == 0 {
            return Err(invalid("prefill_chunk", 0, "must be at least 1"));
        }
        if let Some(n @ (0 | 65536..)) = self.grid_barrier {
            return Err(invalid(
                "grid_barrier",
                n,
                "1 to 65535 workgroups, all resident on the adapter at once",
            ));
        }
        if let Some(&bad) = self.prompt_lens.iter().find(|&&p| p == 0) {
            return Err(invalid(
                "prompt_lens",
                bad,
                "prompt lengths must be at least 1",
            ));
        }
        if let Some(&bad) = self.contexts.iter().find(|&&c| c == 0) {
            return Err(invalid(
                "contexts",
                bad,
                "contexts must be at least 1 (the prefill before decoding)",
            ));
        }
        Ok(())
    }

    /// Longest context a session must hold for these measurements.
    pub fn max_context(&self) -> usize {
        let p = self.prompt_lens.iter().copied().max().unwrap_or(1);
        let c = self
            .contexts
            .iter()
            .map(|c| c + self.decode_tokens)
            .max()
            .unwrap_or(1);
        p.max(c)
    }
}

/// Runs the benchmark described by `opts`.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    run_with_progress(opts, |_| {})
}

/// [`run`], telling `progress` what it is about to do (for long runs on big models).
pub fn run_with_progress(
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport> {
    opts.validate()?;
    let t_all = Instant::now();
    progress(&format!(
        "opening and validating {}",
        opts.model_dir.display()
    ));
    let t = Instant::now();
    let files = ModelFiles::open(&opts.model_dir)?;
    let open_s = t.elapsed().as_secs_f64();
    let cfg = files.config.clone();
    let need = opts.max_context();
    if need > cfg.max_position_embeddings {
        return Err(invalid(
            "contexts/prompt_lens",
            need,
            &format!(
                "the largest prompt, or the largest context plus the decode tokens, needs {need} positions; \
                 the model allows {}",
                cfg.max_position_embeddings
            ),
        ));
    }
    let model_report = model_report(&files);

    progress("creating the device");
    let t = Instant::now();
    let gpu = Gpu::new(&opts.device)?;
    let device_s = t.elapsed().as_secs_f64();

    progress("preparing and uploading the weights");
    let load = LoadOptions {
        device: opts.device.clone(),
        max_context: Some(need),
        prefill_chunk: opts.prefill_chunk,
    };
    let t = Instant::now();
    let model = Model::from_parts(gpu.clone(), files, None, &load)?;
    let upload_s = t.elapsed().as_secs_f64();

    progress("measuring the streaming-read ceiling");
    let ceiling = ceiling::measure(&gpu, &model.pipes, opts.runs.max(3))?;
    let dispatch_floor = ceiling::dispatch_floor(&gpu, &model.pipes, opts.runs.max(3))?;
    let grid_barrier = match opts.grid_barrier {
        Some(n) => {
            progress("measuring a grid-wide barrier");
            Some(ceiling::grid_barrier(
                &gpu,
                &model.pipes,
                n,
                opts.runs.max(3),
            )?)
        }
        None => None,
    };

    progress("building the session plan");
    let t = Instant::now();
    let mut session = model.session(false)?;
    let session_s = t.elapsed().as_secs_f64();
    let load_report = LoadReport {
        open_validate_s: open_s,
        device_init_s: device_s,
        prep_upload_s: upload_s,
        session_s,
        total_s: open_s + device_s + upload_s + session_s,
    };
    let weights_bytes = weights_bytes(&model.weights);
    let session_bytes = session_bytes(session.plan(), cfg.vocab_size);
    let memory = MemoryReport {
        weights_bytes,
        session_bytes,
        total_bytes: weights_bytes + session_bytes,
        method: "sum of buffer sizes allocated for the weights and one session (KV cache, activations, readback); \
                 parameter blocks and driver overhead not counted"
            .into(),
    };

    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let vocab = cfg.vocab_size as u32;
    let mut random_tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let total_runs = opts.warmup + opts.runs;

    let setup = ProfileSetup {
        window: cfg.sliding_window,
        ceiling_gbps: ceiling.gbps,
        steps: opts.runs,
    };
    let mut profile_note = None;
    if opts.profile && !gpu.caps.timestamps {
        profile_note = Some(
            "timestamps unavailable on this adapter (needs TIMESTAMP_QUERY and TIMESTAMP_QUERY_INSIDE_PASSES): \
             no per-op table"
                .to_string(),
        );
    }
    let profiled = opts.profile && gpu.caps.timestamps;
    let mut prefill = Vec::with_capacity(opts.prompt_lens.len());
    for &len in &opts.prompt_lens {
        progress(&format!("prefill of {len} tokens"));
        let prompt = random_tokens(len);
        let mut runs_ms = Vec::with_capacity(opts.runs);
        let mut finite = true;
        for run in 0..total_runs {
            session.reset();
            let t = Instant::now();
            let logits = session.prefill(&prompt)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if run >= opts.warmup {
                runs_ms.push(ms);
            }
            if run + 1 == total_runs {
                finite = logits.iter().all(|x| x.is_finite());
            }
        }
        let profile = if profiled {
            session.reset();
            noted(
                profile::profile_prefill(&session, &prompt, &setup),
                &mut profile_note,
            )
        } else {
            None
        };
        let ms = median(&runs_ms);
        prefill.push(PrefillResult {
            prompt_len: len,
            tok_s: if ms > 0.0 { len as f64 * 1e3 / ms } else { 0.0 },
            ms,
            runs_ms,
            logits_finite: finite,
            profile,
        });
    }

    let decode_bytes = model.weights.decode_bytes;
    let mut decode = Vec::with_capacity(opts.contexts.len());
    for &ctx in &opts.contexts {
        progress(&format!("decode at context {ctx}"));
        session.reset();
        let logits = session.prefill(&random_tokens(ctx))?;
        let first = argmax(&logits);
        let mut runs_ms = Vec::with_capacity(opts.runs);
        let mut encode_us = Vec::with_capacity(opts.runs);
        let mut sampled_ms = Vec::with_capacity(opts.runs);
        for run in 0..total_runs {
            let (ms, enc) = decode_run(&mut session, ctx, first, opts.decode_tokens)?;
            let sampled = sampled_run(&mut session, ctx, first, opts.decode_tokens, opts.seed)?;
            if run >= opts.warmup {
                runs_ms.push(ms);
                encode_us.push(enc);
                sampled_ms.push(sampled);
            }
        }
        let sampled = median(&sampled_ms);
        let profile = if profiled {
            session.rewind(ctx);
            noted(
                profile::profile_decode(&session, first, &setup),
                &mut profile_note,
            )
        } else {
            None
        };
        let ms = median(&runs_ms);
        let gbps = if ms > 0.0 {
            decode_bytes as f64 / (ms * 1e6)
        } else {
            0.0
        };
        decode.push(DecodeResult {
            context: ctx,
            tokens: opts.decode_tokens,
            tok_s: if ms > 0.0 { 1e3 / ms } else { 0.0 },
            ms_per_token: ms,
            achieved_gbps: gbps,
            pct_of_ceiling: if ceiling.gbps > 0.0 {
                100.0 * gbps / ceiling.gbps
            } else {
                0.0
            },
            cpu_encode_us_per_token: median(&encode_us),
            sampled_tok_s: if sampled > 0.0 { 1e3 / sampled } else { 0.0 },
            runs_ms_per_token: runs_ms,
            profile,
        });
    }
    tracing::info!(
        seconds = t_all.elapsed().as_secs_f64(),
        "benchmark finished"
    );

    let info = &gpu.adapter_info;
    Ok(BenchReport {
        wgpu_version: WGPU_VERSION.into(),
        adapter: AdapterReport {
            name: info.name.clone(),
            backend: info.backend.to_string(),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            device: info.device,
            subgroup_size: gpu.caps.subgroup_size,
            timestamps: gpu.caps.timestamps,
            matrix_units: gpu.caps.coop_matrix,
            float_atomics: gpu.caps.float_atomics,
            replay: gpu.caps.replay,
            max_binding_size: gpu.caps.max_binding_size,
        },
        model: model_report,
        settings: SettingsReport {
            prompt_lens: opts.prompt_lens.clone(),
            contexts: opts.contexts.clone(),
            decode_tokens: opts.decode_tokens,
            runs: opts.runs,
            warmup: opts.warmup,
            prefill_chunk: opts.prefill_chunk,
            max_context: need,
            seed: opts.seed,
        },
        load: load_report,
        memory,
        decode_bytes_per_token: decode_bytes,
        ceiling,
        dispatch_floor,
        grid_barrier,
        prefill,
        decode,
        profile_note,
    })
}

/// One timed decode run from context `ctx`: (wall ms per token, host encode µs per token).
fn decode_run(session: &mut Session, ctx: usize, first: u32, tokens: usize) -> Result<(f64, f64)> {
    session.rewind(ctx);
    let encode0 = session.total_encode_time();
    let t = Instant::now();
    // The generation path: pipelined greedy steps (the host records step n + 1 while step n runs).
    session.decode_greedy_stream(first, tokens, |_| Ok(true))?;
    let elapsed = t.elapsed();
    let encode = session.total_encode_time() - encode0;
    let n = tokens as f64;
    Ok((
        elapsed.as_secs_f64() * 1e3 / n,
        encode.as_secs_f64() * 1e6 / n,
    ))
}

/// One timed run of host-sampled decoding from context `ctx` (see [`DecodeResult::sampled_tok_s`]): wall ms per
/// token.
fn sampled_run(
    session: &mut Session,
    ctx: usize,
    first: u32,
    tokens: usize,
    seed: u64,
) -> Result<f64> {
    let mut sampler = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.9,
        repetition_penalty: 1.0,
        seed: Some(seed),
    })?;
    session.rewind(ctx);
    let t = Instant::now();
    let mut id = first;
    for _ in 0..tokens {
        let logits = session.decode(id)?;
        id = sampler.sample(&logits, &[]);
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / tokens.max(1) as f64)
}

fn model_report(files: &ModelFiles) -> ModelReport {
    let c = &files.config;
    ModelReport {
        dir: files.dir.display().to_string(),
        arch: format!("{:?}", c.arch),
        layers: c.num_layers,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        vocab: c.vocab_size,
        sliding_window: c.sliding_window,
        quant: files.quant.map(|q| QuantReport {
            bits: q.bits,
            group_size: q.group_size,
            act_order: q.desc_act,
            format: match q.format {
                CheckpointFormat::V1 => "gptq".into(),
                CheckpointFormat::V2 => "gptq_v2".into(),
            },
        }),
    }
}

fn linear_bytes(l: &GpuLinear) -> u64 {
    match l {
        GpuLinear::Gptq(g) => {
            g.qweight.size()
                + g.scales.size()
                + g.zeros.as_ref().map_or(0, |b| b.size())
                + g.perm.as_ref().map_or(0, |b| b.size())
        }
        GpuLinear::F16(f) => f.chunks.iter().map(|(b, _, _)| b.size()).sum(),
    }
}

/// Bytes of every weight buffer (the tied head shares the embedding's buffers and is not counted twice).
pub fn weights_bytes(w: &GpuWeights) -> u64 {
    let mut total: u64 = w.embed.iter().map(|(b, _, _)| b.size()).sum();
    for l in &w.layers {
        total +=
            l.input_norm.size() + l.post_norm.size() + linear_bytes(&l.o) + linear_bytes(&l.down);
        total += l
            .qkv
            .iter()
            .chain(&l.gate_up)
            .map(|(x, _)| linear_bytes(x))
            .sum::<u64>();
    }
    if !w.config.tie_word_embeddings {
        total += linear_bytes(&w.lm_head);
    }
    total + w.final_norm.size() + w.rope.size()
}

/// Bytes of a session's buffers: activations, KV cache, and its logits/token readback buffers.
pub fn session_bytes(plan: &Plan, vocab: usize) -> u64 {
    plan.bufs.kv_bytes() + plan.bufs.activation_bytes() + (vocab * 4 + 16) as u64
}

/// A per-op profile, or `None` with the reason kept for the report.
fn noted(r: Result<OpProfile>, note: &mut Option<String>) -> Option<OpProfile> {
    r.map_err(|e| *note = Some(format!("per-op profile failed: {e}")))
        .ok()
}
